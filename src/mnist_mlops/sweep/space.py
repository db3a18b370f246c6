"""One model's search space (params `sweep.<model>`) as Optuna sees it, and back.

A trial's values become recipe changes (`changes`), the recipe they make is validated by
the same model as params.yaml's own (`recipe`), and the same changes become the `-S`
overrides of the DVC experiment that trains the winner (`dvc_overrides`,
`experiment_command`). Optuna stores
only numbers, strings, booleans and None: a list of sizes (`hidden_units`) travels as the
string "128,128" and is decoded here.
"""

from __future__ import annotations

import re
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from mnist_mlops.core.config import ConfigError, ModelParams, TrainParams
from mnist_mlops.core.overrides import dvc_args
from mnist_mlops.sweep.settings import Choices, Range, SweepParams, as_params

VARIANT = "variant"     # the one parameter of a variants grid: the variant's name


def encode(value: Any) -> Any:
    """A choice as Optuna can store it: a list of sizes as 'a,b'."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple | list) else value


def decode(key: str, value: Any) -> Any:
    if key == "hidden_units" and isinstance(value, str):
        return tuple(int(v) for v in value.split(","))
    return value


def grid(spec: SweepParams) -> dict[str, list[Any]]:
    """The grid GridSampler walks: the variants' names, or every choice of every key."""
    if spec.variants:
        return {VARIANT: list(spec.variants)}
    return {k: [encode(c) for c in d.choices] for k, d in spec.space.items()
            if isinstance(d, Choices)}


def sampler(spec: SweepParams, seed: int, joined: bool = False
            ) -> optuna.samplers.BaseSampler:
    """TPE by default (Optuna 5's constant liar: workers steer clear of each other's running
    trials); the grid visits every point once, in an order seeded alike in every worker.
    TPE and random: the study's creator samples from `seed`, a worker that joins from a seed
    of its own (one seed would make every worker try the same configurations)."""
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(grid(spec), seed=seed)
    own = None if joined else seed
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=own)
    return optuna.samplers.TPESampler(seed=own)


def pruner(spec: SweepParams, epochs: int) -> optuna.pruners.BasePruner:
    """Median: stop a trial below the median of earlier trials at the same epoch (after the
    first epoch and two finished trials); Hyperband: successive halving over the epochs."""
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, spec: SweepParams) -> dict[str, Any]:
    """The recipe changes this trial tries."""
    if spec.variants:
        name = trial.suggest_categorical(VARIANT, list(spec.variants))
        return as_params(spec.variants[str(name)])
    changes: dict[str, Any] = {}
    for key, dim in spec.space.items():
        if isinstance(dim, Range) and dim.integer:
            changes[key] = trial.suggest_int(key, int(dim.low), int(dim.high),
                                             step=int(dim.step or 1), log=dim.log)
        elif isinstance(dim, Range):
            changes[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step,
                                               log=dim.log)
        else:
            changes[key] = decode(key, trial.suggest_categorical(
                key, [encode(c) for c in dim.choices]))
    return changes


def changes_of(params: dict[str, Any], spec: SweepParams) -> dict[str, Any]:
    """The recipe changes of a finished trial, from its stored params."""
    if spec.variants:
        return as_params(spec.variants[str(params[VARIANT])])
    return {k: decode(k, v) for k, v in params.items()}


def recipe(base: ModelParams, changes: dict[str, Any]) -> ModelParams:
    """The recipe with the trial's changes, validated as params.yaml's recipes are."""
    try:
        return ModelParams.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigError(f"sweep of {base.name}: the changes {changes} make an invalid "
                          f"recipe: {err['msg'].removeprefix('Value error, ')}") from None


def train_params(tp: TrainParams, spec: SweepParams) -> TrainParams:
    """The train params of a trial: the sweep's epoch cap, if any, on top of train's own."""
    if spec.max_epochs is None:
        return tp
    cap = min(spec.max_epochs, tp.max_epochs) if tp.max_epochs else spec.max_epochs
    return tp.model_copy(update={"max_epochs": cap})


def dvc_overrides(model: str, changes: dict[str, Any]) -> list[str]:
    """`-S` arguments that set the changes on the model's recipe in params.yaml."""
    return dvc_args({f"models.{model}.{key}": value for key, value in sorted(changes.items())})


def experiment_command(study: optuna.Study, model: str, spec: SweepParams, queue: bool
                       ) -> list[str] | None:
    """`dvc exp run` with the best trial's changes to the recipe; None before any trial
    completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{study.study_name}-trial-{best.number}")
    return ["dvc", "exp", "run", "-n", name, *(["--queue"] if queue else []),
            *dvc_overrides(model, changes_of(best.params, spec))]
