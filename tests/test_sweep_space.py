"""The `sweep:` params and the search space: strict validation with one-line errors, a
trial's values as a valid recipe and back, and the winner's `-S` overrides as DVC applies
them (its own function), giving exactly the trial's recipe."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from mnist_mlops.core.config import ConfigError, load_params, parse_params
from mnist_mlops.sweep import space
from mnist_mlops.sweep.settings import sweep_params

from .conftest import ROOT


def raw_params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_sweep(model: str, sweep: dict[str, Any]) -> dict[str, Any]:
    raw = raw_params()
    raw["sweep"] = {model: sweep}
    return raw


@pytest.mark.parametrize(("model", "sweep", "message"), [
    ("nope", {"variants": {"a": {}}, "sampler": "grid"}, "sweep.nope names no model"),
    ("cnn_32_64_64", {"sampler": "grid", "variants": {"drop": {"dropout": 0.2}}},
     "sweep.cnn_32_64_64.variants.drop makes an invalid recipe"),
    ("mlp_512x2", {"sampler": "grid", "space": {"dropout": {"low": 0.0, "high": 0.5}}},
     "a grid needs choices"),
    ("mlp_512x2", {"n_trials": 3, "space": {"architecture": {"choices": ["x"]}}},
     "'architecture' is not a recipe param"),
    ("mlp_512x2", {"n_trials": 3, "space": {"dropout": {"low": 0.5, "high": 0.1}}},
     "high must be greater than low"),
    ("mlp_512x2", {"space": {"dropout": {"low": 0.0, "high": 0.5}}}, "set n_trials or"),
    ("mlp_512x2", {"n_trials": 2, "variants": {"a": {}}}, "variants are a grid"),
    ("mlp_512x2", {"n_trials": 2, "space": {"dropout": {"low": 0.0, "hihg": 0.5}}},
     "sweep.mlp_512x2.space.dropout"),
])
def test_a_bad_sweep_is_one_line_naming_its_key(model: str, sweep: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=r"^params: ") as exc:
        sweep_params(parse_params(with_sweep(model, sweep)))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_ablation_grid_is_tutorial_001s_nine_configurations() -> None:
    params = load_params(ROOT / "params.yaml")
    spec, base = sweep_params(params)["mlp_512x2"], params.model("mlp_512x2")
    assert spec.sampler == "grid" and spec.grid_size() == 9
    recipes = {name: space.recipe(base, space.changes_of({"variant": name}, spec))
               for name in space.grid(spec)["variant"]}
    assert recipes["baseline"] == base
    assert recipes["units-2048"].hidden_units == (2048, 2048)
    assert (recipes["sgd"].optimizer, recipes["sgd"].learning_rate) == ("sgd", 0.01)
    assert len({r.model_dump_json() for r in recipes.values()}) == 9   # all different


def test_a_trials_values_make_a_valid_recipe_and_come_back_from_storage() -> None:
    params = load_params(ROOT / "params.yaml")
    spec, base = sweep_params(params)["cnn_28_dense128"], params.model("cnn_28_dense128")
    study = optuna.create_study(sampler=space.sampler(spec, seed=0), direction="maximize")
    seen = set()
    for _ in range(12):
        trial = study.ask()
        changes = space.suggest(trial, spec)
        p = space.recipe(base, changes)
        assert 1e-4 <= p.learning_rate <= 1e-2 and p.hidden_units in {(64,), (128,), (256,)}
        assert space.changes_of(trial.params, spec) == changes   # as stored, decoded
        study.tell(trial, 0.5)
        seen.add(p.hidden_units)
    assert len(seen) > 1


def test_an_invalid_trial_recipe_is_a_config_error() -> None:
    base = load_params(ROOT / "params.yaml").model("cnn_32_64_64")   # has no dropout
    with pytest.raises(ConfigError, match="invalid recipe"):
        space.recipe(base, {"dropout": 0.3})


def test_the_winners_overrides_make_exactly_its_recipe_in_params_yaml(tmp_path: Path) -> None:
    from dvc.utils.hydra import apply_overrides

    model = "cnn_28_dense128"
    changes = {"learning_rate": 1.2e-05, "dropout": 0.0, "hidden_units": (256,),
               "batch_size": 64, "optimizer": "rmsprop", "activation": "elu"}
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    args = space.dvc_overrides(model, changes)
    assert args[::2] == ["-S"] * len(changes)
    apply_overrides(path, args[1::2])                  # what `dvc exp run -S` does
    after = load_params(path)
    assert after.model(model) == space.recipe(load_params(ROOT / "params.yaml").model(model),
                                              changes)


@pytest.mark.parametrize(("args", "message"), [
    (["lenet_28_50"], "params.yaml has no sweep for 'lenet_28_50'"),
    (["mlp_512x2", "--queue"], "--queue goes with --apply"),
])
def test_the_command_refuses_what_it_cannot_run_in_one_line(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_mlops.commands import main

    # a store of this test's own (mlflow.set_tracking_uri in an earlier test of this
    # process sets MLFLOW_TRACKING_URI, which the commands follow)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")

    assert main(["--params", str(ROOT / "params.yaml"), "sweep", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-mlops sweep: error: ") and message in err
    assert err.count("\n") == 1


def test_budget_sampler_and_pruner_follow_the_params() -> None:
    from mnist_mlops.sweep.study import Sweep

    raw = raw_params()
    raw["sweep"]["cnn_28_dense128"].update(n_trials=None, timeout_s=600.0, pruner="hyperband")
    params = parse_params(raw)
    grid, tpe = (Sweep(params, m, "s") for m in ("mlp_512x2", "cnn_28_dense128"))
    assert grid.budget() == 9 and Sweep(params, "mlp_512x2", "s", n_trials=4).budget() == 4
    assert tpe.budget() == float("inf")          # a time budget only
    assert isinstance(space.sampler(grid.spec, 0), optuna.samplers.GridSampler)
    assert isinstance(space.sampler(tpe.spec, 0), optuna.samplers.TPESampler)
    assert isinstance(space.pruner(tpe.spec, 10), optuna.pruners.HyperbandPruner)
    assert isinstance(space.pruner(grid.spec, 10), optuna.pruners.NopPruner)
    spec = sweep_params(params)["mlp_512x2"].model_copy(update={"max_epochs": 5})
    capped = space.train_params(params.train.model_copy(update={"max_epochs": 3}), spec)
    assert capped.max_epochs == 3                # the lower of the two caps


def test_workers_joining_a_study_sample_their_own_configurations() -> None:
    spec = sweep_params(load_params(ROOT / "params.yaml"))["cnn_28_dense128"]

    def first(joined: bool) -> dict[str, Any]:
        study = optuna.create_study(sampler=space.sampler(spec, 42, joined),
                                    direction="maximize")
        trial = study.ask()
        space.suggest(trial, spec)
        return trial.params

    assert first(False) == first(False)          # the creator repeats itself exactly
    assert first(True) != first(True)            # two joiners do not repeat each other
