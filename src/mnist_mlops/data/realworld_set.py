"""The real-world-like test set as the later stages read it: its file (`prepared.npz`) and
how a model is scored on it.

Written by the `realworld` stage (data/realworld.py, which renders and prepares the
pictures), read by `evaluate@<model>` and the promotion gate (`register`): those stages
depend on this format, not on how the pictures are made, as data/dataset.py is to `parse`.

Every picture has a kind (`realworld.kinds`: photo, scan, marker, thin, slant, drawn, user)
and is scored per kind as well as over all, both after the preprocessing and after a plain
resize (the baseline the preprocessing has to beat): an average over kinds hides a kind
that got worse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_mlops.core.fsio import atomic_path
from mnist_mlops.core.runtime import UserError

log = logging.getLogger(__name__)
PREPARED = "prepared.npz"
USER = "user"                               # the kind of the user's own pictures
ACCURACY = "realworld_accuracy"             # over all pictures; `ACCURACY/<kind>` per kind
PLAIN_ACCURACY = "realworld_plain_accuracy"  # `PLAIN_ACCURACY/<kind>`: after a plain resize
FIELDS = ("x", "y", "found", "kind", "names", "plain")
# a set written before kinds had `source` (generated or user): its generated pictures
# were the photos
SOURCE_KINDS = {"generated": "photo", "user": USER}


@dataclass(frozen=True)
class RealworldSet:
    """Pictures after preprocessing: `x` (n, 28, 28) uint8, `found` False where
    preprocessing saw no digit (always a wrong answer), `kind` which kind of picture each
    is, `plain` each picture plainly resized instead (the baseline; None in a set written
    before it was kept)."""

    x: np.ndarray
    y: np.ndarray
    found: np.ndarray
    kind: np.ndarray
    names: np.ndarray
    plain: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def kinds(self) -> list[str]:
        """The kinds in the set, in the order they first appear (realworld.kinds')."""
        return [str(k) for k in dict.fromkeys(self.kind.tolist())]


def concat(sets: list[RealworldSet]) -> RealworldSet:
    plain = [s.plain for s in sets]
    return RealworldSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in FIELDS[:-1]),
                        plain=None if any(p is None for p in plain) else np.concatenate(plain))


def predictions(proba: Callable[[np.ndarray], np.ndarray], rs: RealworldSet) -> np.ndarray:
    """Predicted digit per picture, from a uint8-images -> probabilities function; -1 where
    preprocessing found no digit (a wrong answer: the user got "no digit found")."""
    pred = np.full(len(rs), -1, dtype=np.int64)
    if rs.found.any():
        pred[rs.found] = np.asarray(proba(rs.x[rs.found])).argmax(axis=1)
    return pred


def plain_predictions(proba: Callable[[np.ndarray], np.ndarray], rs: RealworldSet
                      ) -> np.ndarray | None:
    """Predicted digit per picture after the plain resize (every picture gets an answer);
    None for a set without the baseline."""
    if rs.plain is None:
        return None
    return np.asarray(proba(rs.plain)).argmax(axis=1) if len(rs) else np.zeros(0, np.int64)


def by_kind(rs: RealworldSet, pred: np.ndarray) -> dict[str, float]:
    """Accuracy on each kind of picture."""
    return {k: float((pred[rs.kind == k] == rs.y[rs.kind == k]).mean()) for k in rs.kinds()}


def accuracy(rs: RealworldSet, pred: np.ndarray, plain: np.ndarray | None = None
             ) -> dict[str, float]:
    """`realworld_accuracy` over every picture and `realworld_accuracy/<kind>` per kind;
    `realworld_plain_accuracy/<kind>` from the plain resize's answers, if given;
    `user_digits_accuracy` over the user's pictures."""
    out = {ACCURACY: float((pred == rs.y).mean()),
           **{f"{ACCURACY}/{k}": v for k, v in by_kind(rs, pred).items()}}
    if plain is not None:
        out.update({f"{PLAIN_ACCURACY}/{k}": v for k, v in by_kind(rs, plain).items()})
    user = rs.kind == USER
    if user.any():
        out["user_digits_accuracy"] = float((pred[user] == rs.y[user]).mean())
    return out


def kind_table(metrics: dict[str, float]) -> dict[str, tuple[float, float | None]]:
    """From `accuracy`'s metrics (or an MLflow run's): kind -> (accuracy after the
    preprocessing, after the plain resize or None), in the order they were logged."""
    table = {}
    for key, value in metrics.items():
        if key.startswith(f"{ACCURACY}/"):
            kind = key.removeprefix(f"{ACCURACY}/")
            table[kind] = (value, metrics.get(f"{PLAIN_ACCURACY}/{kind}"))
    return table


def table_line(metrics: dict[str, float]) -> str:
    """The per-kind table in one line: `photo 0.912 (plain 0.650), ...`."""
    return ", ".join(f"{k} {ours:.3f}" + ("" if plain is None else f" (plain {plain:.3f})")
                     for k, (ours, plain) in kind_table(metrics).items())


def answers_csv(rs: RealworldSet, pred: np.ndarray, plain: np.ndarray | None) -> str:
    """Every picture's answer, after the preprocessing and after the plain resize (-1: no
    digit found; empty: no baseline in the set)."""
    plain_col = [""] * len(rs) if plain is None else plain.tolist()
    return "file,kind,actual,predicted,plain_predicted\n" + "".join(
        f"{n},{k},{a},{b},{c}\n" for n, k, a, b, c in zip(
            rs.names, rs.kind, rs.y, pred, plain_col, strict=True))


def save(rs: RealworldSet, path: Path) -> None:
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **{f: getattr(rs, f) for f in FIELDS
                                    if getattr(rs, f) is not None})


def load(path: Path) -> RealworldSet:
    """The prepared set; one written before kinds (a `source` per picture) is read with
    its generated pictures as one kind, `photo` (they were the photos), and no baseline."""
    try:
        with np.load(path) as z:
            if "kind" in z.files:
                return RealworldSet(*(z[f] for f in FIELDS if f in z.files))
            kind = np.array([SOURCE_KINDS.get(s, s) for s in z["source"].tolist()], dtype=str)
            log.warning("%s was written before the real-world set had kinds: its generated "
                        "pictures count as one kind, photo, without the plain-resize "
                        "baseline; `dvc repro realworld` rebuilds it kind by kind", path)
            return RealworldSet(z["x"], z["y"], z["found"], kind, z["names"])
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro realworld` first") from None
