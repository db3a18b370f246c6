"""Tracking outages for real: a `mlflow server` on 127.0.0.1 killed during training, then
restarted (nothing lost) or not (outputs kept, a clear message, then `dvc repro` after it
returns delivers everything without retraining)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from .conftest import MlflowServer, Spawned, run, synthetic_project, tool_env, wait_for
from .test_train import write_tiny_project

pytestmark = pytest.mark.slow   # real training, processes or servers

MODEL = "mlp_512x2"


def assert_complete(uri: str, epochs: int, folds: int = 2) -> None:
    """One parent run, its fold and refit runs FINISHED, every epoch's metrics once."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist-mlops")
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted([MODEL, f"{MODEL}/final-refit",
                            *(f"{MODEL}/fold-{k}" for k in range(folds))]), names
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        if r.info.run_name == MODEL:
            assert "cv_val_accuracy_mean" in r.data.metrics
            assert r.data.params["model.optimizer"] == "rmsprop"
            assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"keras", "train"}
        else:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
            assert steps == list(range(1, epochs + 1)), (r.info.run_name, steps)


def test_server_killed_mid_fold_and_restarted_loses_nothing(tmp_path: Path,
                                                            mlflow_server: MlflowServer
                                                            ) -> None:
    epochs = 40
    root = tmp_path / "project"
    root.mkdir()
    write_tiny_project(root, max_epochs=None, verbose=2)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["models"][MODEL]["epochs"] = epochs
    raw["mlflow"]["outage_wait_s"] = 180
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    stage = Spawned([sys.executable, "-m", "mnist_mlops.training.train", MODEL], root,
                    tool_env(MLFLOW_TRACKING_URI=mlflow_server.uri))
    try:
        stage.wait_for_line("fold 1/2 epoch 3/")
        mlflow_server.kill()
        n = len(stage.lines)
        stage.wait_for_line("training goes on")
        # it trains on while the server is away
        wait_for(lambda: sum(" epoch " in line for line in stage.lines[n:]) >= 10, 120,
                 "ten epochs during the outage")
        mlflow_server.start()
        assert stage.wait() == 0, stage.output[-3000:]
    finally:
        stage.kill()
    assert "Traceback" not in stage.output
    assert "queued MLflow writes delivered" in stage.output
    assert_complete(mlflow_server.uri, epochs)
    run_json = json.loads((root / "reports" / "train" / MODEL / "run.json").read_text())
    assert run_json["model_uri"].startswith("models:/")


def test_server_never_back_keeps_outputs_then_dvc_repro_delivers_without_retraining(
        tmp_path: Path, mlflow_server: MlflowServer) -> None:
    root, env = synthetic_project(tmp_path / "project", **{
        "train.max_epochs": None, f"models.{MODEL}.epochs": 30, "mlflow.outage_wait_s": 3})
    env["MLFLOW_TRACKING_URI"] = mlflow_server.uri
    run(["dvc", "repro", "preprocess"], root, env)
    stage = Spawned(["dvc", "repro", f"train@{MODEL}"], root, env)
    try:
        stage.wait_for_line("fold 1/2 epoch 3/")
        mlflow_server.kill()
        rc = stage.wait()
    finally:
        stage.kill()
    out = stage.output
    assert rc != 0
    assert "Traceback" not in out and len(out.splitlines()) < 200
    assert "was unreachable" in out and "rerun `dvc repro`" in out
    assert "without retraining" in out
    assert (root / "models" / f"{MODEL}.h5").is_file()          # kept locally
    assert json.loads((root / "reports" / "train" / MODEL / "run.json").read_text())[
        "model_uri"] is None
    (ckpt,) = (root / ".checkpoints" / MODEL).iterdir()
    assert (ckpt / "journal.jsonl").is_file()

    mlflow_server.start()
    again = run(["dvc", "repro", f"train@{MODEL}"], root, env)
    log = again.stdout + again.stderr
    assert " epoch " not in log, log[-3000:]                    # nothing retrained
    assert_complete(mlflow_server.uri, 30)
    assert json.loads((root / "reports" / "train" / MODEL / "run.json").read_text())[
        "model_uri"].startswith("models:/")
    assert not (root / ".checkpoints" / MODEL).exists()
    status = run(["dvc", "status", f"train@{MODEL}"], root, env).stdout
    assert "up to date" in status, status


def test_a_write_repeated_after_a_resume_is_recorded_once(tmp_path: Path) -> None:
    """An epoch logged just before a kill, but not checkpointed, is trained and logged
    again on resume: its step must not appear twice (nor a second MLflow model)."""
    from mnist_mlops.tracking.journal import Journal

    j = Journal(tmp_path, "sqlite:///unused.db", "mnist-mlops", "attempt")
    j.start_run("fold-0", "m/fold-0", {})
    j.metrics("fold-0", {"loss": 0.5, "epoch_time_s": 1.0}, step=4)
    j.model("parent", tmp_path / "m.h5", tmp_path / "x.npy")
    again = Journal(tmp_path, "sqlite:///unused.db", "mnist-mlops", "attempt")  # resumed
    again.start_run("fold-0", "m/fold-0", {})                  # reopening is recorded
    again.metrics("fold-0", {"loss": 0.5, "epoch_time_s": 1.3}, step=4)
    again.metrics("fold-0", {"loss": 0.4, "epoch_time_s": 1.1}, step=5)
    again.model("parent", tmp_path / "m.h5", tmp_path / "x.npy")
    kinds = [(op["op"], op.get("step")) for op in Journal(tmp_path, "", "", "").ops]
    assert kinds == [("start", None), ("metrics", 4), ("model", None), ("start", None),
                     ("metrics", 5)]


def test_a_write_the_store_refuses_stops_with_one_clear_error(tmp_path: Path,
                                                             mlflow_db: str) -> None:
    """Not an outage: retrying cannot help, so delivery stops and says which write failed."""
    from mnist_mlops.core.runtime import UserError
    from mnist_mlops.tracking.journal import Journal

    j = Journal(tmp_path / "ckpt", mlflow_db, "mnist-mlops", "a")
    j.start_run("parent", "m", {})
    j.dataset("parent", "mnist-train", "x" * 64, "data", 10)   # MLflow allows 36 characters
    with pytest.raises(UserError, match="refused a dataset write for run parent"):
        j.deliver(models=True)
    assert j.delivered == 1                           # the run was created; nothing skipped
