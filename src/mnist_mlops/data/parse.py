"""Stage `parse`: the four IDX files -> one uint8 `mnist.npz` (train and test arrays)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mnist_mlops.core.config import load_params
from mnist_mlops.core.runtime import UserError, run_main
from mnist_mlops.data.dataset import save_dataset
from mnist_mlops.data.idx import IDXError, read_idx

log = logging.getLogger(__name__)

SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class ParseError(UserError):
    """The IDX files are malformed or inconsistent with each other."""


def load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one images/labels pair and check they describe the same MNIST digits."""
    try:
        x, y = read_idx(images_path), read_idx(labels_path)
    except IDXError as exc:
        raise ParseError(str(exc)) from None
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ParseError(f"{images_path}: expected uint8 images of shape (n, rows, cols), "
                         f"got {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise ParseError(f"{labels_path}: expected uint8 labels of shape (n,), "
                         f"got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ParseError(f"{images_path.name} holds {len(x)} images but {labels_path.name} "
                         f"holds {len(y)} labels")
    if y.size and y.max() > 9:
        raise ParseError(f"{labels_path}: label {int(y.max())} is not a digit 0-9")
    return x, y


def parse_dataset(raw_dir: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split, (images, labels) in SPLITS.items():
        x, y = load_split(raw_dir / images, raw_dir / labels)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        counts = np.bincount(y, minlength=10).tolist()
        log.info("%s: images %s, labels %s, label counts %s", split, x.shape, y.shape, counts)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ParseError(f"train images are {arrays['x_train'].shape[1:]} but test images are "
                         f"{arrays['x_test'].shape[1:]}")
    return arrays


def main() -> None:
    p = load_params()
    save_dataset(parse_dataset(p.paths.raw), p.paths.dataset)


if __name__ == "__main__":
    run_main(main)
