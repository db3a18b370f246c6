from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.core.config import PreprocessParams
from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data.dataset import folds_csv, load_folds
from mnist_mlops.data.preprocess import make_folds


def labels(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(10, size=n, p=np.linspace(0.05, 0.15, 10) / 1.0).astype(np.uint8)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_stratified_folds_partition_and_balance(k: int) -> None:
    y = labels()
    idx, folds = make_folds(y, PreprocessParams(folds=k))
    assert np.array_equal(idx, np.arange(len(y)))           # every image exactly once
    assert set(folds.tolist()) == set(range(k))              # disjoint by construction
    for c in range(10):
        per_fold = np.bincount(folds[y[idx] == c], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)


def test_contiguous_folds_are_unshuffled_blocks() -> None:
    y = labels(103)
    idx, folds = make_folds(y, PreprocessParams(folds=4, strategy="contiguous"))
    assert np.array_equal(idx, np.arange(103))
    assert np.all(np.diff(folds) >= 0)
    assert np.bincount(folds).tolist() == [25, 25, 25, 28]


def test_seed_controls_assignment() -> None:
    y = labels()
    a = make_folds(y, PreprocessParams(seed=1))[1]
    b = make_folds(y, PreprocessParams(seed=1))[1]
    c = make_folds(y, PreprocessParams(seed=2))[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_subset_is_stratified_and_sorted() -> None:
    y = labels(5000)
    idx, folds = make_folds(y, PreprocessParams(folds=2, subset=500))
    assert len(idx) == 500 and np.all(np.diff(idx) > 0)
    share_full = np.bincount(y, minlength=10) / len(y)
    share_sub = np.bincount(y[idx], minlength=10) / 500
    assert np.abs(share_full - share_sub).max() < 0.01


def test_too_few_images_per_class_is_a_clear_error() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2], dtype=np.uint8)
    with pytest.raises(UserError, match="fewer than 4 folds"):
        make_folds(y, PreprocessParams(folds=4))


def test_csv_round_trip(tmp_path: Path) -> None:
    y = labels(300)
    idx, folds = make_folds(y, PreprocessParams(folds=3, subset=120))
    write_text_atomic(tmp_path / "folds.csv", folds_csv(idx, y[idx], folds))
    assert (tmp_path / "folds.csv").read_text().splitlines()[0] == "index,label,fold"
    back_idx, back_folds = load_folds(tmp_path / "folds.csv")
    assert np.array_equal(back_idx, idx) and np.array_equal(back_folds, folds)
