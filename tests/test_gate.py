"""The promotion gate as pure functions: floor, margin, McNemar's paired test on
constructed predictions, and the real-world set."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from mnist_mlops.core.config import RegisterParams
from mnist_mlops.registry.gate import Candidate, Decision, Evidence, Paired, decide, mcnemar

GATE = RegisterParams(margin=0.001, floor=0.9, alpha=0.05, realworld_margin=0.01)


def cand(version: str, acc: float) -> Candidate:
    return Candidate(version, f"m{version}", acc)


def correctness(n: int, both: int, only_new: int, only_old: int) -> tuple[np.ndarray, ...]:
    """Per-image correctness of a challenger and a champion on n images."""
    new, old = np.zeros(n, bool), np.zeros(n, bool)
    new[:both] = old[:both] = True
    new[both:both + only_new] = True
    old[both + only_new:both + only_new + only_old] = True
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    return new[order], old[order]


@pytest.mark.parametrize(("new", "champ", "promote", "needle"), [
    (0.95, None, True, "no champion yet"),
    (0.85, None, False, "below the floor 0.9000"),
    (0.9805, 0.98, False, "does not beat champion v1 (0.9800) by the margin 0.0010"),
    (0.9810, 0.98, True, "beats champion v1"),
    (0.99, 0.995, False, "does not beat"),
])
def test_floor_and_margin(new: float, champ: float | None, promote: bool, needle: str) -> None:
    d = decide(cand("2", new), cand("1", champ) if champ is not None else None, GATE)
    assert d.promote is promote and needle in d.reason


def test_the_champion_is_never_promoted_over_itself() -> None:
    d = decide(cand("3", 0.99), cand("3", 0.99), RegisterParams(margin=0.0, floor=0.0))
    assert not d.promote and "already the champion" in d.reason


def test_mcnemar_counts_discordant_images_and_is_exact() -> None:
    new, old = correctness(10_000, 9_900, 30, 10)
    p = mcnemar(new, old)
    assert (p.better, p.worse) == (30, 10)
    assert p.p_value == pytest.approx(sum(comb(40, k) for k in range(30, 41)) / 2 ** 40)
    assert p.p_value == pytest.approx(0.0011, abs=1e-4)   # binomial tail, by hand
    assert mcnemar(old, new).p_value > 0.99                  # the other way round: no
    assert mcnemar(new, new) == Paired(0, 0, 1.0)            # identical answers: no evidence


def test_a_significant_improvement_is_promoted() -> None:
    new, old = correctness(10_000, 9_900, 30, 10)            # +20 digits, p = 0.001
    d = decide(cand("2", 0.9930), cand("1", 0.9910), GATE,
               Evidence(mcnemar(new, old), 0.95, 0.95))
    assert d.promote and "significant" in d.reason and "p = 0.0011" in d.reason
    assert d.record()["paired_test"] == {"better": 30, "worse": 10,
                                         "p_value": pytest.approx(0.0011, abs=1e-4)}


def test_an_improvement_within_noise_is_refused() -> None:
    # +12 digits clears the margin (0.0012 > 0.001) but 42 vs 30 discordant is a coin toss
    new, old = correctness(10_000, 9_878, 42, 30)
    d = decide(cand("2", 0.9920), cand("1", 0.9908), GATE, Evidence(mcnemar(new, old)))
    assert not d.promote
    assert "not a significant improvement" in d.reason and "42 test digits" in d.reason
    assert d.record()["paired_test"]["p_value"] > GATE.alpha


def test_a_worse_challenger_never_reaches_the_paired_test() -> None:
    new, old = correctness(10_000, 9_800, 10, 50)
    d = decide(cand("2", 0.9810), cand("1", 0.9850), GATE, Evidence(mcnemar(new, old)))
    assert not d.promote and "does not beat" in d.reason


def test_worse_on_the_real_world_set_is_refused() -> None:
    new, old = correctness(10_000, 9_900, 30, 10)
    d = decide(cand("2", 0.9930), cand("1", 0.9910), GATE,
               Evidence(mcnemar(new, old), challenger_realworld=0.90,
                        champion_realworld=0.93))
    assert not d.promote and "real-world accuracy 0.9000 is worse" in d.reason
    ok = decide(cand("2", 0.9930), cand("1", 0.9910), GATE,
                Evidence(mcnemar(new, old), challenger_realworld=0.925,
                         champion_realworld=0.93))
    assert ok.promote and "real-world accuracy 0.9250 vs 0.9300" in ok.reason


def test_worse_on_one_kind_of_picture_is_refused_though_the_average_is_fine() -> None:
    """A challenger better on most kinds but 0.02 worse on drawings: the average (0.9217
    vs 0.9150) passes, the drawings do not, and the reason names them and both figures."""
    new, old = correctness(10_000, 9_900, 30, 10)
    champion = {"photo": 0.92, "scan": 0.85, "drawn": 0.975}
    challenger = {"photo": 0.95, "scan": 0.86, "drawn": 0.955}

    def judged(by_kind: dict[str, float]) -> Decision:
        return decide(cand("2", 0.9930), cand("1", 0.9910), GATE, Evidence(
            mcnemar(new, old), challenger_realworld=sum(by_kind.values()) / 3,
            champion_realworld=sum(champion.values()) / 3, challenger_by_kind=by_kind,
            champion_by_kind=champion))

    d = judged(challenger)
    assert not d.promote
    assert d.reason == ("real-world accuracy on drawn pictures 0.9550 is worse than the "
                        "champion's 0.9750 by more than 0.0100")
    rec = d.record()
    assert rec["realworld_accuracy"]["challenger"] > rec["realworld_accuracy"]["champion"]
    assert rec["realworld_accuracy_by_kind"]["drawn"] == {"challenger": 0.955,
                                                          "champion": 0.975}
    ok = judged({**challenger, "drawn": 0.966})               # within the margin: promoted
    assert ok.promote and "no kind of picture significantly worse by more than 0.0100 " \
        "(3 compared)" in ok.reason
    assert json.loads(json.dumps(ok.record())) == ok.record()        # the record is JSON


def test_a_kind_refuses_only_where_the_challenger_is_significantly_worse() -> None:
    """200 drawings: 0.02 worse is 4 pictures, which two equally good models differ by now
    and then; it refuses where the paired test on the drawings says the champion is really
    better there (alpha split over the kinds compared), and passes as noise where not."""
    new, old = correctness(10_000, 9_900, 30, 10)
    champion = {"photo": 0.92, "scan": 0.85, "drawn": 0.975}
    challenger = {"photo": 0.95, "scan": 0.86, "drawn": 0.955}

    def judged(drawn_new: np.ndarray, drawn_old: np.ndarray) -> Decision:
        p = mcnemar(drawn_old, drawn_new).p_value         # the champion better on drawings
        return decide(cand("2", 0.9930), cand("1", 0.9910), GATE, Evidence(
            mcnemar(new, old), 0.92, 0.915, challenger_by_kind=challenger,
            champion_by_kind=champion, kind_worse_p={"photo": 1.0, "scan": 1.0, "drawn": p}))

    # the champion alone right on 4 drawings, the challenger alone on none: p = 1/16
    noisy = judged(*correctness(200, 191, 0, 4))
    assert noisy.promote and "within noise: drawn 0.9550 vs 0.9750 (p = 0.0625)" in \
        noisy.reason
    # ... on 12 drawings where the challenger alone gets 8: p = 0.25
    assert judged(*correctness(200, 183, 8, 12)).promote
    # ... on 10, the challenger alone on none: p = 1/1024, below 0.05 / 3
    real = judged(*correctness(200, 190, 0, 10))
    assert not real.promote and real.reason.startswith(
        "real-world accuracy on drawn pictures 0.9550 is worse than the champion's 0.9750")
    assert "McNemar p = 0.000977 < 0.0167" in real.reason


def test_kinds_only_one_version_was_scored_on_are_not_compared() -> None:
    """Per-kind figures are compared where both versions have them; a decision without
    them records an empty table, as records from before kinds had none."""
    new, old = correctness(10_000, 9_900, 30, 10)
    d = decide(cand("2", 0.9930), cand("1", 0.9910), GATE, Evidence(
        mcnemar(new, old), 0.95, 0.95, challenger_by_kind={"user": 0.5, "photo": 0.95},
        champion_by_kind={"photo": 0.95}))
    assert d.promote and "(1 compared)" in d.reason
    assert d.record()["realworld_accuracy_by_kind"] == {
        "photo": {"challenger": 0.95, "champion": 0.95}}
    assert Decision(True, "x").record()["realworld_accuracy_by_kind"] == {}


def test_without_a_local_test_set_the_gate_says_what_it_skipped() -> None:
    d = decide(cand("2", 0.9930), cand("1", 0.9910), GATE, Evidence(missing="no data"))
    assert d.promote and "paired test not run: no data" in d.reason


def test_a_version_without_a_recorded_accuracy_is_never_promoted() -> None:
    nan = float("nan")
    assert not decide(cand("2", nan), None, GATE).promote
    d = decide(cand("2", 0.995), cand("1", nan), GATE, Evidence(missing="no data"))
    assert not d.promote and "does not beat" in d.reason
