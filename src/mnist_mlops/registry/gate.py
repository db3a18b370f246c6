"""The promotion gate: is the challenger really better than the champion?

Test accuracies differ by a few digits between runs of the same recipe (CV std 0.001-0.002,
10-20 of 10,000 test images), so beating the champion by `register.margin` proves little.
The gate pairs both models on the same test images and asks McNemar's exact question: of
the images exactly one of them gets right, does the challenger win significantly more
often than a coin would (one-sided, level `register.alpha`)? It also scores both on the
real-world set (realworld.py) and refuses a challenger worse there by more than
`register.realworld_margin`. Pure functions here; register.py and `promote` gather the
predictions.
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
    rw_new, rw_old = ev.challenger_realworld, ev.champion_realworld
    if rw_new is not None and rw_old is not None:
        if rw_new < rw_old - gate.realworld_margin:
            return Decision(False, f"real-world accuracy {rw_new:.4f} is worse than the "
                                   f"champion's {rw_old:.4f} by more than "
                                   f"{gate.realworld_margin:.4f}", ev)
        reasons.append(f"real-world accuracy {rw_new:.4f} vs {rw_old:.4f}")
    return Decision(True, "; ".join(reasons), ev)
