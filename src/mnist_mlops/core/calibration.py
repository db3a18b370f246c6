"""How far to trust an answer: temperature scaling, its calibration error, the "unsure" line.

A network trained with cross-entropy is over-confident: on pictures that hold no digit at
all it still answers with a probability near 1. The train stage fits one temperature to the
model's out-of-fold predictions (each fold model on the fold it never saw), which makes its
probabilities honest on average, and chooses the probability below which an answer is
"unsure" from the same predictions: the highest line that gives up at most `give_up` of the
right answers. Both travel inside the model file (the .h5's attributes, the ONNX file's
metadata), so every way of loading a model answers the same. Pure NumPy and SciPy here;
SciPy's optimiser and h5py are imported where they are used, off `predict`'s cold start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

KEY = "mnist_mlops.calibration"    # the .h5 attribute and the ONNX metadata key
BINS = 15                          # equal-width confidence bins of the calibration error
EPS = 1e-12


@dataclass(frozen=True)
class Calibration:
    """Divide the model's log-probabilities by `temperature`; an answer whose calibrated
    probability is below `unsure_below` is unsure."""

    temperature: float
    unsure_below: float

    def apply(self, proba: np.ndarray) -> np.ndarray:
        return scale(proba, self.temperature)

    def unsure(self, calibrated: np.ndarray) -> np.ndarray:
        """Per answer: is its (calibrated) top probability below the line?"""
        return np.asarray(calibrated).max(axis=-1) < self.unsure_below

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibration:
        """Read back what `to_json` wrote; ValueError for anything else."""
        try:
            data = json.loads(text)
            cal = cls(float(data["temperature"]), float(data["unsure_below"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a calibration record ({exc})") from None
        if not (cal.temperature > 0 and 0 <= cal.unsure_below <= 1):
            raise ValueError(f"not a calibration record ({text!r})")
        return cal


def scale(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log(proba) / temperature: the same ranking, sharper below 1, softer above."""
    z = np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], EPS, 1.0)).mean())


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature (0.05-20) that minimises the negative log-likelihood of `y`."""
    from scipy.optimize import minimize_scalar  # 0.3 s: only the train stage fits one

    res = minimize_scalar(lambda log_t: nll(scale(proba, float(np.exp(log_t))), y),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = BINS
                ) -> list[dict[str, float]]:
    """Per non-empty confidence bin: its range, mean confidence, accuracy and count."""
    conf, right = proba.max(axis=1), proba.argmax(axis=1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins,
             "confidence": float(conf[which == b].mean()),
             "accuracy": float(right[which == b].mean()), "count": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Mean |accuracy - confidence| over the bins, weighted by how many answers each holds."""
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(proba, y, bins)) / max(len(y), 1))


def unsure_line(calibrated: np.ndarray, y: np.ndarray, give_up: float) -> float:
    """The highest line that marks at most `give_up` of the right answers unsure."""
    conf, right = calibrated.max(axis=1), calibrated.argmax(axis=1) == y
    if not right.any() or give_up <= 0:
        return 0.0
    ordered = np.sort(conf[right])
    allowed = int(np.floor(give_up * len(ordered)))   # right answers that may fall below
    return float(ordered[allowed]) if allowed < len(ordered) else 1.0


def calibrate(proba: np.ndarray, y: np.ndarray, give_up: float
              ) -> tuple[Calibration, dict[str, Any]]:
    """The calibration fitted on held-out predictions, and what it does to them: the
    calibration error before and after, and the share of right answers the unsure line
    gives up and of wrong ones it catches."""
    t = fit_temperature(proba, y)
    after = scale(proba, t)
    cal = Calibration(t, unsure_line(after, y, give_up))
    return cal, {**effect(cal, proba, y), "temperature": t, "unsure_below": cal.unsure_below}


def effect(cal: Calibration, proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """On predictions `proba` of images labelled `y`: the calibration error before and
    after, how many answers are unsure, and which."""
    after = cal.apply(proba)
    unsure, right = cal.unsure(after), after.argmax(axis=1) == y
    return {"ece_before": expected_calibration_error(proba, y),
            "ece_after": expected_calibration_error(after, y),
            "nll_before": nll(proba, y), "nll_after": nll(after, y),
            "unsure_rate": float(unsure.mean()) if len(y) else 0.0,
            "unsure_right_given_up": float(unsure[right].mean()) if right.any() else 0.0,
            "unsure_wrong_caught": float(unsure[~right].mean()) if (~right).any() else 0.0}


def effect_text(found: dict[str, float]) -> str:
    """`effect`'s figures as one line of a stage's log (train: the folds; evaluate: the test
    digits)."""
    return (f"calibration error {found['ece_before']:.4f} -> {found['ece_after']:.4f}; "
            f"{100 * found['unsure_rate']:.1f}% of the answers unsure "
            f"({100 * found['unsure_right_given_up']:.1f}% of the right ones, "
            f"{100 * found['unsure_wrong_caught']:.1f}% of the wrong ones)")


def write_h5(path: Any, cal: Calibration) -> None:
    """Store `cal` as an attribute of a saved Keras .h5 (Keras ignores attributes it does
    not know, so the file loads as before)."""
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs[KEY] = cal.to_json()


def read_h5(path: Any) -> Calibration | None:
    """The calibration a .h5 carries; None for a model saved without one (trained before
    calibration existed, or not by the train stage)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get(KEY)
    except OSError:
        return None
    return None if text is None else Calibration.from_json(text)
