"""`pip install '.[serve]'` for real: a fresh virtual environment built from
requirements.lock with only the serving install, which predicts from an exported MLflow
model folder and serves the champion of a real `mlflow server`, without TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, MlflowServer, free_port, tool_env, wait_for
from .served import fetch

pytestmark = pytest.mark.slow    # builds an environment from the package registry
TRAINING_ONLY = ("tensorflow", "keras", "sklearn", "dvc", "optuna", "evidently", "pandas",
                 "matplotlib", "onnx", "tf2onnx")


@pytest.fixture(scope="module")
def serve_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The environment's bin/ folder. Built from a copy of the package's files, so that the
    build leaves nothing in the checkout."""
    tmp = tmp_path_factory.mktemp("serving-install")
    src = tmp / "pkg"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns(
        "*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", "-c", str(src / "requirements.lock"),
                           f"{src}[serve]"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, mnist: dict) -> tuple[Path, Path]:
    """A trained-looking model (cnn_32_64_64, briefly fitted) logged and registered as the
    pipeline does it (the .h5 run model, then the ONNX file register adds), and the same
    MLflow model downloaded as a folder."""
    import keras

    from mnist_mlops.core.config import load_params
    from mnist_mlops.inference.onnx_export import export
    from mnist_mlops.training.models import build_model, compile_model

    tmp = tmp_path_factory.mktemp("registered")
    keras.utils.set_random_seed(0)
    p = load_params(ROOT / "params.yaml").models["cnn_32_64_64"]
    model = compile_model(build_model(p), p)
    model.fit(mnist["x_train"][:3000, ..., None].astype("float32"),
              keras.utils.to_categorical(mnist["y_train"][:3000], 10), epochs=1, verbose=0)
    model.save(tmp / "m.h5")
    export(model, tmp / "m.onnx", {"architecture": model.name})
    np.save(tmp / "example.npy", mnist["x_test"][:1, ..., None])
    return tmp, model


def log_and_register(tmp: Path, uri: str) -> str:
    """The model of `tmp` logged to the store at `uri` and made its champion; its URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mnist_mlops.tracking.logged_model import add_onnx, log_keras_model

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("digits")   # in this store (not one an earlier test left active)
    with mlflow.start_run() as run:
        pass
    model_uri = log_keras_model(run.info.run_id, tmp / "m.h5", tmp / "example.npy")
    add_onnx(model_uri, tmp / "m.onnx")
    mv = mlflow.register_model(model_uri, "digits")
    MlflowClient(uri).set_registered_model_alias("digits", "champion", mv.version)
    return model_uri


def test_the_serving_install_has_no_training_stack(serve_env: Path) -> None:
    found = subprocess.run(
        [str(serve_env / "python"), "-c", "import importlib.util as u, sys; print(','.join("
         f"m for m in {TRAINING_ONLY!r} if u.find_spec(m)))"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert found == ""
    # asked for the Keras path, it says which install has it, in one line
    proc = subprocess.run([str(serve_env / "mnist-mlops"), "predict",
                           str(ROOT / "docs" / "confusion_lenet_28_50.png"), "--model",
                           str(ROOT / "pyproject.toml"), "--runtime", "keras"],
                          capture_output=True, text=True, cwd=serve_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install '.[train]'" in proc.stderr, proc.stderr


def test_predict_from_an_exported_folder(serve_env: Path, registered: tuple,
                                         mnist: dict, tmp_path: Path) -> None:
    import mlflow
    from PIL import Image

    from mnist_mlops.inference.predictor import Predictor

    tmp, _ = registered
    model_uri = log_and_register(tmp, f"sqlite:///{tmp_path}/mlflow.db")
    folder = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "ex")))
    Image.fromarray(255 - mnist["x_test"][0]).resize((280, 280)).save(tmp_path / "d.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([str(serve_env / "mnist-mlops"), "predict", str(tmp_path / "d.png"),
                           "--model", str(folder), "--json"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (answer,) = json.loads(proc.stdout)
    assert answer["model"]["runtime"] == "onnx" and answer["digit"] == mnist["y_test"][0]
    # the same answer as the training install gives on the same folder
    here = Predictor(str(folder), runtime="keras").predict_proba(mnist["x_test"][:1])[0]
    assert abs(answer["probability"] - here.max()) < 1e-3


def test_serve_the_champion_of_a_tracking_server(serve_env: Path, registered: tuple,
                                                 mnist: dict, tmp_path: Path) -> None:
    tmp, _ = registered
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    try:
        log_and_register(tmp, server.uri)
        port = free_port()
        proc = subprocess.Popen(
            [str(serve_env / "mnist-mlops"), "serve", "--model", "models:/digits@champion",
             "--port", str(port)], cwd=tmp_path, env=tool_env(MLFLOW_TRACKING_URI=server.uri),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_for(lambda: proc.poll() is not None or (
                _listening(port) and fetch(url + "ready", timeout=5)[0] == 200), 180, "/ready")
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            x = mnist["x_test"][:8]
            status, _, body = fetch(url + "invocations",
                                    json.dumps({"inputs": x[..., None].tolist()}).encode())
            assert status == 200
            pred = np.asarray(json.loads(body)["predictions"]).argmax(axis=1)
            assert (pred == mnist["y_test"][:8]).mean() >= 0.75
            info = json.loads(fetch(url + "info")[2])
            assert info["version"] == "1" and info["runtime"] == "onnx"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        server.kill()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
