"""core/calibration.py: temperature scaling, the calibration error, the unsure line."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mnist_mlops.core import calibration
from mnist_mlops.core.calibration import (
    Calibration,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    scale,
    unsure_line,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def overconfident(n: int = 4000, sharpen: float = 3.0, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Answers whose labels are drawn from softmax(logits), reported as softmax(sharpen *
    logits): a model `sharpen` times too sure of itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += 2.5
    true = softmax(logits)
    y = np.array([rng.choice(10, p=p) for p in true])
    return softmax(sharpen * logits), y


def test_scaling_keeps_the_answer_and_one_is_no_change() -> None:
    proba, _ = overconfident(200)
    np.testing.assert_allclose(scale(proba, 1.0), proba, atol=1e-9)
    for t in (0.5, 2.0, 7.0):
        s = scale(proba, t)
        np.testing.assert_allclose(s.sum(axis=1), 1.0)
        assert (s.argmax(axis=1) == proba.argmax(axis=1)).all()
    assert (scale(proba, 3.0).max(axis=1) <= proba.max(axis=1) + 1e-12).all()


def test_the_temperature_of_an_overconfident_model_is_found_and_lowers_the_error() -> None:
    proba, y = overconfident(sharpen=3.0)
    t = fit_temperature(proba, y)
    assert 2.6 < t < 3.4, t
    before, after = expected_calibration_error(proba, y), expected_calibration_error(
        scale(proba, t), y)
    assert after < before / 3, (before, after)


def test_the_unsure_line_gives_up_at_most_the_share_asked_of_the_right_answers() -> None:
    proba, y = overconfident()
    right = proba.argmax(axis=1) == y
    for give_up in (0.0, 0.01, 0.05, 0.2):
        line = unsure_line(proba, y, give_up)
        flagged = proba.max(axis=1)[right] < line
        assert flagged.mean() <= give_up + 1e-12
        assert give_up == 0 or flagged.mean() > give_up - 2 / right.sum()   # and no less
    cal, report = calibrate(proba, y, 0.05)
    assert report["unsure_right_given_up"] <= 0.05
    # it catches wrong answers far more often than right ones
    assert report["unsure_wrong_caught"] > 2 * report["unsure_right_given_up"]
    assert report["ece_after"] < report["ece_before"]
    assert cal.unsure_below == report["unsure_below"]


def test_a_calibration_survives_json_and_refuses_what_is_not_one() -> None:
    cal = Calibration(1.7, 0.83)
    assert Calibration.from_json(cal.to_json()) == cal
    for bad in ("{}", "[1, 2]", "not json", '{"temperature": -1, "unsure_below": 0.5}',
                '{"temperature": 1, "unsure_below": 2}'):
        with pytest.raises(ValueError, match="not a calibration record"):
            Calibration.from_json(bad)


def test_an_h5_carries_its_calibration_and_one_without_says_none(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.arange(3))
    assert calibration.read_h5(path) is None
    calibration.write_h5(path, Calibration(2.0, 0.6))
    assert calibration.read_h5(path) == Calibration(2.0, 0.6)
    with h5py.File(path, "r") as f:         # the rest of the file is untouched
        assert f["weights"][()].tolist() == [0, 1, 2]
    assert calibration.read_h5(tmp_path / "missing.h5") is None
