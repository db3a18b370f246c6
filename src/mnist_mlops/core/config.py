"""Typed, validated view of ``params.yaml``: the one place parameters are read.

Every section is a frozen dataclass. Unknown keys and bad values fail at load time with a
message naming the offending key, so a typo in ``dvc exp run -S`` never trains silently
with a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mnist_mlops.core.runtime import UserError

DEFAULT_PARAMS = Path("params.yaml")
INPUT_SHAPE = (28, 28, 1)     # what every model takes: raw 0-255 pixels
NUM_CLASSES = 10

Scaling = Literal["centered", "unit", "none"]
Loss = Literal["categorical", "sparse"]
Optimizer = Literal["adam", "rmsprop", "sgd"]
Activation = Literal["relu", "linear", "tanh", "sigmoid", "elu", "gelu"]
FoldStrategy = Literal["stratified", "contiguous"]
FinalModel = Literal["refit", "best_fold", "ensemble"]
LrSchedule = Literal["constant", "cosine"]
JitCompile = Literal["auto", True, False]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What params must say about an architecture (the layers themselves are in models.py,
    which imports Keras; this table does not, so loading params stays light)."""

    n_hidden: int          # how many sizes `hidden_units` must list
    has_dropout: bool      # whether `dropout` applies
    params: int            # parameter count at the tutorial's settings (the spec)


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "fc_1024_512": ArchitectureSpec(2, True, 1_333_770),
    "lenet_28_50": ArchitectureSpec(1, False, 1_266_288),
    "mlp_512x2": ArchitectureSpec(2, True, 669_706),
    "cnn_32_64_64": ArchitectureSpec(1, False, 93_322),
    "cnn_28_dense128": ArchitectureSpec(1, True, 607_394),
    "cnn_deep_dropout": ArchitectureSpec(1, True, 370_026),
    "cnn_bn_aug": ArchitectureSpec(1, True, 326_826),  # the project's own (README),
}


class ConfigError(UserError, ValueError):
    """params.yaml (or an override) is invalid; the message says which key and why."""


@dataclass(frozen=True)
class Paths:
    raw: Path
    dataset: Path
    folds: Path
    models: Path
    train_reports: Path
    metrics: Path
    eval_reports: Path
    registry: Path
    checkpoints: Path = Path(".checkpoints")
    realworld: Path = Path("data/realworld")
    user_digits: Path = Path("data/user-digits")

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


@dataclass(frozen=True)
class DownloadParams:
    mirrors: tuple[str, ...]
    files: dict[str, str]
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        _check(self.retries >= 1, "download.retries", "must be at least 1")
        _check(self.backoff_s >= 0, "download.backoff_s", "must be >= 0")
        _check(self.timeout_s > 0, "download.timeout_s", "must be > 0")
        for name, digest in self.files.items():
            ok = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
            _check(ok, f"download.files.{name}", "must be a 64-digit lowercase SHA-256")


@dataclass(frozen=True)
class PreprocessParams:
    folds: int = 4
    strategy: FoldStrategy = "stratified"
    seed: int = 42
    subset: int | None = None

    def __post_init__(self) -> None:
        _check(2 <= self.folds <= 20, "preprocess.folds", "must be between 2 and 20")
        if self.subset is not None:
            _check(self.subset >= 10 * self.folds, "preprocess.subset",
                   f"must be null or at least 10 x folds ({10 * self.folds})")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    deterministic: bool = True
    final: FinalModel = "refit"
    max_epochs: int | None = None
    mixed_precision: bool = False
    xla: JitCompile = "auto"      # compile train steps: "auto" = JAX only (backend.py)
    steps_per_execution: int = 32  # train steps per backend call: same math, less overhead
    data_parallel: bool = True     # several accelerators (JAX backend): split every batch
    verbose: int = 2

    def __post_init__(self) -> None:
        if self.max_epochs is not None:
            _check(self.max_epochs >= 1, "train.max_epochs", "must be null or >= 1")
        _check(self.steps_per_execution >= 1, "train.steps_per_execution", "must be >= 1")
        _check(self.verbose in (0, 1, 2), "train.verbose", "must be 0, 1 or 2")


@dataclass(frozen=True)
class MlflowParams:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "mnist-mlops"
    registered_model: str = "mnist-digits"
    outage_wait_s: float = 60.0

    def __post_init__(self) -> None:
        _check(self.outage_wait_s >= 0, "mlflow.outage_wait_s", "must be >= 0")

    def resolved_tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI wins, as MLflow itself defines; else the param, with a relative
        SQLite path made absolute against the project (also from a DVC temp workspace)."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            from mnist_mlops.core.fsio import project_root

            return f"{prefix}{project_root() / uri[len(prefix):]}"
        return uri


@dataclass(frozen=True)
class RegisterParams:
    """The promotion gate (gate.py)."""

    margin: float = 0.001
    floor: float = 0.9
    alpha: float = 0.05              # McNemar significance level for an improvement
    realworld_margin: float = 0.01   # how much worse on the real-world set is tolerated

    def __post_init__(self) -> None:
        _check(0 <= self.margin < 1, "register.margin", "must be in [0, 1)")
        _check(0 <= self.floor <= 1, "register.floor", "must be in [0, 1]")
        _check(0 < self.alpha <= 1, "register.alpha", "must be in (0, 1]")
        _check(0 <= self.realworld_margin <= 1, "register.realworld_margin",
               "must be in [0, 1]")


