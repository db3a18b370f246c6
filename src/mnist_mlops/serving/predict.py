"""Loading a model and predicting with it: the one place for both (evaluate, the CLI, the
drawing page and the benchmarks call it). A model is a saved .h5 file or an MLflow model
URI; pictures are recognised after `digits.prepare` makes them look like MNIST."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.config import INPUT_SHAPE, NUM_CLASSES, Params
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data.digits import IMAGE_SUFFIXES, ImageInputError, prepare
from mnist_mlops.tracking.mlflow_io import H5_ARTIFACT

log = logging.getLogger(__name__)


def load_keras_model(path: Path) -> Any:
    """A saved .h5 model, ready for inference (no optimizer state needed)."""
    import keras

    if not path.is_file():
        raise UserError(f"{path} not found: train it first (`dvc repro train@{path.stem}`)")
    return keras.saving.load_model(path, compile=False)


def registry_version(uri: str) -> dict[str, str | None]:
    """Version and architecture behind `models:/NAME@alias` or `models:/NAME/VERSION`."""
    from mlflow.tracking import MlflowClient

    name, _, ref = uri.removeprefix("models:/").partition("@")
    client = MlflowClient()
    if ref:
        mv = client.get_model_version_by_alias(name, ref)
    else:
        name, _, version = name.partition("/")
        if not version.isdigit():
            return {}
        mv = client.get_model_version(name, version)
    return {"version": str(mv.version), "architecture": mv.tags.get("architecture")}


def predict_proba(model: Any, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of a Keras model for uint8 images shaped (n, 28, 28[, 1])."""
    x = images.reshape(-1, *INPUT_SHAPE).astype("float32")
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


def pipeline_h5(source: str, flavors: dict[str, Any]) -> Path | None:
    """The .h5 inside an MLflow model this pipeline logged (mlflow_model.py), downloaded;
    None for any other model."""
    import mlflow

    conf = flavors.get("python_function", {})
    entry = (conf.get("artifacts") or {}).get(H5_ARTIFACT) or {}
    path = entry.get("path", "")
    if not path.endswith(".h5") or "tensorflow" in flavors:
        return None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source)).resolve()
    h5 = (local / path).resolve()
    if not h5.is_relative_to(local):
        raise UserError(f"{source}: its MLmodel points outside the model ({path}); refused")
    return h5


class Predictor:
    """One interface over a Keras .h5 file and an MLflow pyfunc model: uint8 in, probs out."""

    def __init__(self, source: str, trusted: bool = False) -> None:
        self.source = source
        # which model answers: registry version and architecture where known
        self.about: dict[str, str | None] = {"source": source, "version": None,
                                              "architecture": None}
        path = Path(source)
        if path.suffix in (".h5", ".keras") or path.is_file():
            self._keras = load_keras_model(path)
            self._pyfunc = None
            self.about["architecture"] = self._keras.name
        else:
            import mlflow

            self._keras = self._pyfunc = None
            try:
                # A Keras model inside (this pipeline's models are) is loaded as Keras and
                # called directly: faster for a few images and silent, unlike pyfunc's predict.
                flavors = mlflow.models.get_model_info(source).flavors
                if source.startswith("models:/"):
                    self.about.update(registry_version(source))
                h5 = pipeline_h5(source, flavors)
                if h5 is not None:       # this pipeline's model: its .h5, no code run
                    self._keras = load_keras_model(h5)
                elif "tensorflow" in flavors:   # models logged by earlier versions
                    self._keras = mlflow.tensorflow.load_model(source)
                if self._keras is not None:
                    self.about["architecture"] = self.about["architecture"] or self._keras.name
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
        x = np.asarray(images, dtype=np.uint8).reshape(-1, *INPUT_SHAPE)
        if self._keras is not None:
            import keras

            xf = x.astype("float32")
            # A direct call skips predict()'s per-call data pipeline: ~10x faster for a few
            # images (the drawing page, one file); predict() batches large inputs.
            out = (keras.ops.convert_to_numpy(self._keras(xf, training=False))  # any backend
                   if len(x) <= 64 else self._keras.predict(xf, batch_size=256, verbose=0))
        else:
            out = self._pyfunc.predict(x)
        return np.asarray(out, dtype=np.float64).reshape(len(x), NUM_CLASSES)


@dataclass
class Result:
    file: str
    digit: int | None = None
    probability: float | None = None
    top3: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    model: dict[str, str | None] = field(default_factory=dict)   # Predictor.about

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
        r = Result(str(f), model=predictor.about)
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


def load_predictor(model: str | None, params: Params, trusted: bool = False) -> Predictor:
    """`model` (a .h5 file or MLflow URI), or by default the registry's champion, resolved
    against the configured MLflow store; without a store that knows the champion (a fresh
    clone after `dvc pull`), the champion named by the decision record, from its .h5 file."""
    from mnist_mlops.tracking import mlflow_io

    if model:
        if model.startswith("models:/"):
            mlflow_io.setup(params.mlflow)
        return Predictor(model, trusted=trusted)
    uri = f"models:/{params.mlflow.registered_model}@champion"
    try:
        mlflow_io.setup(params.mlflow)
        return Predictor(uri)
    except Exception as exc:
        local = recorded_champion_file(params)
        if local is None:
            raise
        log.info("%s not in the tracking store (%s); using the recorded champion %s", uri,
                 str(exc).splitlines()[0][:120], local)
        return Predictor(str(local))


def recorded_champion_file(params: Params) -> Path | None:
    """The champion's model file according to reports/registry.json, if it is present."""
    import json

    try:
        record = json.loads(params.paths.registry.read_text())
    except (OSError, ValueError):
        return None
    names = [m for m, v in record.get("versions", {}).items() if v == record.get("champion")]
    path = params.paths.model_file(names[0]) if names else None
    return path if path is not None and path.is_file() else None
