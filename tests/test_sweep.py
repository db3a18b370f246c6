"""`mnist-mlops sweep` with real processes: two workers share one PostgreSQL-backed study and
finish its trials once each; a worker SIGKILLed mid-trial leaves that trial failed (and
retried) and the other finishes the study; a clearly bad configuration is pruned before its
last epoch; tutorial 001's ablation grid visits exactly its nine configurations; every
trial is a nested MLflow run; `--apply` turns the best trial into a DVC experiment."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import load_params
from mnist_mlops.data.dataset import folds_csv, save_dataset
from mnist_mlops.sweep import space
from mnist_mlops.sweep.settings import as_params, sweep_params
from mnist_mlops.sweep.study import storage_url

from .conftest import ROOT, Spawned, run, synthetic_digits, synthetic_project, tool_env
from .needs import need
from .postgres import cluster

pytestmark = pytest.mark.slow   # real training, processes and databases

CLI = str(Path(sys.executable).parent / "mnist-mlops")
TRIAL_LINE = re.compile(r"sweep\.study: trial (\d+): ")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# The prune study: two good recipes, then one that cannot learn in 4 epochs
PRUNE = {"sampler": "grid", "pruner": "median", "max_epochs": 4, "variants": {
    "good": {}, "good-lr": {"learning_rate": 0.002},
    "bad": {"optimizer": "sgd", "learning_rate": 1.0e-7}}}
APPLY = {"sampler": "grid", "pruner": "none", "variants": {   # the second clearly wins
    "stuck": {"optimizer": "sgd", "learning_rate": 1.0e-7}, "learns": {"learning_rate": 0.002}}}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder holding what parse and preprocess write (tiny synthetic digits, two
    folds) and params with the repo's sweeps, plus the prune study."""
    root = tmp_path_factory.mktemp("sweep") / "project"
    x, y = synthetic_digits(400, seed=1)
    xt, yt = synthetic_digits(50, seed=2)
    save_dataset({"x_train": x, "y_train": y, "x_test": xt, "y_test": yt},
                 root / "data" / "interim" / "mnist.npz")
    (root / "data" / "processed").mkdir(parents=True)
    idx = np.arange(len(y))
    (root / "data" / "processed" / "folds.csv").write_text(folds_csv(idx, y, idx % 2))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # seed 42: the prune grid's seeded order runs "bad" third, after two finished trials
    raw["train"].update(max_epochs=None, verbose=0, seed=42)
    raw["sweep"]["mlp_512x2"]["max_epochs"] = 1
    raw["sweep"]["cnn_28_dense128"].update(max_epochs=2, pruner="none")
    raw["sweep"]["fc_1024_512"] = PRUNE
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["sweep"]["cnn_28_dense128"]["max_epochs"] = 6    # slow.yaml: time to kill mid-trial
    (root / "slow.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def postgres() -> Any:
    need("postgresql")      # skips without PostgreSQL; fails when CI is set
    with cluster(db="optuna") as url:
        yield url


def worker(root: Path, *args: str, params: str = "params.yaml") -> Spawned:
    return Spawned([CLI, "--params", params, "sweep", *args], root, tool_env())


def trials_run(w: Spawned) -> set[int]:
    return {int(m.group(1)) for m in TRIAL_LINE.finditer(w.output)}


def mlflow_runs(root: Path, study: str) -> tuple[Any, list[Any]]:
    """The study's parent run and its nested trial runs."""
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("mnist-mlops")
    (parent,) = client.search_runs([exp.experiment_id],
                                   f"tags.role = 'sweep' and tags.`optuna.study` = '{study}'")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children


def test_two_workers_share_a_postgres_study_and_run_each_trial_once(
        project: Path, postgres: str) -> None:
    args = ["cnn_28_dense128", "--study", "shared", "--storage", postgres, "--n-trials", "3",
            "--heartbeat", "1"]
    a, b = worker(project, *args), worker(project, *args)
    assert a.wait(300) == 0, a.output[-3000:]
    assert b.wait(300) == 0, b.output[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage_url(postgres))
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 3, [t.state for t in study.trials]
    ran_a, ran_b = trials_run(a), trials_run(b)
    assert ran_a and ran_b and not ran_a & ran_b, (ran_a, ran_b)   # shared, none twice
    assert ran_a | ran_b == {t.number for t in finished}
    assert len({str(sorted(t.params.items())) for t in finished}) == 3   # each its own

    parent, children = mlflow_runs(project, "shared")
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == sorted(ran_a | ran_b)
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["optuna.state"] == "COMPLETE"
        assert "model.learning_rate" in c.data.params and "val_accuracy" in c.data.metrics
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3


def test_a_worker_killed_mid_trial_fails_that_trial_and_the_other_finishes(
        project: Path, postgres: str) -> None:
    args = ["cnn_28_dense128", "--study", "killed", "--storage", postgres, "--n-trials", "3",
            "--heartbeat", "1"]
    a, b = worker(project, *args, params="slow.yaml"), worker(project, *args, params="slow.yaml")
    try:
        a.wait_for_line("epoch 1/6", timeout=240)
        os.kill(a.proc.pid, signal.SIGKILL)          # mid-trial: five epochs to go
        a.wait(30)
        assert b.wait(300) == 0, b.output[-3000:]
    finally:
        a.kill()
        b.kill()
    (killed,) = trials_run(a)
    study = optuna.load_study(study_name="killed", storage=storage_url(postgres))
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == optuna.trial.TrialState.FAIL, states
    assert len(study.get_trials(states=FINISHED)) == 3, states
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.number in trials_run(b)
    assert retry.params == study.trials[killed].params
    assert "stopped beating" in b.output

    _, children = mlflow_runs(project, "killed")
    (dead,) = [c for c in children if c.data.tags["optuna.trial"] == str(killed)]
    assert (dead.info.status, dead.data.tags["optuna.state"]) == ("FAILED", "FAIL")


def test_a_clearly_bad_configuration_is_pruned_before_its_last_epoch(project: Path) -> None:
    storage = f"sqlite:///{project}/prune.db"
    run([CLI, "sweep", "fc_1024_512", "--storage", storage], project, timeout=600)
    study = optuna.load_study(study_name="sweep-fc_1024_512", storage=storage)
    by_variant = {t.params["variant"]: t for t in study.trials}
    assert by_variant["good"].state == by_variant["good-lr"].state == FINISHED[0]
    bad = by_variant["bad"]
    assert bad.number == 2, "the grid's order changed: the bad trial must come third"
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert max(bad.intermediate_values) < 4 <= max(by_variant["good"].intermediate_values)

    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    parent, children = mlflow_runs(project, "sweep-fc_1024_512")
    (pruned,) = [c for c in children if c.data.tags["optuna.state"] == "PRUNED"]
    assert len(client.get_metric_history(pruned.info.run_id, "val_accuracy")) < 4
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/optimization_history.png", "study/trials.csv"} <= files


def test_the_ablation_grid_visits_exactly_its_nine_configurations(project: Path) -> None:
    storage = f"sqlite:///{project}/ablation.db"
    out = run([CLI, "sweep", "mlp_512x2", "--storage", storage], project, timeout=600).stdout
    study = optuna.load_study(study_name="sweep-mlp_512x2", storage=storage)
    variants = [t.params["variant"] for t in study.trials]
    assert sorted(variants) == sorted(sweep_params(load_params(project / "params.yaml"))
                                      ["mlp_512x2"].variants)
    assert len(variants) == 9 and all(t.state == FINISHED[0] for t in study.trials)
    assert "train it through the pipeline: dvc exp run -n sweep-mlp_512x2-trial-" in out
    parent, children = mlflow_runs(project, "sweep-mlp_512x2")
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == list(range(9))
    wide = next(t.number for t in study.trials if t.params["variant"] == "units-2048")
    (wide_run,) = [c for c in children if c.data.tags["optuna.trial"] == str(wide)]
    assert wide_run.data.params["model.hidden_units"] == "2048,2048"   # the trial's own recipe
    files = {f.path for f in MlflowClient(f"sqlite:///{project}/mlflow.db").list_artifacts(
        parent.info.run_id, "study")}
    assert files == {"study/optimization_history.png", "study/param_importances.png",
                     "study/trials.csv"}


def test_apply_makes_the_best_trial_a_dvc_experiment(tmp_path: Path) -> None:
    root, env = synthetic_project(tmp_path / "project", sweep={"mlp_512x2": APPLY})
    missing = run([CLI, "sweep", "mlp_512x2"], root, env, check=False)
    assert missing.returncode == 2 and "dvc repro preprocess" in missing.stderr
    run(["dvc", "repro", "preprocess"], root, env)
    out = run([CLI, "sweep", "mlp_512x2", "--apply", "--queue"], root, env).stdout
    study = optuna.load_study(study_name="sweep-mlp_512x2",
                              storage=f"sqlite:///{root}/optuna.db")
    assert study.best_trial.params == {"variant": "learns"}, out
    name = f"sweep-mlp_512x2-trial-{study.best_trial.number}"
    assert f"dvc exp run -n {name} --queue -S models.mlp_512x2.learning_rate=0.002" in out
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or []) for e in e["revs"]]
    (queued,) = [e for e in exps if e.get("name") == name]
    recipe = queued["data"]["params"]["params.yaml"]["data"]["models"]["mlp_512x2"]
    workspace = load_params(root / "params.yaml").model("mlp_512x2")   # left as it was
    queued_recipe = type(workspace).model_validate({**as_params(recipe), "name": "mlp_512x2"})
    assert queued_recipe == space.recipe(workspace, {"learning_rate": 0.002})
    assert workspace.learning_rate != 0.002
