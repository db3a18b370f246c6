"""The train stage's ONNX export, handed to evaluate so that evaluate need not import
TensorFlow (5-7 s of every evaluate stage on a 2-core CPU).

The train stage has Keras loaded: once it has saved the .h5, it exports that file, checks
ONNX Runtime against Keras on the test digits (their pixels: no label is read) and times
Keras on the same pass. evaluate takes the export when it was made from the same .h5
(SHA-256) by the same export code and passed its check; otherwise (no draft: DVC restored
the train stage from its run cache, the export code changed since, the export failed) it
loads Keras and exports as it always did. A draft is a cache, not an output: DVC records
none of it, it lives beside the checkpoints, and evaluate removes the one it takes.
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
from mnist_mlops.core.fsio import atomic_path, in_project, sha256_file, write_json_atomic
from mnist_mlops.core.model_files import ONNX_FILE, PARITY_FILE
from mnist_mlops.inference import onnx_export
from mnist_mlops.inference.keras_model import members
from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.inference.timing import throughput

log = logging.getLogger(__name__)

DRAFTS = ".onnx-drafts"     # under paths.checkpoints: one folder per .h5 (its SHA-256)
DRAFT_FILE = "draft.json"   # which .h5, which export code, Keras' speed, ensemble members
STALE_S = 24 * 3600         # a draft no evaluate took within a day is removed by the next
# The code that makes the ONNX file from a .h5: a draft made by other code is not taken.
EXPORT_CODE = ("inference/keras_model.py", "inference/onnx_export.py",
               "inference/onnx_model.py", "core/calibration.py", "core/mnist.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Draft:
    """An export evaluate can take: where it is and what train measured there."""

    folder: Path
    keras_speed: dict[str, float]     # throughput() of the Keras model on the test digits
    members: int                      # fold models inside an ensemble; 0 for one network


def export_code_digest(package: Path = PACKAGE_DIR) -> str:
    h = hashlib.sha256()
    for rel in EXPORT_CODE:
        h.update(rel.encode())
        h.update((package / rel).read_bytes())
    return h.hexdigest()


def folder_of(checkpoints: Path, h5: Path) -> tuple[Path, str]:
    """The draft folder of the .h5 as it is now, and its SHA-256."""
    digest = sha256_file(h5)
    return in_project(checkpoints) / DRAFTS / digest[:16], digest


def make(model: Any, name: str, h5: Path, checkpoints: Path, x: np.ndarray) -> Draft:
    """Export `model` (loaded from `h5`) for evaluate, checked against Keras on `x` (the
    test digits); export_checked's UserError where it cannot be exported."""
    folder, digest = folder_of(checkpoints, h5)
    prune(folder.parent)
    proba, speed = throughput(Predictor.of_keras(model, name), x)
    metadata = onnx_export.export_metadata(model, name, calibration.read_h5(h5))
    onnx_export.export_checked(model, folder, x, proba, metadata, h5)
    draft = Draft(folder, speed, len(members(model)))
    write_json_atomic(folder / DRAFT_FILE, {
        "h5_sha256": digest, "export_code": export_code_digest(),
        "keras_speed": speed, "members": draft.members})
    return draft


def prune(drafts: Path, now: float | None = None) -> None:
    """Remove the drafts nobody took (a training whose evaluate never ran) once a day old."""
    now = time.time() if now is None else now
    for folder in drafts.glob("*/"):
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > STALE_S:
                shutil.rmtree(folder)


def take(checkpoints: Path, h5: Path) -> Draft | None:
    """The draft of `h5` if there is one evaluate may use: same .h5, same export code, the
    parity check passed. None (and a line saying why) otherwise."""
    folder, digest = folder_of(checkpoints, h5)
    try:
        record = json.loads((folder / DRAFT_FILE).read_text())
        report = json.loads((folder / PARITY_FILE).read_text())
    except FileNotFoundError:
        log.info("%s: no ONNX export from the train stage here: exporting it now", h5)
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: the train stage's ONNX export cannot be read (%s): exporting it "
                    "again", h5, exc)
        return None
    why = ("it was made from another .h5" if record.get("h5_sha256") != digest else
           "the export code has changed since" if record.get("export_code")
           != export_code_digest() else
           "its parity check failed" if not report.get("ok") else
           "its ONNX file is missing" if not (folder / ONNX_FILE).is_file() else None)
    if why:
        log.info("%s: not taking the train stage's ONNX export (%s): exporting it again",
                 h5, why)
        return None
    return Draft(folder, record["keras_speed"], int(record["members"]))


def install(draft: Draft, folder: Path) -> dict[str, Any]:
    """Copy the draft's ONNX file and parity report into `folder` (evaluate's output, each
    file atomically), remove the draft; the parity report."""
    for name in (ONNX_FILE, PARITY_FILE):
        with atomic_path(folder / name, durable=False) as tmp:
            shutil.copyfile(draft.folder / name, tmp)
    with contextlib.suppress(OSError):
        shutil.rmtree(draft.folder)
    return json.loads((folder / PARITY_FILE).read_text())
