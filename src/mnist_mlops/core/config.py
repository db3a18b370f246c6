"""Typed, validated view of ``params.yaml``: the one place parameters are read.

Every section is a strict, frozen pydantic model that rejects unknown keys, so a typo in
``dvc exp run -S`` never trains silently with a default, and YAML's `1` is not `true`. A
bad value fails at load time with one line naming its key path (``models.mlp_512x2.dropout``)
and what is allowed; ``mnist-mlops params --schema`` prints the whole schema.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from mnist_mlops.core.config_errors import one_line
from mnist_mlops.core.fsio import project_sqlite_url
from mnist_mlops.core.mnist import NUM_CLASSES
from mnist_mlops.core.runtime import UserError

DEFAULT_PARAMS = Path("params.yaml")

Scaling = Literal["centered", "unit", "none"]
Loss = Literal["categorical", "sparse"]
Optimizer = Literal["adam", "rmsprop", "sgd"]
Activation = Literal["relu", "linear", "tanh", "sigmoid", "elu", "gelu"]
FoldStrategy = Literal["stratified", "contiguous"]
FinalModel = Literal["refit", "best_fold", "ensemble"]
LrSchedule = Literal["constant", "cosine"]
JitCompile = Literal["auto", True, False]
# auto: bfloat16 where measured faster at the same accuracy; true: the device's half type
# (training/backend.py half_type)
MixedPrecision = Literal["auto", False, True, "float16", "bfloat16"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What params must say about an architecture (the layers themselves are in models.py,
    which imports Keras; this table does not, so loading params stays light)."""

    n_hidden: int          # how many sizes `hidden_units` must list
    has_dropout: bool      # whether `dropout` applies
    params: int            # parameter count at the tutorial's settings (docs/architectures.md)


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "fc_1024_512": ArchitectureSpec(2, True, 1_333_770),
    "lenet_28_50": ArchitectureSpec(1, False, 1_266_288),
    "mlp_512x2": ArchitectureSpec(2, True, 669_706),
    "cnn_32_64_64": ArchitectureSpec(1, False, 93_322),
    "cnn_28_dense128": ArchitectureSpec(1, True, 607_394),
    "cnn_deep_dropout": ArchitectureSpec(1, True, 370_026),
    "cnn_bn_aug": ArchitectureSpec(1, True, 326_826),  # the project's own
}


class ConfigError(UserError, ValueError):
    """params.yaml (or an override) is invalid; the message says which key and why."""


def _tuple(value: Any) -> Any:
    """YAML has lists, the params hold tuples (frozen): convert, then validate strictly."""
    return tuple(value) if isinstance(value, list) else value


