"""A Keras model as one ONNX graph, checked against Keras before anything records it.

The graph takes raw uint8 pixels (n, 28, 28, 1), as the MLflow model's signature does, and
gives `probabilities` and `embedding` (the penultimate layer: what the prediction log
keeps) from one run. An ensemble stays one graph: its fold models and their average.
Augmentation layers are left out (the graph is the model in inference mode).

The conversion is TensorFlow's (tf2onnx); under JAX it would need jax2onnx and its
own large stack, and under PyTorch it fixes the batch size to one. So under another backend
the saved .h5 (backend-neutral) is exported by a TensorFlow-backend process running this
module (`python -m mnist_mlops.inference.onnx_export H5 ONNX METADATA`), and the graph is
checked against the answers of the backend that trained it.

Cold start: keras and onnx are imported inside the functions: evaluate imports this module
before run_main has quietened TensorFlow's start-up lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core import calibration
from mnist_mlops.core.calibration import Calibration
from mnist_mlops.core.fsio import atomic_path, write_json_atomic
from mnist_mlops.core.mnist import INPUT_SHAPE
from mnist_mlops.core.model_files import ONNX_FILE, PARITY_FILE
from mnist_mlops.core.runtime import UserError, run_main
from mnist_mlops.inference.keras_model import load_keras_model, two_outputs
from mnist_mlops.inference.onnx_model import EMBEDDING, PROBABILITIES, OnnxModel

log = logging.getLogger(__name__)
TOLERANCE = 1e-4      # largest probability difference allowed between ONNX and Keras
PIXELS = "pixels"     # the graph's one input: uint8 (n, 28, 28, 1)


@dataclass(frozen=True)
class Parity:
    """How far the ONNX graph's answers are from Keras' on the same images."""

    images: int
    max_diff: float          # largest absolute probability difference
    worst_index: int         # the image where it is largest
    disagree: int            # images whose predicted digit differs
    first_disagree: int | None

    @property
    def ok(self) -> bool:
        return self.disagree == 0 and self.max_diff <= TOLERANCE

    def problem(self) -> str:
        """What is wrong, naming the digit (index in the test set) that shows it."""
        if self.disagree:
            return (f"ONNX and Keras predict different digits for {self.disagree} of "
                    f"{self.images} test digits (first: test digit {self.first_disagree}); "
                    f"largest probability difference {self.max_diff:.3g} at test digit "
                    f"{self.worst_index}")
        return (f"largest probability difference {self.max_diff:.3g} (test digit "
                f"{self.worst_index}) is over the {TOLERANCE:g} allowed")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tolerance": TOLERANCE, "ok": self.ok}


def parity(keras_proba: np.ndarray, onnx_proba: np.ndarray) -> Parity:
    """Compare two (n, 10) probability arrays of the same images."""
    diff = np.abs(np.asarray(keras_proba, np.float64) - np.asarray(onnx_proba, np.float64))
    per_image = diff.max(axis=1)
    differ = np.flatnonzero(keras_proba.argmax(axis=1) != onnx_proba.argmax(axis=1))
    return Parity(len(diff), float(per_image.max()), int(per_image.argmax()), len(differ),
                  int(differ[0]) if len(differ) else None)


def inference_graph(model: Any) -> Any:
    """`model` behind a uint8 input, in inference mode, with both named outputs."""
    import keras

    pixels = keras.Input(INPUT_SHAPE, dtype="uint8", name=PIXELS)
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"), name="to_float")(pixels)
    embedding, proba = two_outputs(model)(x, training=False)
    return keras.Model(pixels, {PROBABILITIES: proba, EMBEDDING: embedding}, name=model.name)


def export_metadata(model: Any, name: str, cal: Calibration | None) -> dict[str, str]:
    """What the ONNX file carries beside the graph: the architecture, the model's name in
    params.yaml and the calibration the .h5 carries (predict and serve read it there)."""
    return {"architecture": model.name, "model": name,
            **({calibration.KEY: cal.to_json()} if cal is not None else {})}


def export(model: Any, path: Path, metadata: dict[str, str]) -> float:
    """Write `model` as ONNX to `path` (atomically), with `metadata` in the file (the
    architecture, what trained it); the seconds it took."""
    import onnx

    t0 = time.perf_counter()
    proto = to_onnx(inference_graph(model))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(path, durable=False) as tmp:
        onnx.save(proto, str(tmp))
    return time.perf_counter() - t0


def to_onnx(graph: Any) -> Any:
    """The graph as an ONNX model, converted by tf2onnx from its inference function, as
    Keras' `model.export(format="onnx")` converts it, less Keras' export archive: that
    tracks every resource of the model for a SavedModel, which a conversion that freezes
    the weights into the graph does not read (the quick profile's cnn_bn_aug ensemble:
    2.2-2.3 s through Keras' export, 0.9-1.0 s this way; docs/benchmarks.md)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *INPUT_SHAPE), tf.uint8, name=PIXELS),)
    _patch_tf2onnx()
    proto, _ = tf2onnx.convert.from_function(
        tf.function(lambda pixels: graph(pixels, training=False), input_signature=spec,
                    autograph=False), spec)
    return proto


def _patch_tf2onnx() -> None:
    """Keras' fixes of tf2onnx for NumPy 2, which its own export applies first; where a
    later Keras has moved them, tf2onnx runs as it is (and says what it cannot convert)."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:
        log.debug("keras.src.export.tf2onnx_lib is gone: tf2onnx runs unpatched")
        return
    patch_tf2onnx()


def export_on_tensorflow(h5: Path, path: Path, metadata: dict[str, str]) -> float:
    """Export the saved `h5` from a TensorFlow-backend process (see above); the seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_mlops.inference.onnx_export", str(h5), str(path),
         json.dumps(metadata)], env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"the TensorFlow-backend export of {h5} failed: {lines[-1]}")
    return time.perf_counter() - t0


