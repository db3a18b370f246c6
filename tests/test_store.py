"""A copied project folder's embedded store opens with its artifacts after one command."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from .conftest import MlflowServer, run, synthetic_project, tool_env
from .drawing import draw_digit
from .test_train import write_tiny_project

pytestmark = pytest.mark.slow   # real training, processes or servers

CLI = str(Path(sys.executable).parent / "mnist-mlops")
MODEL = "cnn_28_dense128"


def test_copied_project_store_opens_with_its_artifacts(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.mkdir()
    write_tiny_project(original)
    run([sys.executable, "-m", "mnist_mlops.training.train", MODEL], original)   # default store
    copy = tmp_path / "elsewhere" / "project"
    shutil.copytree(original, copy)
    shutil.rmtree(original)                       # the old paths now lead nowhere

    env = tool_env()
    warned = run([CLI, "compare"], copy, env).stderr
    assert "run `mnist-mlops relocate-store`" in warned and str(original) in warned, warned
    out = run([CLI, "relocate-store"], copy, env).stdout
    assert int(out.split()[0]) >= 5                # experiment, runs, logged model
    assert run([CLI, "relocate-store"], copy, env).stdout.startswith("0 ")   # idempotent
    assert "relocate-store" not in run([CLI, "compare"], copy, env).stderr

    mlflow.set_tracking_uri(f"sqlite:///{copy}/mlflow.db")
    info = json.loads((copy / "reports" / "train" / MODEL / "run.json").read_text())
    cv = mlflow.artifacts.download_artifacts(run_id=info["run_id"],
                                             artifact_path="train/cv.json",
                                             dst_path=str(tmp_path / "dl"))
    assert json.loads(Path(cv).read_text())["final"] == "refit"
    model = mlflow.pyfunc.load_model(info["model_uri"])     # the train run's model (no register)
    proba = np.asarray(model.predict(np.zeros((2, 28, 28, 1), dtype=np.uint8)))
    assert proba.shape == (2, 10)


def recorded_texts(db: Path) -> list[str]:
    """Every text value of every table of a SQLite store (as `table.column: value`)."""
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [f"{t}.{c}: {v}" for t in tables
                for c in (r[1] for r in con.execute(f'PRAGMA table_info("{t}")'))
                for (v,) in con.execute(f'SELECT "{c}" FROM "{t}"')  # noqa: S608
                if isinstance(v, str)]


def test_relocated_store_of_a_temp_experiment_opens_after_the_original_is_gone(
        tmp_path: Path) -> None:
    """`make quick` runs `dvc exp run --temp`: MLflow creates the store's Default experiment
    inside DVC's temporary workspace, the project's experiment under the project itself."""
    original, env = synthetic_project(tmp_path / "original")
    run(["dvc", "exp", "run", "--temp", "-S", "train.max_epochs=1"], original, env)
    copy = tmp_path / "moved here" / "project"
    shutil.copytree(original, copy, symlinks=True)
    shutil.rmtree(original)                       # the old paths now lead nowhere

    out = run([CLI, "relocate-store"], copy, env).stdout
    assert int(out.split()[0]) >= 8, out           # 2 experiments, 4 runs, model, version
    again = run([CLI, "relocate-store"], copy, env).stdout
    assert again.startswith("0 "), again           # idempotent, and nothing left behind
    stale = [v for v in recorded_texts(copy / "mlflow.db") if str(original) in v]
    assert not stale, stale

    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{copy}/mlflow.db")
    champion = MlflowClient().get_model_version_by_alias("mnist-digits", "champion")
    assert MlflowClient().list_artifacts(champion.run_id), champion.run_id
    model = mlflow.pyfunc.load_model("models:/mnist-digits@champion")
    # the registered MLflow model is the ONNX graph: both outputs, by name
    proba = np.asarray(model.predict(np.zeros((2, 28, 28, 1), dtype=np.uint8))["probabilities"])
    assert proba.shape == (2, 10)


def test_copy_store_publishes_runs_and_registry_to_a_server(tmp_path: Path,
                                                            mlflow_server: MlflowServer
                                                            ) -> None:
    from mlflow.tracking import MlflowClient

    root, env = synthetic_project(tmp_path / "project")
    run(["dvc", "repro"], root, env)
    src = MlflowClient(f"sqlite:///{root}/mlflow.db")
    out = run([CLI, "copy-store", "--to", mlflow_server.uri], root, env).stdout
    assert out.startswith("copied 4 runs and 1 registry versions")
    again = run([CLI, "copy-store", "--to", mlflow_server.uri], root, env).stdout
    assert again.startswith("copied 0 runs and 0 registry versions")      # idempotent

    dst = MlflowClient(mlflow_server.uri)
    (s_exp, d_exp) = (c.get_experiment_by_name("mnist-mlops") for c in (src, dst))
    s_runs = {r.info.run_id: r for r in src.search_runs([s_exp.experiment_id])}
    d_runs = dst.search_runs([d_exp.experiment_id])
    assert len(d_runs) == len(s_runs) == 4
    for r in d_runs:
        old = s_runs[r.data.tags["mnist_mlops.copied_from"]]
        assert r.info.run_name == old.info.run_name and r.info.status == old.info.status
        assert r.data.params == old.data.params
        for key in old.data.metrics:
            a = [(m.step, m.value) for m in src.get_metric_history(old.info.run_id, key)]
            b = [(m.step, m.value) for m in dst.get_metric_history(r.info.run_id, key)]
            assert sorted(a) == sorted(b), key
        if "mlflow.parentRunId" in r.data.tags:
            parent = dst.get_run(r.data.tags["mlflow.parentRunId"])
            assert parent.data.tags["mnist_mlops.copied_from"] == \
                old.data.tags["mlflow.parentRunId"]
    champion = dst.get_model_version_by_alias("mnist-digits", "champion")
    assert dst.get_registered_model("mnist-digits").tags["champion_history"] == \
        str(champion.version)
    mlflow.set_tracking_uri(mlflow_server.uri)
    model = mlflow.pyfunc.load_model("models:/mnist-digits@champion")
    # the registered MLflow model is the ONNX graph: both outputs, by name
    proba = np.asarray(model.predict(np.zeros((3, 28, 28, 1), dtype=np.uint8))["probabilities"])
    assert proba.shape == (3, 10)
    # the copied model is the server's own: its MLmodel names the server's model and run
    info = mlflow.models.get_model_info("models:/mnist-digits@champion")
    assert f"models:/{info.model_id}" == champion.source
    assert info.run_id == champion.run_id
    (s_model,) = src.search_logged_models([s_exp.experiment_id])
    (d_model,) = dst.search_logged_models([d_exp.experiment_id])  # once, though copied twice
    assert d_model.model_id == info.model_id and d_model.source_run_id == champion.run_id
    assert d_model.params == s_model.params and d_model.status == s_model.status
    assert {m.key: m.value for m in d_model.metrics} == \
        {m.key: m.value for m in s_model.metrics}
    assert json.loads(d_model.tags["mlflow.modelVersions"]) == \
        [{"name": "mnist-digits", "version": int(champion.version)}]
    assert [o.model_id for o in dst.get_run(champion.run_id).outputs.model_outputs] == \
        [d_model.model_id]

    # `predict` through the server answers with the champion there, as it did locally
    # (not through the project's .h5 fallback: the answer names the registry version)
    seven = tmp_path / "seven.png"
    draw_digit(7).save(seven)
    here = json.loads(run([CLI, "predict", "--json", str(seven)], root, env).stdout)
    there = json.loads(run([CLI, "predict", "--json", str(seven)], root,
                           {**env, "MLFLOW_TRACKING_URI": mlflow_server.uri}).stdout)
    assert there[0]["model"]["source"] == "models:/mnist-digits@champion", there
    assert there[0]["model"]["version"] == str(champion.version), there
    assert there[0]["digit"] == here[0]["digit"] is not None
    assert there[0]["probability"] == pytest.approx(here[0]["probability"], abs=1e-6)