def _sha256(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("must be a 64-digit lowercase SHA-256")
    return digest


def _nonempty_path(value: Any) -> Any:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("must be a non-empty path string")
    return Path(value)


def _exactly(*allowed: Any) -> BeforeValidator:
    """A choice compared by type too: YAML's `1` is not `true`, nor `true` the number 1."""
    def check(value: Any) -> Any:
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ValueError(f"is {value!r}; expected one of "
                             f"{', '.join(repr(a) for a in allowed)}")
        return value
    return BeforeValidator(check)


PathParam = Annotated[Path, BeforeValidator(_nonempty_path)]
Sizes = Annotated[tuple[Annotated[int, Field(ge=1)], ...], BeforeValidator(_tuple)]
Mirrors = Annotated[tuple[str, ...], BeforeValidator(_tuple)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
# the real-world set's kinds of picture (data/realworld.py renders all but `user`)
RealworldKind = Literal["photo", "scan", "marker", "thin", "slant", "drawn", "user"]
RealworldKinds = Annotated[tuple[RealworldKind, ...], BeforeValidator(_tuple),
                           Field(min_length=1)]


class Section(BaseModel):
    """A params section: strict types, frozen, unknown keys rejected."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class Paths(Section):
    raw: PathParam
    dataset: PathParam
    folds: PathParam
    models: PathParam
    train_reports: PathParam
    metrics: PathParam
    eval_reports: PathParam
    registry: PathParam
    checkpoints: PathParam = Path(".checkpoints")
    realworld: PathParam = Path("data/realworld")
    user_digits: PathParam = Path("data/user-digits")
    prediction_log: PathParam = Path("logs/predictions.jsonl")   # serve (monitoring/)
    monitor_reports: PathParam = Path("reports/monitor")   # mnist-mlops monitor
    onnx: PathParam = Path("models/onnx")   # <name>/model.onnx + parity.json (evaluate)

    def model_file(self, name: str) -> Path:
        return self.models / f"{name}.h5"

    def train_dir(self, name: str) -> Path:
        return self.train_reports / name

    def run_file(self, name: str) -> Path:
        """Where the train stage records model `name`'s MLflow run and model URI."""
        return self.train_dir(name) / "run.json"

    def eval_dir(self, name: str) -> Path:
        return self.eval_reports / name

    def metrics_file(self, name: str) -> Path:
        return self.metrics / f"{name}.json"

    def onnx_dir(self, name: str) -> Path:
        """Model `name` as ONNX and its parity check against Keras (evaluate writes both)."""
        return self.onnx / name


class DownloadParams(Section):
    mirrors: Mirrors
    files: dict[str, Sha256]
    retries: int = Field(3, ge=1)
    backoff_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(60.0, gt=0)


class PreprocessParams(Section):
    folds: int = Field(4, ge=2, le=20)
    strategy: FoldStrategy = "stratified"
    seed: int = 42
    subset: int | None = None

    @model_validator(mode="after")
    def _subset_fills_the_folds(self) -> PreprocessParams:
        if self.subset is not None and self.subset < 10 * self.folds:
            raise ValueError(f"@subset must be null or at least 10 x folds ({10 * self.folds})")
        return self


class RayParams(Section):
    """What each fit asks of the Ray cluster (train.executor: ray; training/ray_fits.py)."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_retries: int = Field(3, ge=0)   # a fit whose worker died runs again, this many times


class TrainParams(Section):
    seed: int = 42
    deterministic: bool = True
    final: FinalModel = "refit"
    max_epochs: int | None = Field(None, ge=1)
    mixed_precision: Annotated[MixedPrecision,
                               _exactly("auto", False, True, "float16", "bfloat16")] = False
    xla: Annotated[JitCompile, _exactly("auto", True, False)] = "auto"  # auto: JAX only
    steps_per_execution: int = Field(32, ge=1)  # train steps per backend call
    data_parallel: bool = True     # several accelerators (JAX backend): split every batch
    verbose: Annotated[Literal[0, 1, 2], _exactly(0, 1, 2)] = 2  # as Keras's (progress.py)
    executor: Literal["local", "ray"] = "local"   # where a stage's fits run (docs/ray.md)
    unsure_give_up: float = Field(0.05, ge=0, lt=1)  # right answers the unsure line may flag
    ray: RayParams = RayParams()


class MlflowParams(Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "mnist-mlops"
    registered_model: str = "mnist-digits"
    outage_wait_s: float = Field(60.0, ge=0)

    def resolved_tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI wins, as MLflow itself defines; else the param, with a relative
        SQLite path made absolute against the project (also from a DVC temp workspace)."""
        return project_sqlite_url(os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri)


class RegisterParams(Section):
    """The promotion gate (registry/gate.py)."""

    margin: float = Field(0.001, ge=0, lt=1)
    floor: float = Field(0.9, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, le=1)       # McNemar significance level
    realworld_margin: float = Field(0.01, ge=0, le=1)  # tolerated loss on the real-world set
    onnx: bool = True      # export each model as ONNX, checked against Keras (docs/serving.md)


class RealworldParams(Section):
    """The real-world-like test set (data/realworld.py): `count` renders of each generated
    kind, and the user's pictures where `user` is listed."""

    count: int = Field(500, ge=NUM_CLASSES, multiple_of=NUM_CLASSES)   # per generated kind
    seed: int = 7
    kinds: RealworldKinds = ("photo", "scan", "marker", "thin", "slant", "drawn", "user")

    @model_validator(mode="after")
    def _each_kind_once(self) -> RealworldParams:
        twice = sorted({k for k in self.kinds if self.kinds.count(k) > 1})
        if twice:
            raise ValueError(f"@kinds lists {', '.join(twice)} more than once")
        return self


class ModelParams(Section):
    """One architecture with its training recipe; `name` is its key under `models:`."""

    name: SkipJsonSchema[str]       # filled in from the key, never written in the file
    architecture: str
    scaling: Scaling
    loss: Loss
    optimizer: Optimizer
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    hidden_units: Sizes
    dropout: float | None = None
    activation: Activation = "relu"
    lr_schedule: LrSchedule = "constant"   # cosine: from learning_rate down to 0 by the last step
    final: FinalModel | None = None        # this model's final model; null = train.final
    mixed_precision: Annotated[MixedPrecision | None, _exactly(
        None, "auto", False, True, "float16", "bfloat16")] = None   # null = train's

    @model_validator(mode="after")
    def _fits_the_architecture(self) -> ModelParams:
        arch = ARCHITECTURES.get(self.architecture)
        if arch is None:
            raise ValueError(f"@architecture unknown architecture {self.architecture!r}; "
                             f"known: {', '.join(sorted(ARCHITECTURES))}")
        if arch.has_dropout and (self.dropout is None or not 0 <= self.dropout < 1):
            raise ValueError(f"@dropout must be in [0, 1) for {self.architecture}")
        if not arch.has_dropout and self.dropout is not None:
            raise ValueError(f"@dropout does not apply: {self.architecture} has no dropout "
                             "layer; remove it")
        if len(self.hidden_units) != arch.n_hidden:
            raise ValueError(f"@hidden_units {self.architecture} takes {arch.n_hidden} hidden "
                             f"layer size(s), got {len(self.hidden_units)}")
        return self


with warnings.catch_warnings():
    # the `register` section shadows ABCMeta.register, which params never use
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(Section):
        paths: Paths
        download: DownloadParams
        preprocess: PreprocessParams = PreprocessParams()
        train: TrainParams = TrainParams()
        mlflow: MlflowParams = MlflowParams()
        register: RegisterParams = RegisterParams()
        realworld: RealworldParams = RealworldParams()
        models: dict[str, ModelParams] = Field(min_length=1)
        # Read by commands, not by stages: checked by their own concern's schema
        # (monitoring/settings.py, sweep/settings.py), so that editing either schema
        # changes no stage's code (dvc.yaml).
        monitor: dict[str, Any] = {}
        sweep: dict[str, Any] = {}

        @model_validator(mode="before")
        @classmethod
        def _name_the_models(cls, data: Any) -> Any:
            """Each recipe's `name` is its key under `models:` (never written by hand); an empty
            section (`train:` alone) means its defaults."""
            if isinstance(data, dict):
                data = {k: {} if v is None and k != "models" else v for k, v in data.items()}
            if isinstance(data, dict) and isinstance(data.get("models"), dict):
                models = {}
                for key, spec in data["models"].items():
                    if isinstance(spec, dict) and "name" in spec:
                        raise ValueError(f"@models.{key}.name is not a key: a model's name is "
                                         "its key under models:")
                    models[key] = {**spec, "name": str(key)} if isinstance(spec, dict) else spec
                data = {**data, "models": models}
            return data

        def model(self, name: str) -> ModelParams:
            if name not in self.models:
                raise ConfigError(
                    f"unknown model {name!r}; params.yaml defines: {', '.join(self.models)}"
                )
            return self.models[name]


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from YAML) into `Params`."""
    if not isinstance(raw, dict):
        raise ConfigError("params: the file must hold a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, Params)) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raise ConfigError with a fix-it message on problems."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path} not found: run from the project root (where dvc.yaml is)"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)


def schema() -> dict[str, Any]:
    """The JSON schema of params.yaml (`mnist-mlops params --schema`)."""
    return Params.model_json_schema()
