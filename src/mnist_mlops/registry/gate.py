"""The promotion gate: is the challenger really better than the champion?

Test accuracies differ by a few digits between runs of the same recipe (CV std 0.001-0.002,
10-20 of 10,000 test images), so beating the champion by `register.margin` proves little.
The gate pairs both models on the same test images and asks McNemar's exact question: of
the images exactly one of them gets right, does the challenger win significantly more
often than a coin would (one-sided, level `register.alpha`)? It also scores both on the
real-world set (realworld.py), over all pictures and kind by kind, and refuses a challenger
worse than the champion by more than `register.realworld_margin` on the whole set or on any
one kind (a regression on one kind hides in the average). Pure functions here; register.py
and `promote` gather the predictions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import comb
from typing import Any

import numpy as np

from mnist_mlops.core.config import RegisterParams


@dataclass(frozen=True)
class Candidate:
    version: str
    model: str
    test_accuracy: float
    cv_accuracy: float = float("nan")   # how the challenger is chosen among new versions


@dataclass(frozen=True)
class Paired:
    """Challenger vs champion on the same images: the discordant counts and the p-value."""

    better: int            # the challenger right, the champion wrong
    worse: int             # the champion right, the challenger wrong
    p_value: float         # one-sided exact McNemar: P(>= better wins of better + worse | 1/2)

    def text(self) -> str:
        return (f"{self.better} test digits only the challenger gets right, {self.worse} only "
                f"the champion; McNemar p = {self.p_value:.3g}")


@dataclass(frozen=True)
class Evidence:
    """What the gate knows beyond the recorded test accuracies (None where not measured)."""

    paired: Paired | None = None
    challenger_realworld: float | None = None
    champion_realworld: float | None = None
    missing: str | None = None     # why there is no paired evidence, if there is none
    challenger_by_kind: dict[str, float] | None = None   # real-world accuracy per kind
    champion_by_kind: dict[str, float] | None = None
    # per kind: the one-sided McNemar p-value that the challenger is worse on that kind's
    # pictures (None where only the accuracies are known)
    kind_worse_p: dict[str, float] | None = None

    def kinds(self) -> dict[str, tuple[float, float]]:
        """kind -> (challenger's, champion's) real-world accuracy, where both have it."""
        new, old = self.challenger_by_kind or {}, self.champion_by_kind or {}
        return {k: (new[k], old[k]) for k in new if k in old}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    evidence: Evidence = Evidence()

    def record(self) -> dict[str, Any]:
        """The decision as JSON for reports/registry.json and version tags."""
        ev = self.evidence
        return {"promoted": self.promote, "reason": self.reason,
                "paired_test": asdict(ev.paired) if ev.paired else None,
                "realworld_accuracy": {"challenger": ev.challenger_realworld,
                                       "champion": ev.champion_realworld},
                "realworld_accuracy_by_kind": {k: {"challenger": new, "champion": old}
                                               for k, (new, old) in ev.kinds().items()},
                **({"evidence_missing": ev.missing} if ev.missing else {})}


def mcnemar(challenger_right: np.ndarray, champion_right: np.ndarray) -> Paired:
    """McNemar's exact test, one-sided for an improvement, on per-image correctness."""
    a, b = np.asarray(challenger_right, bool), np.asarray(champion_right, bool)
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    n = better + worse
    tail = sum(comb(n, k) for k in range(better, n + 1))   # exact, in integers
    return Paired(better, worse, float(Fraction(tail, 2 ** n)) if n else 1.0)


def decide(challenger: Candidate, champion: Candidate | None, gate: RegisterParams,
           evidence: Evidence | None = None) -> Decision:
    """Floor, then margin, then significance, then the real world; the first failure says
    why. Without paired evidence (no local test set) only floor and margin apply."""
    ev = evidence or Evidence()
    acc = challenger.test_accuracy
    if not math.isfinite(acc):
        return Decision(False, f"v{challenger.version} has no recorded test accuracy", ev)
    if acc < gate.floor:
        return Decision(False, f"test accuracy {acc:.4f} is below the floor {gate.floor:.4f}",
                        ev)
    if champion is None:
        return Decision(True, f"no champion yet; test accuracy {acc:.4f} clears the floor", ev)
    if champion.version == challenger.version:
        return Decision(False, f"v{challenger.version} is already the champion", ev)
    versus = f"champion v{champion.version} ({champion.test_accuracy:.4f})"
    needed = champion.test_accuracy + gate.margin
    if not acc >= needed:         # also refuses against a champion with no recorded accuracy
        return Decision(False, f"test accuracy {acc:.4f} does not beat {versus} by the margin "
                               f"{gate.margin:.4f} (needs {needed:.4f})", ev)
    reasons = [f"test accuracy {acc:.4f} beats {versus} by at least {gate.margin:.4f}"]
    if ev.paired is not None:
        if ev.paired.p_value >= gate.alpha:
            return Decision(False, f"test accuracy {acc:.4f} vs {versus} is not a significant "
                                   f"improvement: {ev.paired.text()} >= alpha {gate.alpha}", ev)
        reasons.append(f"significant: {ev.paired.text()} < alpha {gate.alpha}")
    elif ev.missing:
        reasons.append(f"paired test not run: {ev.missing}")
    refused, said = real_world(ev, gate)
    if refused:
        return Decision(False, refused, ev)
    return Decision(True, "; ".join(reasons + said), ev)


def real_world(ev: Evidence, gate: RegisterParams) -> tuple[str | None, list[str]]:
    """The real-world check over all pictures, then kind by kind: (why it refuses, or None;
    what it says otherwise). Says nothing where neither was measured.

    A kind holds a few hundred pictures (your own: perhaps a handful), so two equally good
    models differ on it by more than the margin now and then: a kind refuses only where the
    challenger is also significantly worse there (McNemar, one-sided, at `alpha` split over
    the kinds compared), where that was measured."""
    margin = gate.realworld_margin
    rw_new, rw_old = ev.challenger_realworld, ev.champion_realworld
    if rw_new is not None and rw_old is not None and rw_new < rw_old - margin:
        return (f"real-world accuracy {rw_new:.4f} is worse than the champion's {rw_old:.4f} "
                f"by more than {margin:.4f}"), []
    kinds, worse_p = ev.kinds(), ev.kind_worse_p or {}
    level = gate.alpha / max(len(kinds), 1)
    noise = []
    for kind, (new, old) in kinds.items():
        if new >= old - margin:
            continue
        p = worse_p.get(kind)
        if p is not None and p >= level:
            noise.append(f"{kind} {new:.4f} vs {old:.4f} (p = {p:.3g})")
            continue
        why = f" (McNemar p = {p:.3g} < {level:.3g})" if p is not None else ""
        return (f"real-world accuracy on {kind} pictures {new:.4f} is worse than the "
                f"champion's {old:.4f} by more than {margin:.4f}{why}"), []
    said = [f"real-world accuracy {rw_new:.4f} vs {rw_old:.4f}"] if rw_new is not None \
        and rw_old is not None else []
    if kinds:
        said.append(f"no kind of picture significantly worse by more than {margin:.4f} "
                    f"({len(kinds)} compared" + (f"; within noise: {', '.join(noise)}"
                                                 if noise else "") + ")")
    return None, said
