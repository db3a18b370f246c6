"""The train stage for real: Keras on tiny synthetic digits, MLflow on a temp SQLite store."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import Params, load_params
from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.core.runtime import cores
from mnist_mlops.data.dataset import folds_csv, save_dataset
from mnist_mlops.data.preprocess import make_folds

from .conftest import ROOT, MlflowServer, Spawned, synthetic_digits, tool_env

pytestmark = pytest.mark.slow   # real training, processes or servers


def write_tiny_project(root: Path, **train: object) -> Path:
    """params.yaml + dataset + folds for 240 synthetic images, 2 folds, in `root`."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preprocess"]["folds"] = 2
    raw["train"].update({"max_epochs": 2, "verbose": 0, **train})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = load_params(root / "params.yaml")
    x, y = synthetic_digits(240, seed=3)
    xt, yt = synthetic_digits(60, seed=4)
    save_dataset({"x_train": x, "y_train": y, "x_test": xt, "y_test": yt},
                 root / p.paths.dataset)
    idx, folds = make_folds(y, p.preprocess)
    write_text_atomic(root / p.paths.folds, folds_csv(idx, y[idx], folds))
    return root


@pytest.fixture
def project(tmp_path: Path, mlflow_db: str, monkeypatch: pytest.MonkeyPatch) -> Params:
    write_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    return load_params()


def runs_of(model: str) -> dict[str, list]:
    client = MlflowClient()
    exp = client.get_experiment_by_name("mnist-mlops")
    runs = client.search_runs([exp.experiment_id], f"tags.model_name = '{model}'")
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'")
    return {"parent": runs, "children": children}


def test_train_writes_outputs_and_tracks_everything(project: Params) -> None:
    from mnist_mlops.training.train import train

    summary = train(project, "mlp_512x2")
    paths = project.paths
    assert paths.model_file("mlp_512x2").is_file()
    out = paths.train_dir("mlp_512x2")
    for f in ("curves.png", "summary.txt", "run.json", "cv.json", "history/fold_0.csv",
              "history/fold_1.csv", "history/final.csv"):
        assert (out / f).is_file(), f
    assert summary["cv_val_accuracy_mean"] > 0.5  # synthetic digits are easy
    assert summary["n_params"] == 669_706
    header = "epoch,accuracy,val_accuracy,loss,val_loss"
    assert (out / "history" / "fold_0.csv").read_text().splitlines()[0] == header
    final = (out / "history" / "final.csv").read_text().splitlines()
    assert final[0] == header and len(final) == 3 and final[1].split(",")[2] == ""

    runs = runs_of("mlp_512x2")
    (parent,) = runs["parent"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.optimizer"] == "rmsprop"
    assert parent.data.params["model.effective_epochs"] == "2"
    tags = parent.data.tags
    assert tags["dvc_stage"] == "train@mlp_512x2" and len(tags["data_sha256"]) == 64
    assert {"git_commit", "git_dirty", "keras_version", "device"} <= set(tags)
    if tags["backend"] == "tensorflow":           # the threads its kernels split work over
        assert tags["tf_intra_op_threads"] == os.environ.get("TF_NUM_INTRAOP_THREADS",
                                                             str(cores()))
    assert parent.data.metrics["cv_val_accuracy_mean"] == pytest.approx(
        summary["cv_val_accuracy_mean"])
    names = sorted(r.info.run_name for r in runs["children"])
    assert names == ["mlp_512x2/final-refit", "mlp_512x2/fold-0", "mlp_512x2/fold-1"]
    client = MlflowClient()
    fold0 = next(r for r in runs["children"] if r.info.run_name.endswith("fold-0"))
    hist = client.get_metric_history(fold0.info.run_id, "val_accuracy")
    assert [m.step for m in hist] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"keras", "train"} <= artifacts
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["run_id"] == parent.info.run_id
    assert run_info["model_uri"].startswith("models:/")

    # calibrated on the 240 out-of-fold answers; the .h5 carries it, MLflow records it
    from mnist_mlops.core.calibration import read_h5

    report = json.loads((out / "calibration.json").read_text())
    assert report["images"] == 240 and report["give_up"] == 0.05
    assert report["unsure_right_given_up"] <= 0.05
    cal = read_h5(paths.model_file("mlp_512x2"))
    assert cal is not None and cal.temperature == pytest.approx(report["temperature"])
    assert (out / "reliability.png").stat().st_size > 1000
    assert parent.data.metrics["oof_temperature"] == pytest.approx(cal.temperature)
    assert parent.data.metrics["oof_ece_after"] == pytest.approx(report["ece_after"])


