"""Recognise digits in image files with a saved .h5 model or an MLflow model URI."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.digits import ImageInputError, prepare
from mnist_mlops.runtime import UserError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class Predictor:
    """One interface over a Keras .h5 file and an MLflow pyfunc model: uint8 in, probs out."""

    def __init__(self, source: str, trusted: bool = False) -> None:
        self.source = source
        path = Path(source)
        if path.suffix in (".h5", ".keras") or path.is_file():
            from mnist_mlops.evaluate import load_keras_model

            self._keras = load_keras_model(path)
            self._pyfunc = None
        else:
            import mlflow

            self._keras = self._pyfunc = None
            try:
                # A Keras model inside (this pipeline's models are) is loaded as Keras and
                # called directly: faster for a few images and silent, unlike pyfunc's predict.
                flavors = mlflow.models.get_model_info(source).flavors
                if "tensorflow" in flavors:
                    self._keras = mlflow.tensorflow.load_model(source)
                elif not trusted:
                    raise UserError(
                        f"{source} is an MLflow model of flavour(s) {', '.join(flavors)}, not "
                        "a Keras/TensorFlow model: loading it runs its own Python code. Pass "
                        "--trust-model if you trust where it came from")
                else:
                    self._pyfunc = mlflow.pyfunc.load_model(source)
            except UserError:
                raise
            except Exception as exc:  # MlflowException, OSError, ... : all mean "can't load"
                raise UserError(f"cannot load model {source!r}: {exc}. Pass --model with a "
                                ".h5 file or an MLflow model URI (models:/NAME@champion), and "
                                "set MLFLOW_TRACKING_URI to the store that holds it") from None

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28, 1)
        if self._keras is not None:
            xf = x.astype("float32")
            # A direct call skips predict()'s per-call data pipeline: ~10x faster for a few
            # images (the drawing page, one file); predict() batches large inputs.
            out = (self._keras(xf, training=False) if len(x) <= 64
                   else self._keras.predict(xf, batch_size=256, verbose=0))
        else:
            out = self._pyfunc.predict(x)
        return np.asarray(out, dtype=np.float64).reshape(len(x), 10)


@dataclass
class Result:
    file: str
    digit: int | None = None
    probability: float | None = None
    top3: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top3"] = [{"digit": k, "probability": p} for k, p in self.top3]
        return d

    def line(self) -> str:
        if self.error:
            return f"{self.file}: error: {self.error}"
        if self.digit is None:
            return f"{self.file}: no digit found"
        top = ", ".join(f"{k} {p:.3f}" for k, p in self.top3)
        return f"{self.file}: {self.digit} (p={self.probability:.3f}; top-3: {top})"


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders replaced by the image files they hold (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir()
                              if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def top3(proba: np.ndarray) -> list[tuple[int, float]]:
    order = np.argsort(-proba, kind="stable")[:3]
    return [(int(k), float(proba[k])) for k in order]


def predict_files(predictor: Predictor, files: list[Path], threshold: float | None = None
                  ) -> list[Result]:
    """Per-file results; a bad file gets an error entry and the others still run."""
    results: list[Result] = []
    ready: list[tuple[Result, np.ndarray]] = []
    for f in files:
        r = Result(str(f))
        results.append(r)
        try:
            arr = prepare(f, threshold)
        except ImageInputError as exc:
            r.error = str(exc).removeprefix(f"{f}: ")
            continue
        if arr is not None:
            ready.append((r, arr))
    if ready:
        proba = predictor.predict_proba(np.stack([a for _, a in ready]))
        for (r, _), p in zip(ready, proba, strict=True):
            r.top3 = top3(p)
            r.digit, r.probability = r.top3[0]
    return results
