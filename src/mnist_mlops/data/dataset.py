"""The dataset files the stages hand each other: the parsed arrays (`mnist.npz`) and the
fold table (`folds.csv`), written by `parse` and `preprocess`, read by the later stages.

This is model code (training/checkpoint.py MODEL_CODE): what it reads is what the models
train on, so it holds the file formats only, not the stages' logs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from mnist_mlops.core.fsio import atomic_path
from mnist_mlops.core.runtime import UserError

HEADER = ("index", "label", "fold")


def save_dataset(arrays: dict[str, np.ndarray], out: Path) -> None:
    with atomic_path(out, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def load_dataset(path: Path) -> dict[str, np.ndarray]:
    """The parse stage's output, as a plain dict of arrays."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro parse` first")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def folds_csv(indices: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(zip(indices.tolist(), labels.tolist(), folds.tolist(), strict=True))
    return buf.getvalue()


def load_folds(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(indices, folds) from the preprocess stage's CSV."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro preprocess` first")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return table[:, 0], table[:, 2]
