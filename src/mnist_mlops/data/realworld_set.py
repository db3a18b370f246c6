"""The real-world-like test set as the later stages read it: its file (`prepared.npz`) and
how a model is scored on it.

Written by the `realworld` stage (data/realworld.py, which renders and prepares the
pictures), read by `evaluate@<model>` and the promotion gate (`register`): those stages
depend on this format, not on how the pictures are made, as data/dataset.py is to `parse`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_mlops.core.fsio import atomic_path
from mnist_mlops.core.runtime import UserError

PREPARED = "prepared.npz"


@dataclass(frozen=True)
class RealworldSet:
    """Pictures after preprocessing: `x` (n, 28, 28) uint8, `found` False where
    preprocessing saw no digit (always a wrong answer), `source` generated or user."""

    x: np.ndarray
    y: np.ndarray
    found: np.ndarray
    source: np.ndarray
    names: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def concat(sets: list[RealworldSet]) -> RealworldSet:
    return RealworldSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in
                          ("x", "y", "found", "source", "names")))


def predictions(proba: Callable[[np.ndarray], np.ndarray], rs: RealworldSet) -> np.ndarray:
    """Predicted digit per picture, from a uint8-images -> probabilities function; -1 where
    preprocessing found no digit (a wrong answer: the user got "no digit found")."""
    pred = np.full(len(rs), -1, dtype=np.int64)
    if rs.found.any():
        pred[rs.found] = np.asarray(proba(rs.x[rs.found])).argmax(axis=1)
    return pred


def accuracy(rs: RealworldSet, pred: np.ndarray) -> dict[str, float]:
    """`realworld_accuracy` over every picture; `user_digits_accuracy` over the user's."""
    out = {"realworld_accuracy": float((pred == rs.y).mean())}
    user = rs.source == "user"
    if user.any():
        out["user_digits_accuracy"] = float((pred[user] == rs.y[user]).mean())
    return out


def save(rs: RealworldSet, path: Path) -> None:
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, x=rs.x, y=rs.y, found=rs.found, source=rs.source, names=rs.names)


def load(path: Path) -> RealworldSet:
    try:
        with np.load(path) as z:
            return RealworldSet(*(z[f] for f in ("x", "y", "found", "source", "names")))
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro realworld` first") from None
