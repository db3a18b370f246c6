"""Digits in picture files, and which model answers them: `mnist-mlops predict`, and the
model `serve` and `monitor` load.

Pictures are recognised after `digits.prepare` makes them look like MNIST; the model is the
one given, or the registry's champion, or (a clone without the tracking store) the champion
the newest decision record names (registry/records.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.config import Params
from mnist_mlops.core.model_files import ONNX_FILE
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data.digits import IMAGE_SUFFIXES, ImageInputError, prepare
from mnist_mlops.inference.predictor import ModelLoadError, Predictor

log = logging.getLogger(__name__)
# Cold start: the registry and MLflow (2 s to import) are imported where a registered
# model is resolved: an ONNX file or model folder answers in a fraction of a second.
NO_DIGIT = "no digit found"
UNSURE = "unsure: perhaps not one digit; draw or photograph it again, alone and larger"


@dataclass
class Result:
    file: str
    digit: int | None = None
    probability: float | None = None
    top3: list[tuple[int, float]] = field(default_factory=list)
    unsure: bool | None = None      # the calibrated answer is below the model's line
    error: str | None = None
    message: str | None = None      # NO_DIGIT: why there is no digit; UNSURE: what to do
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
        return (f"{self.file}: {self.digit} (p={self.probability:.3f}; top-3: {top})"
                + (f" {UNSURE}" if self.unsure else ""))


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
    Probabilities are calibrated where the model carries a calibration, which also says
    which answers are unsure. `call` replaces predictor.predict_proba (the prediction log's,
    monitoring/)."""
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
        proba, unsure = predictor.calibrated(
            (call or predictor.predict_proba)(np.stack([a for _, a in ready])))
        for (r, _), p, u in zip(ready, proba, unsure, strict=True):
            r.top3 = top3(p)
            r.digit, r.probability = r.top3[0]
            r.unsure = bool(u)
            r.message = UNSURE if r.unsure else None
    return results


def load_predictor(model: str | None, params: Params | None, trusted: bool = False,
                   runtime: str = "onnx") -> Predictor:
    """`model` (an ONNX or .h5 file, an MLflow model folder or URI), or by default the
    registry's champion, resolved against the configured MLflow store; without a store that
    can load the champion (a fresh clone after `dvc pull`), the champion named by the latest
    decision record, from its files. A file or folder needs no params (None: no
    params.yaml here). `runtime`: onnx (ONNX Runtime) or keras (inference/predictor.py)."""
    if model:
        require_model_file(model, params)
        if model.startswith(("models:/", "runs:/")) and params is not None:
            from mnist_mlops.tracking import mlflow_io

            mlflow_io.setup(params.mlflow)
        return _registered(Predictor(model, trusted=trusted, runtime=runtime))
    if params is None:
        raise UserError("no params.yaml here: run in the project folder, or pass --model")
    from mnist_mlops.registry.records import recorded_champion, recorded_champion_file
    from mnist_mlops.tracking import mlflow_io

    uri = f"models:/{params.mlflow.registered_model}@champion"
    try:
        mlflow_io.setup(params.mlflow)
        return _registered(Predictor(uri, runtime=runtime))
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
    onnx = params.paths.onnx_dir(local.stem) / ONNX_FILE     # evaluate's export of that .h5
    if runtime == "onnx" and onnx.is_file():
        local = onnx
    log.warning("%s; using the champion recorded in %s instead: v%s, %s", failed, record_file,
                record["champion"], local)
    predictor = Predictor(str(local), runtime=runtime)
    predictor.about["version"] = str(record["champion"])
    return predictor


def _registered(predictor: Predictor) -> Predictor:
    """`predictor.about` with the registry's version and architecture, for a registered
    model (`models:/NAME@alias` or `models:/NAME/N`)."""
    if predictor.source.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        from mnist_mlops.registry.aliases import version_behind

        try:
            predictor.about.update(version_behind(MlflowClient(), predictor.source))
        except Exception as exc:  # the model loaded: its version is a label, not a need
            raise ModelLoadError(predictor.source, str(exc).strip()) from None
    return predictor


def require_model_file(model: str | None, params: Params | None) -> None:
    """A model file (.onnx, .h5, .keras) that is not there: one line saying how to get it."""
    if model and Path(model).suffix in (".onnx", ".h5", ".keras") and not Path(model).exists():
        raise UserError(f"{model} not found: {_missing_model_advice(Path(model), params)}")


def _missing_model_advice(path: Path, params: Params | None) -> str:
    """Train or fetch it, where it is the project's file of a model in params."""
    for name in params.models if params is not None else ():
        if path.resolve() == params.paths.model_file(name).resolve():
            return (f"train it (`dvc repro train@{name}`) or fetch it from the DVC remote "
                    f"(`dvc pull train@{name}`)")
        if path.resolve() == (params.paths.onnx_dir(name) / ONNX_FILE).resolve():
            return (f"export it (`dvc repro evaluate@{name}`) or fetch it from the DVC remote "
                    f"(`dvc pull evaluate@{name}`)")
    return "pass --model with an existing ONNX or .h5 file, or an MLflow model URI"
