"""The `sweep:` section of params.yaml: per model, the search `mnist-mlops sweep` runs.

A search is over the model's own recipe params (the keys of `models.<name>`), declared
either as ranges and choices (`space:`, sampled by TPE, or a full grid when every entry is
a list of choices) or as named variants of the recipe (`variants:`, a grid of exactly those
configurations, as tutorial 001's ablation). Strict like every section (core/config.py),
and checked here rather than by the pipeline's schema: no stage reads it, so editing it
reruns no stage. `sweep_params` then validates every variant as the recipe it makes, with
the recipe's own model (ModelParams), so a sweep never starts on a configuration `train`
would refuse.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from mnist_mlops.core.config import ConfigError, Params, Section
from mnist_mlops.core.config_errors import one_line

# The recipe params a search may set: what a `dvc exp run -S models.<name>.<key>` may set.
TUNABLE = ("scaling", "loss", "optimizer", "learning_rate", "batch_size", "epochs",
           "hidden_units", "dropout", "activation", "lr_schedule", "final")
Scalar = bool | int | float | str | None
Choice = Scalar | tuple[int, ...]     # hidden_units' choices are lists of sizes


class Range(Section):
    """A number between `low` and `high`: integers when both are integers (then `step`,
    default 1), else floats; `log` samples on a log scale (learning rates)."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError("@high must be greater than low")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("@log needs low > 0 and no step")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and (
            self.step is None or isinstance(self.step, int))


class Choices(Section):
    """One of these values (a list of sizes for `hidden_units`)."""

    choices: tuple[Choice, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("choices"), list):
            return {**data, "choices": tuple(tuple(c) if isinstance(c, list) else c
                                             for c in data["choices"])}
        return data


class SweepParams(Section):
    """One model's search: its space (or variants), budget, sampler and pruner."""

    sampler: Literal["tpe", "grid", "random"] = "tpe"   # grid: every point once
    pruner: Literal["median", "hyperband", "none"] = "median"
    n_trials: int | None = Field(None, ge=1)   # finished trials (all workers); grid: its size
    timeout_s: float | None = Field(None, gt=0)   # per worker: start no trial after this
    folds: int = Field(1, ge=1)     # folds each trial validates on (the first n of folds.csv)
    max_epochs: int | None = Field(None, ge=1)   # cap on a trial's epochs; null = the recipe's
    space: dict[str, Range | Choices] = {}
    variants: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _one_kind_of_space(self) -> SweepParams:
        if bool(self.space) == bool(self.variants):
            raise ValueError("@space give either space: (ranges and choices) or variants: "
                             "(named recipe changes), not both nor neither")
        for key in [*self.space, *(k for v in self.variants.values() for k in v)]:
            if key not in TUNABLE:
                raise ValueError(f"@space {key!r} is not a recipe param a sweep may set; "
                                 f"allowed: {', '.join(TUNABLE)}")
        if self.variants and self.sampler != "grid":
            raise ValueError("@sampler variants are a grid: set sampler: grid")
        if self.sampler == "grid" and any(isinstance(d, Range) for d in self.space.values()):
            raise ValueError("@sampler a grid needs choices: for every entry of space:")
        if self.sampler != "grid" and self.n_trials is None and self.timeout_s is None:
            raise ValueError("@n_trials set n_trials or timeout_s (or both)")
        return self

    def grid_size(self) -> int:
        if self.variants:
            return len(self.variants)
        size = 1
        for d in self.space.values():
            size *= len(d.choices) if isinstance(d, Choices) else 0
        return size


class Sweeps(Section):
    """The whole `sweep:` section: one search per model (the root its errors are named
    from)."""

    sweep: dict[str, SweepParams] = {}


def sweep_params(params: Params) -> dict[str, SweepParams]:
    """The `sweep:` section of `params`, validated; every sweep names a model under
    `models:`, and every variant is a valid recipe (ConfigError naming the key)."""
    try:
        sweeps = Sweeps.model_validate({"sweep": params.sweep}).sweep
    except ValidationError as exc:
        raise ConfigError(one_line(exc, Sweeps)) from None
    for name, sweep in sweeps.items():
        if name not in params.models:
            raise ConfigError(f"params: sweep.{name} names no model under models: "
                              f"(defined: {', '.join(params.models)})")
        base = params.models[name]
        for variant, changes in sweep.variants.items():
            try:
                type(base).model_validate({**base.model_dump(), **as_params(changes)})
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ConfigError(f"params: sweep.{name}.variants.{variant} makes an invalid "
                                  f"recipe: {where} "
                                  f"{err['msg'].removeprefix('Value error, ')}") from None
    return sweeps


def as_params(changes: dict[str, Any]) -> dict[str, Any]:
    """YAML lists as the tuples the recipe holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