def test_logged_mlflow_model_serves_raw_uint8(project: Params) -> None:
    import mlflow

    from mnist_mlops.data.dataset import load_dataset
    from mnist_mlops.training.train import train

    train(project, "cnn_28_dense128")
    uri = json.loads((project.paths.train_dir("cnn_28_dense128") / "run.json").read_text())
    model = mlflow.pyfunc.load_model(uri["model_uri"])
    x = load_dataset(project.paths.dataset)["x_test"][:8][..., None]
    assert x.dtype == np.uint8
    proba = np.asarray(model.predict(x))
    assert proba.shape == (8, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)


def test_same_seed_same_fold_metrics(project: Params) -> None:
    from mnist_mlops.training.train import train

    a = train(project, "cnn_32_64_64")["folds"]
    b = train(project, "cnn_32_64_64")["folds"]
    assert a == b


@pytest.mark.parametrize("final", ["best_fold", "ensemble"])
def test_final_model_modes(tmp_path: Path, mlflow_db: str, monkeypatch: pytest.MonkeyPatch,
                           final: str) -> None:
    import keras

    from mnist_mlops.training.train import train

    write_tiny_project(tmp_path, final=final)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    params = load_params()
    summary = train(params, "mlp_512x2")
    model = keras.saving.load_model(params.paths.model_file("mlp_512x2"), compile=False)
    expected = 669_706 * (2 if final == "ensemble" else 1)
    assert model.count_params() == expected == summary["n_params"]
    from mnist_mlops.core.calibration import read_h5

    assert read_h5(params.paths.model_file("mlp_512x2")) is not None   # from the folds
    names = {r.info.run_name for r in runs_of("mlp_512x2")["children"]}
    assert not any("final" in n for n in names)