@dataclass(frozen=True)
class RealworldParams:
    """The generated real-world-like test set (realworld.py)."""

    count: int = 1000
    seed: int = 7

    def __post_init__(self) -> None:
        _check(self.count >= NUM_CLASSES and self.count % NUM_CLASSES == 0,
               "realworld.count", f"must be a positive multiple of {NUM_CLASSES}")


@dataclass(frozen=True)
class ModelParams:
    """One architecture with its training recipe; `name` is the key under `models:`."""

    name: str
    architecture: str
    scaling: Scaling
    loss: Loss
    optimizer: Optimizer
    learning_rate: float
    batch_size: int
    epochs: int
    hidden_units: tuple[int, ...]
    dropout: float | None = None
    activation: Activation = "relu"
    lr_schedule: LrSchedule = "constant"   # cosine: from learning_rate down to 0 by the last step
    final: FinalModel | None = None        # this model's final model; null = train.final

    def __post_init__(self) -> None:
        where = f"models.{self.name}"
        _check(self.architecture in ARCHITECTURES, f"{where}.architecture",
               f"unknown architecture {self.architecture!r}; "
               f"known: {', '.join(sorted(ARCHITECTURES))}")
        _check(self.learning_rate > 0, f"{where}.learning_rate", "must be > 0")
        _check(self.batch_size >= 1, f"{where}.batch_size", "must be >= 1")
        _check(self.epochs >= 1, f"{where}.epochs", "must be >= 1")
        arch = ARCHITECTURES[self.architecture]
        if arch.has_dropout:
            _check(self.dropout is not None and 0 <= self.dropout < 1, f"{where}.dropout",
                   f"must be in [0, 1) for {self.architecture}")
        else:
            _check(self.dropout is None, f"{where}.dropout",
                   f"does not apply: {self.architecture} has no dropout layer; remove it")
        _check(all(u >= 1 for u in self.hidden_units), f"{where}.hidden_units",
               "every entry must be >= 1")
        expected = arch.n_hidden
        _check(len(self.hidden_units) == expected, f"{where}.hidden_units",
               f"{self.architecture} takes {expected} hidden layer size(s), "
               f"got {len(self.hidden_units)}")

    def effective_epochs(self, train: TrainParams) -> int:
        return min(self.epochs, train.max_epochs) if train.max_epochs else self.epochs

    def final_model(self, train: TrainParams) -> FinalModel:
        """What ships: the recipe's own choice if it makes one, else `train.final`."""
        return self.final or train.final


@dataclass(frozen=True)
class Params:
    paths: Paths
    download: DownloadParams
    preprocess: PreprocessParams
    train: TrainParams
    mlflow: MlflowParams
    register: RegisterParams
    realworld: RealworldParams = field(default_factory=RealworldParams)
    models: dict[str, ModelParams] = field(default_factory=dict)

    def model(self, name: str) -> ModelParams:
        if name not in self.models:
            raise ConfigError(
                f"unknown model {name!r}; params.yaml defines: {', '.join(self.models)}"
            )
        return self.models[name]


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"params: {key} {problem}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):   # 1 is not True
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"params: {key} is {value!r}; expected one of {allowed}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"params: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"params: {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"params: {key} must be a non-empty path string")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"params: {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"params: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r} for {key}")  # programming error


def _build(cls: type, data: Any, key: str, **extra: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"params: {key} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - set(extra))
    if unknown:
        raise ConfigError(
            f"params: unknown key {key}.{unknown[0]}; allowed keys under {key}: "
            f"{', '.join(n for n in fields if n not in extra)}"
        )
    kwargs: dict[str, Any] = dict(extra)
    for name, f in fields.items():
        if name in extra:
            continue
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{key}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params: missing required key {key}.{name}")
    return cls(**kwargs)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from YAML) into `Params`."""
    if not isinstance(raw, dict):
        raise ConfigError("params: the file must hold a mapping of sections")
    sections = {
        "paths": Paths, "download": DownloadParams, "preprocess": PreprocessParams,
        "train": TrainParams, "mlflow": MlflowParams, "register": RegisterParams,
        "realworld": RealworldParams,
    }
    unknown = sorted(set(raw) - set(sections) - {"models"})
    if unknown:
        raise ConfigError(
            f"params: unknown top-level key {unknown[0]!r}; allowed: "
            f"{', '.join([*sections, 'models'])}"
        )
    built = {}
    for name, cls in sections.items():
        if name not in raw and name == "paths":
            raise ConfigError("params: missing required section 'paths'")
        built[name] = _build(cls, raw.get(name) or {}, name)
    models_raw = raw.get("models") or {}
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError("params: 'models' must map at least one model name to its recipe")
    models = {
        str(n): _build(ModelParams, spec, f"models.{n}", name=str(n))
        for n, spec in models_raw.items()
    }
    return Params(models=models, **built)


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
