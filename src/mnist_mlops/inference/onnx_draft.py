"""The train stage's ONNX export, handed to evaluate so that evaluate need not import
TensorFlow (5-7 s of every evaluate stage on a 2-core CPU).

The train stage has Keras loaded: once it has saved the .h5, it exports that file, checks
ONNX Runtime against Keras on the test digits (their pixels: no label is read) and times
both runtimes on that pass. ONNX Runtime's answers are kept with the export, so that
evaluate scores them instead of answering the same 10,000 digits again. evaluate takes the
export when it was made from the same .h5
(SHA-256) by the same export code and passed its check; otherwise (no draft: DVC restored
the train stage from its run cache, the export code changed since, the export failed) it
loads Keras and exports as it always did. A draft is a cache, not an output: DVC records
none of it, it lives beside the checkpoints, and evaluate removes the one it took once
its outputs are written (a failed evaluate takes it again on the rerun).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core import calibration
from mnist_mlops.core.fsio import (
    atomic_path,
    in_project,
    sha256_file,
    sha256_files,
    write_json_atomic,
)
from mnist_mlops.core.mnist import NUM_CLASSES
from mnist_mlops.core.model_files import ONNX_FILE, PARITY_FILE
from mnist_mlops.inference import onnx_export
from mnist_mlops.inference.keras_model import members
from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.inference.timing import onnx_answers, throughput

log = logging.getLogger(__name__)

DRAFTS = ".onnx-drafts"     # under paths.checkpoints: one folder per .h5 (its SHA-256)
DRAFT_FILE = "draft.json"   # which .h5, which export code, both speeds, ensemble members
ANSWERS_FILE = "answers.npz"   # ONNX Runtime's answers on the test digits the check used
STALE_S = 24 * 3600         # a draft no evaluate took within a day is removed by the next
# The code that makes the ONNX file from a .h5 and the draft's record of it: a draft made by
# other code is not taken.
EXPORT_CODE = ("inference/keras_model.py", "inference/onnx_export.py",
               "inference/onnx_model.py", "inference/onnx_draft.py", "inference/predictor.py",
               "inference/timing.py", "core/calibration.py", "core/mnist.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Draft:
    """An export evaluate can take: where it is and what train measured there."""

    folder: Path
    keras_speed: dict[str, float]     # throughput() of the Keras model on the test digits
    members: int                      # fold models inside an ensemble; 0 for one network
    onnx_speed: dict[str, float]      # onnx_answers() of the ONNX file on the same digits
    images_sha256: str                # which digits answers.npz answers (images_digest)
    answers_sha256: str               # answers.npz as the check wrote it


@dataclass(frozen=True)
class Kept:
    """ONNX Runtime's answers on the test digits, from the train stage's check."""

    proba: np.ndarray                 # (n, 10): what the ONNX file's first output gave
    embedding: np.ndarray | None      # an ensemble's members' probabilities; else None
    speed: dict[str, float]           # onnx_answers() on that pass


def export_code_digest() -> str:
    """One digest over EXPORT_CODE (its file names are unique)."""
    return sha256_files([PACKAGE_DIR / rel for rel in EXPORT_CODE])


def folder_of(checkpoints: Path, h5: Path) -> tuple[Path, str]:
    """The draft folder of the .h5 as it is now, and its SHA-256."""
    digest = sha256_file(h5)
    return in_project(checkpoints) / DRAFTS / digest[:16], digest


def make(model: Any, name: str, h5: Path, checkpoints: Path, x: np.ndarray) -> Draft:
    """Export `model` (loaded from `h5`) for evaluate, checked against Keras on `x` (the
    test digits), ONNX Runtime's answers kept; export_checked's UserError where it cannot
    be exported."""
    folder, digest = folder_of(checkpoints, h5)
    prune(folder.parent)
    proba, speed = throughput(Predictor.of_keras(model, name), x)
    metadata = onnx_export.export_metadata(model, name, calibration.read_h5(h5))
    n_members = len(members(model))
    kept: dict[str, Any] = {}

    def answer(onnx_file: Path) -> np.ndarray:
        """The check's ONNX Runtime pass, timed as evaluate times its own, and kept."""
        kept["proba"], kept["embedding"], kept["speed"] = onnx_answers(
            Predictor(str(onnx_file)), x, n_members)
        return kept["proba"]

    onnx_export.export_checked(model, folder, answer, proba, metadata, h5)
    arrays = {k: kept[k] for k in ("proba", "embedding") if kept[k] is not None}
    with atomic_path(folder / ANSWERS_FILE, durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    draft = Draft(folder, speed, n_members, kept["speed"], images_digest(x),
                  sha256_file(folder / ANSWERS_FILE))
    write_json_atomic(folder / DRAFT_FILE, {
        "h5_sha256": digest, "onnx_sha256": sha256_file(folder / ONNX_FILE),
        "export_code": export_code_digest(), "keras_speed": speed, "members": draft.members,
        "onnx_speed": draft.onnx_speed, "images_sha256": draft.images_sha256,
        "answers_sha256": draft.answers_sha256})
    return draft


def images_digest(x: np.ndarray) -> str:
    """SHA-256 of the images' shape and pixels: which digits a draft's answers answer."""
    h = hashlib.sha256(repr((x.shape, str(x.dtype))).encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def answers(draft: Draft, x: np.ndarray) -> Kept | None:
    """The check's ONNX Runtime answers when they answer exactly `x` and are the file the
    train stage wrote; None (and a line saying why) when evaluate must answer itself."""
    why = None
    if draft.images_sha256 != images_digest(x):
        why = "they answer other test digits"
    else:
        try:
            if sha256_file(draft.folder / ANSWERS_FILE) != draft.answers_sha256:
                why = "its answers file is not the one it wrote"
            else:
                with np.load(draft.folder / ANSWERS_FILE) as z:
                    proba = np.asarray(z["proba"], dtype=np.float64)
                    emb = np.asarray(z["embedding"]) if "embedding" in z.files else None
                if proba.shape != (len(x), NUM_CLASSES) or (draft.members and emb is None):
                    why = "its answers have the wrong shape"
        except (OSError, ValueError, KeyError) as exc:
            why = f"its answers cannot be read: {exc}"
    if why:
        log.info("%s: answering the test digits with ONNX Runtime here (the train stage's "
                 "answers are not used: %s)", draft.folder, why)
        return None
    return Kept(proba, emb, dict(draft.onnx_speed))


def prune(drafts: Path, now: float | None = None) -> None:
    """Remove the drafts nobody took (a training whose evaluate never ran) once a day old."""
    now = time.time() if now is None else now
    for folder in drafts.glob("*/"):
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > STALE_S:
                shutil.rmtree(folder)


def take(checkpoints: Path, h5: Path) -> Draft | None:
    """The draft of `h5` if there is one evaluate may use: same .h5, same export code, an
    intact ONNX file, the parity check passed. None (and a line saying why) otherwise."""
    if not h5.is_file():
        return None           # evaluate's Keras path says what is missing
    folder, digest = folder_of(checkpoints, h5)
    try:
        record = json.loads((folder / DRAFT_FILE).read_text())
        report = json.loads((folder / PARITY_FILE).read_text())
        why = _refusal(folder, record, report, digest)
        draft = None if why else Draft(
            folder, dict(record["keras_speed"]), int(record["members"]),
            dict(record["onnx_speed"]), str(record["images_sha256"]),
            str(record["answers_sha256"]))
    except FileNotFoundError:
        log.info("%s: no ONNX export from the train stage here: exporting it now", h5)
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: the train stage's ONNX export cannot be read (%s): exporting it "
                    "again", h5, exc)
        return None
    if why:
        log.info("%s: not taking the train stage's ONNX export (%s): exporting it again",
                 h5, why)
    return draft


def _refusal(folder: Path, record: dict[str, Any], report: dict[str, Any],
             h5_sha256: str) -> str | None:
    """Why a draft may not be taken; None when it may."""
    if record["h5_sha256"] != h5_sha256:
        return "it was made from another .h5"
    if record["export_code"] != export_code_digest():
        return "the export code has changed since"
    if not report["ok"]:
        return "its parity check failed"
    if not (folder / ONNX_FILE).is_file():
        return "its ONNX file is missing"
    if sha256_file(folder / ONNX_FILE) != record["onnx_sha256"]:
        return "its ONNX file is not the one it checked"
    return None


def install(draft: Draft, folder: Path) -> dict[str, Any]:
    """Copy the draft's ONNX file and parity report into `folder` (evaluate's output, each
    file atomically); the parity report."""
    for name in (ONNX_FILE, PARITY_FILE):
        with atomic_path(folder / name, durable=False) as tmp:
            shutil.copyfile(draft.folder / name, tmp)
    return json.loads((folder / PARITY_FILE).read_text())


def discard(draft: Draft) -> None:
    """Remove a draft evaluate has taken, once its outputs are written."""
    with contextlib.suppress(OSError):
        shutil.rmtree(draft.folder)