@pytest.mark.parametrize("keras_backend", ["tensorflow", "jax", "torch"])
def test_sigterm_ends_runs_killed_and_leaves_no_model(tmp_path: Path, mlflow_db: str,
                                                      keras_backend: str) -> None:
    pytest.importorskip(keras_backend)          # torch: where installed (not in CI)
    write_tiny_project(tmp_path, max_epochs=None, verbose=2)  # one log line per epoch
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["models"]["mlp_512x2"]["epochs"] = 500
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    uri = mlflow_db
    env = tool_env(MLFLOW_TRACKING_URI=uri, KERAS_BACKEND=keras_backend)
    stage = Spawned([sys.executable, "-m", "mnist_mlops.training.train", "mlp_512x2"],
                    tmp_path, env)
    try:
        # Wait on the child's log, not on its SQLite store: polling a database that is
        # written every few milliseconds can hit "database is locked" over and over.
        stage.wait_for_line("epoch 3/500", 120)
        stage.proc.send_signal(signal.SIGTERM)
        try:
            rc = stage.wait(timeout=180)
        except subprocess.TimeoutExpired:
            raise AssertionError("no exit 180 s after SIGTERM:\n" + stage.output[-3000:]
                                 ) from None
    finally:
        stage.kill()
    out = stage.output
    assert rc == 130, out[-3000:]
    assert "interrupted" in out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mnist-mlops").experiment_id])
    assert runs and {r.info.status for r in runs} == {"KILLED"}
    fold0 = next(r for r in runs if r.info.run_name.endswith("fold-0"))
    assert client.get_metric_history(fold0.info.run_id, "val_loss")  # killed mid-training
    models_dir = tmp_path / "models"
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_against_a_real_mlflow_server(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    write_tiny_project(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mnist_mlops.training.train", "cnn_32_64_64"],
                          cwd=tmp_path, env=tool_env(MLFLOW_TRACKING_URI=mlflow_server.uri),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("mnist-mlops")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert any((mlflow_server.root / "artifacts").rglob("*.h5"))
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("flag", "value", "policy"), [
    ("mixed_precision", True, "mixed_bfloat16"),      # a CPU's half type
    ("mixed_precision", "float16", "mixed_float16"),
    ("xla", True, "float32")])
def test_precision_and_xla_flags_train(tmp_path: Path, mlflow_db: str,
                                       monkeypatch: pytest.MonkeyPatch, flag: str,
                                       value: object, policy: str) -> None:
    """Each flag really takes effect: XLA under TensorFlow needs non-deterministic ops; a
    model trained in mixed precision ships in float32 and passes its ONNX check."""
    import keras

    from mnist_mlops.inference import onnx_draft
    from mnist_mlops.training import backend
    from mnist_mlops.training.train import train

    if value is True and flag == "mixed_precision" and backend._framework_gpus():
        pytest.skip("true is float16 where a GPU trains")
    write_tiny_project(tmp_path, **{flag: value, "final": "best_fold"},
                       **({"deterministic": False, "mixed_precision": False}
                          if flag == "xla" else {}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    from mnist_mlops.training import models

    trained_in, convert = set(), models.in_float32      # what the final model computed in

    def recording(model: keras.Model) -> keras.Model:
        trained_in.update(layer.dtype_policy.name for layer in model.layers)
        return convert(model)

    monkeypatch.setattr(models, "in_float32", recording)
    summary = train(load_params(), "cnn_28_dense128")
    assert policy in trained_in
    assert keras.mixed_precision.global_policy().name == "float32"   # the caller's, as it was
    assert summary["cv_val_accuracy_mean"] > 0.3
    parent = runs_of("cnn_28_dense128")["parent"][0].data
    assert parent.params[f"train.{flag}"] == str(value)
    assert parent.tags["jit_compile"] == str(flag == "xla")
    assert parent.tags["precision"] == policy
    params = load_params()
    h5 = params.paths.model_file("cnn_28_dense128")
    shipped = keras.models.load_model(h5, compile=False)
    assert {layer.dtype_policy.name for layer in shipped.layers} == {"float32"}
    assert onnx_draft.take(params.paths.checkpoints, h5) is not None   # exported, checked
    from mnist_mlops.training.models import new_model

    model = new_model(params.model("cnn_28_dense128"), params.train, 0, 240)
    assert model.jit_compile is (flag == "xla")       # Keras did not turn it off


@pytest.mark.parametrize(("setting", "gpus", "has_bf16", "as_if"), [
    ("auto", [], True, "bfloat16"), ("auto", [], False, False), ("auto", [object()], True, False),
    (True, [], True, "bfloat16"), (True, [object()], True, "float16")])
def test_a_checkpoint_of_auto_or_true_is_keyed_by_the_type_it_took(
        monkeypatch: pytest.MonkeyPatch, setting: object, gpus: list, has_bf16: bool,
        as_if: object) -> None:
    """auto and true depend on the device: a checkpoint's key holds the type they took there
    (float32, bfloat16 or float16 training hold different state), so one made on a GPU or
    a CPU with bfloat16 does not resume on another kind of device, and one of auto that
    took float32 resumes as `false`'s."""
    import keras

    from mnist_mlops.training import backend
    from mnist_mlops.training.checkpoint import fingerprint
    from mnist_mlops.training.train import checkpoint_key

    # no GPU here, and this CPU's flags are what they are: the device is stood in for
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.setattr(backend, "_framework_gpus", lambda: gpus)
    monkeypatch.setattr(backend, "cpu_has", lambda kind: has_bf16 and kind == "bfloat16")
    params = load_params(ROOT / "params.yaml")
    p, tp = params.model("cnn_28_dense128"), params.train
    key = checkpoint_key(p, tp.model_copy(update={"mixed_precision": setting}), "d")
    keys = {v: fingerprint(p, tp.model_copy(update={"mixed_precision": v}), "d")
            for v in (False, "bfloat16", "float16")}
    assert len(set(keys.values())) == 3
    assert key == keys[as_if]


def test_xla_with_deterministic_tensorflow_ops_says_it_stays_off(
        caplog: pytest.LogCaptureFixture) -> None:
    import keras

    from mnist_mlops.training import backend

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's deterministic ops")
    backend._warn_once.cache_clear()                  # said once per process
    with caplog.at_level(logging.WARNING):
        assert backend.jit_compile(True, deterministic=True) is False
    assert "set train.deterministic: false" in caplog.text


def test_steps_per_execution_leaves_fold_metrics_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several train steps per backend call is the same arithmetic: in deterministic mode
    every fold's history and best epoch are bit-identical (4 steps per fold epoch, 8 per
    refit epoch at batch 32: with 3 per call, each epoch ends with a partial group; the
    default 32 runs each epoch as one partial group)."""
    import json

    from mnist_mlops.training.train import train

    results = {}
    for spe in (1, 3, 32):
        root = tmp_path / f"spe{spe}"
        root.mkdir()
        write_tiny_project(root, steps_per_execution=spe)
        monkeypatch.chdir(root)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        train(load_params(), "cnn_28_dense128")
        histories = sorted((root / "reports" / "train" / "cnn_28_dense128" / "history").glob("*"))
        cv = root / "reports" / "train" / "cnn_28_dense128" / "cv.json"
        results[spe] = (json.loads(cv.read_text()),
                        [h.read_text() for h in histories])
        params = runs_of("cnn_28_dense128")["parent"][0].data.params
        assert params["train.steps_per_execution"] == str(spe)
    (cv1, hist1) = results[1]
    assert len(hist1) == 3
    for spe in (3, 32):
        assert results[spe][0]["folds"] == cv1["folds"] and results[spe][1] == hist1, spe


def test_stage_log_is_the_projects_own_lines(tmp_path: Path, mlflow_db: str) -> None:
    """No TensorFlow C++ lines, Python warnings or ANSI progress bars; progress per epoch; a
    closing summary.
    MNIST_MLOPS_VERBOSE=1 brings the library lines back."""
    write_tiny_project(tmp_path, verbose=2)
    uri = mlflow_db
    cmd = [sys.executable, "-m", "mnist_mlops.training.train", "mlp_512x2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=tool_env(MLFLOW_TRACKING_URI=uri),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    native = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuInit", re.M)
    assert not native.search(log), native.search(log)
    assert "\x1b[" not in log and "legacy" not in log
    assert not re.search(r"\w+Warning: ", log), re.search(r".*\w+Warning: .*", log)
    for line in ("mlp_512x2 fold 1/2 epoch 1/2: accuracy", "mlp_512x2 fold 2/2 epoch 2/2",
                 "mlp_512x2 final refit epoch 2/2", "left: "):
        assert line in log, line
    run_id = json.loads((tmp_path / "reports/train/mlp_512x2/run.json").read_text())["run_id"]
    closing = log.strip().splitlines()[-1]
    assert "CV val accuracy" in closing and run_id in closing
    assert "model models/mlp_512x2.h5" in closing

    loud = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=tool_env(MLFLOW_TRACKING_URI=uri, MNIST_MLOPS_VERBOSE="1"))
    assert loud.returncode == 0 and native.search(loud.stdout + loud.stderr)