Answerer = Callable[[Path], np.ndarray]   # an ONNX file -> its probabilities of the images


def answers_of(x: np.ndarray) -> Answerer:
    """ONNX Runtime's probabilities of `x` from an ONNX file, in one run of the graph."""
    return lambda path: OnnxModel(path, "it was just exported").run(x)[0]


def export_checked(model: Any, folder: Path, answer: Answerer, keras_proba: np.ndarray,
                   metadata: dict[str, str], h5: Path) -> dict[str, Any]:
    """Export `model` (saved as `h5`) to `folder`/model.onnx, answer the images Keras
    answered with `keras_proba` on ONNX Runtime (`answer(onnx file)`: answers_of(images),
    or a caller's own pass that it times and keeps) and compare; the report (also written as
    parity.json, which register reads before it records the file). A model that cannot be
    exported is a UserError that says how to go on without ONNX."""
    import keras

    path = folder / ONNX_FILE
    try:
        export_s = (export(model, path, metadata) if keras.backend.backend() == "tensorflow"
                    else export_on_tensorflow(h5, path, metadata))
        t0 = time.perf_counter()
        onnx_proba = answer(path)
    except Exception as exc:  # tf2onnx's, Keras' and ONNX Runtime's refusals
        for stale in (path, folder / PARITY_FILE):    # no earlier run's file to register
            stale.unlink(missing_ok=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        raise UserError(f"{metadata.get('model', model.name)}: cannot export as ONNX "
                        f"({reason}). Set register.onnx: false in params.yaml to register the "
                        ".h5 alone (predict and serve then use Keras)") from None
    check = parity(keras_proba, onnx_proba)
    report = {"exported": True, **check.to_dict(), "export_s": round(export_s, 3),
              "parity_s": round(time.perf_counter() - t0, 3)}
    write_json_atomic(folder / PARITY_FILE, report)
    (log.info if check.ok else log.error)(
        "%s: exported as ONNX in %.1f s; ONNX Runtime vs Keras on %d test digits: %s (%.1f s)",
        metadata.get("model", model.name), export_s, check.images,
        f"same digits, largest probability difference {check.max_diff:.2g}" if check.ok
        else check.problem(), report["parity_s"])
    return report


def skipped(folder: Path, why: str) -> dict[str, Any]:
    """No export (register.onnx: false): the report says so, and no stale file stays."""
    (folder / ONNX_FILE).unlink(missing_ok=True)
    report = {"exported": False, "reason": why}
    write_json_atomic(folder / PARITY_FILE, report)
    return report


def main() -> None:
    """The TensorFlow-backend export of a saved .h5 (export_on_tensorflow)."""
    ap = argparse.ArgumentParser(description="export a saved Keras .h5 as ONNX")
    ap.add_argument("h5", type=Path)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("metadata", type=json.loads)
    args = ap.parse_args()
    export(load_keras_model(args.h5), args.onnx, args.metadata)


if __name__ == "__main__":
    run_main(main)
