"""Stage `preprocess`: assign every training image to a cross-validation fold.

Input scaling lives inside each model (a Rescaling layer), so a saved model takes raw 0-255
pixels and serving can never skew from training. What training still needs is *which*
images form which fold: a small, reviewable CSV (index,label,fold), one row per image used.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from mnist_mlops.core.config import PreprocessParams, load_params
from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.core.runtime import UserError, run_main
from mnist_mlops.data.dataset import folds_csv, load_dataset

log = logging.getLogger(__name__)


def select_subset(labels: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Indices of the training images to use: all, or a seeded subset (stratified if asked)."""
    n = len(labels)
    if params.subset is None or params.subset >= n:
        return np.arange(n)
    if params.strategy == "contiguous":
        return np.arange(params.subset)
    idx, _ = train_test_split(np.arange(n), train_size=params.subset, stratify=labels,
                              random_state=params.seed)
    return np.sort(idx)


def assign_folds(labels: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Fold number (0..K-1) for each of `labels`' images."""
    n, k = len(labels), params.folds
    if n < k:
        raise UserError(f"cannot make {k} folds from {n} images; lower preprocess.folds")
    folds = np.empty(n, dtype=np.int64)
    if params.strategy == "contiguous":
        # Tutorial 004: unshuffled consecutive blocks; the remainder joins the last block.
        size = n // k
        folds[:] = np.minimum(np.arange(n) // size, k - 1)
        return folds
    min_class = int(np.bincount(labels).min(initial=n)) if n else 0
    if min_class < k:
        raise UserError(f"a class has only {min_class} images, fewer than {k} folds; "
                        "raise preprocess.subset or lower preprocess.folds")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=params.seed)
    for fold, (_, val) in enumerate(skf.split(np.zeros(n), labels)):
        folds[val] = fold
    return folds


def make_folds(labels: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """(indices into the training set, fold of each): the stage's pure core."""
    idx = select_subset(labels, params)
    return idx, assign_folds(labels[idx], params)


def main() -> None:
    p = load_params()
    y = load_dataset(p.paths.dataset)["y_train"]
    idx, folds = make_folds(y, p.preprocess)
    for f in range(p.preprocess.folds):
        counts = np.bincount(y[idx][folds == f], minlength=10)
        log.info("fold %d: %d images, per class %s", f, counts.sum(), counts.tolist())
    write_text_atomic(p.paths.folds, folds_csv(idx, y[idx], folds))


if __name__ == "__main__":
    run_main(main)
