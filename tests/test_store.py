"""A copied project folder's embedded store opens with its artifacts after one command."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np

from .conftest import run, tool_env
from .test_train import write_tiny_project

CLI = str(Path(sys.executable).parent / "mnist-mlops")
MODEL = "cnn_28_dense128"


def test_copied_project_store_opens_with_its_artifacts(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.mkdir()
    write_tiny_project(original)
    run([sys.executable, "-m", "mnist_mlops.train", MODEL], original)   # default store
    copy = tmp_path / "elsewhere" / "project"
    shutil.copytree(original, copy)
    shutil.rmtree(original)                       # the old paths now lead nowhere

    env = tool_env()
    out = run([CLI, "relocate-store"], copy, env).stdout
    assert int(out.split()[0]) >= 5                # experiment, runs, logged model
    assert run([CLI, "relocate-store"], copy, env).stdout.startswith("0 ")   # idempotent

    mlflow.set_tracking_uri(f"sqlite:///{copy}/mlflow.db")
    info = json.loads((copy / "reports" / "train" / MODEL / "run.json").read_text())
    cv = mlflow.artifacts.download_artifacts(run_id=info["run_id"],
                                             artifact_path="train/cv.json",
                                             dst_path=str(tmp_path / "dl"))
    assert json.loads(Path(cv).read_text())["final"] == "refit"
    model = mlflow.pyfunc.load_model(info["model_uri"])
    proba = np.asarray(model.predict(np.zeros((2, 28, 28, 1), dtype=np.uint8)))
    assert proba.shape == (2, 10)
