"""Loading a model and predicting with it: the one place for both (evaluate, the CLI, the
drawing page and the benchmarks call it). A model is a saved .h5 file or an MLflow model
URI; pictures are recognised after `digits.prepare` makes them look like MNIST."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.config import INPUT_SHAPE, NUM_CLASSES, Params, Paths
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data.digits import IMAGE_SUFFIXES, ImageInputError, prepare
from mnist_mlops.tracking.mlflow_io import H5_ARTIFACT

log = logging.getLogger(__name__)
NO_DIGIT = "no digit found"


class ModelLoadError(UserError):
    """A model that cannot be loaded; `cause` is why, without the advice around it."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"cannot load model {source!r}: {cause}. Pass --model with a .h5 file "
                         "or an MLflow model URI (models:/NAME@champion), and set "
                         "MLFLOW_TRACKING_URI to the store that holds it")
        self.cause = cause


def load_keras_model(path: Path) -> Any:
    """A saved .h5 model, ready for inference (no optimizer state needed)."""
    import keras

    if not path.is_file():
        raise UserError(f"{path} not found")
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
                raise ModelLoadError(source, str(exc).strip()) from None

    @property
    def keras_model(self) -> Any:
        """The Keras model that answers; None for a python-function model."""
        return self._keras

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.uint8).reshape(-1, *INPUT_SHAPE)
        if self._keras is not None:
            import keras

            xf = x.astype("float32")
            # predict_on_batch runs the compiled predict step (tf.function / jax.jit) with
            # no per-call data pipeline: 1.4 ms for one image of cnn_32_64_64 against 16 ms
            # for an eager direct call and more for predict(); predict() batches large inputs.
            out = (keras.ops.convert_to_numpy(self._keras.predict_on_batch(xf))
                   if len(x) <= 256 else self._keras.predict(xf, batch_size=256, verbose=0))
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
    message: str | None = None      # why there is no digit without an error: NO_DIGIT
    model: dict[str, str | None] = field(default_factory=dict)   # Predictor.about

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top3"] = [{"digit": k, "probability": p} for k, p in self.top3]
        return d

    def line(self) -> str:
        if self.error:
            return f"{self.file}: error: {self.error}"
        if self.digit is None:
            return f"{self.file}: {self.message or NO_DIGIT}"
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


def predict_files(predictor: Predictor, files: list[Path], threshold: float | None = None,
                  call: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Result]:
    """Per-file results; a bad file gets an error entry and the others still run.
    `call` replaces predictor.predict_proba (the prediction log's, monitoring/)."""
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
        if arr is None:
            r.message = NO_DIGIT
        else:
            ready.append((r, arr))
    if ready:
        proba = (call or predictor.predict_proba)(np.stack([a for _, a in ready]))
        for (r, _), p in zip(ready, proba, strict=True):
            r.top3 = top3(p)
            r.digit, r.probability = r.top3[0]
    return results


def load_predictor(model: str | None, params: Params | None, trusted: bool = False
                   ) -> Predictor:
    """`model` (a .h5 file or MLflow URI), or by default the registry's champion, resolved
    against the configured MLflow store; without a store that can load the champion (a
    fresh clone after `dvc pull`), the champion named by the latest decision record, from
    its .h5 file. A .h5 file needs no params (None: no params.yaml here)."""
    from mnist_mlops.tracking import mlflow_io

    if model:
        if Path(model).suffix in (".h5", ".keras") and not Path(model).is_file():
            raise UserError(f"{model} not found: {_missing_model_advice(Path(model), params)}")
        if model.startswith("models:/") and params is not None:
            mlflow_io.setup(params.mlflow)
        return Predictor(model, trusted=trusted)
    if params is None:
        raise UserError("no params.yaml here: run in the project folder, or pass --model")
    uri = f"models:/{params.mlflow.registered_model}@champion"
    try:
        mlflow_io.setup(params.mlflow)
        return Predictor(uri)
    except UserError as exc:
        found = recorded_champion(params)
        if found is None:
            raise
        failed = (f"cannot load {uri} from the tracking store "
                  f"{params.mlflow.resolved_tracking_uri()} "
                  f"({exc.cause if isinstance(exc, ModelLoadError) else exc})")
    record_file, record = found
    try:
        local = recorded_champion_file(params, record)
    except UserError as exc:
        raise UserError(f"{failed}, and the champion recorded in {record_file} {exc}") from None
    log.warning("%s; using the champion recorded in %s instead: v%s, %s", failed, record_file,
                record["champion"], local)
    predictor = Predictor(str(local))
    predictor.about["version"] = str(record["champion"])
    return predictor


def _missing_model_advice(path: Path, params: Params | None) -> str:
    """Train or fetch it, where it is the project's file of a model in params."""
    for name in params.models if params is not None else ():
        if path.resolve() == params.paths.model_file(name).resolve():
            return (f"train it (`dvc repro train@{name}`) or fetch it from the DVC remote "
                    f"(`dvc pull train@{name}`)")
    return "pass --model with an existing .h5 file, or an MLflow model URI"


def by_hand_record(paths: Paths) -> Path:
    """The record `promote` and `rollback` write, beside the register stage's record: not
    that stage's output, which DVC would then see changed and run the stage again."""
    return paths.registry.with_name(f"{paths.registry.stem}-by-hand.json")


def recorded_champion(params: Params) -> tuple[Path, dict[str, Any]] | None:
    """The latest decision record naming a champion: the register stage's or the last
    promote/rollback's, whichever was written after more champion changes (the history
    only grows), the later one on a tie."""
    found = []
    for path in (params.paths.registry, by_hand_record(params.paths)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("champion"):
            order = (len(record.get("champion_history") or ()), record.get("decided_at", ""))
            found.append((order, path, record))
    return max(found, key=lambda f: f[0])[1:] if found else None


def recorded_champion_file(params: Params, record: dict[str, Any]) -> Path:
    """The recorded champion's .h5 in this checkout. models/<model>.h5 is that version only
    if the same training run made it: reports/train/<model>/run.json names the run (older
    records: their `versions` map the models of the run to versions)."""
    version, about = str(record["champion"]), record.get("champion_model") or {}
    versions = {m: str(v) for m, v in (record.get("versions") or {}).items()}
    name = about.get("model") or next((m for m, v in versions.items() if v == version), None)
    if name is None:
        raise UserError(f"(v{version}) does not name its model")
    path, run_file = params.paths.model_file(name), params.paths.run_file(name)
    missing = [str(p) for p in (path, run_file) if not p.is_file()
               and (p == path or about.get("run_id"))]
    if missing:
        raise UserError(f"is v{version} ({name}), but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not here: "
                        f"`dvc pull train@{name}`")
    try:
        run_id = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() else None
    except ValueError:
        run_id = None
    if (run_id != about["run_id"]) if about.get("run_id") else versions.get(name) != version:
        raise UserError(f"is v{version} ({name}), but {path} is from another training run: "
                        "check out the commit that trained it and `dvc pull`")
    return path
