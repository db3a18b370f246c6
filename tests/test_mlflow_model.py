"""The MLflow model each run logs (mlflow_model.py): a python-function model carrying the
.h5, served by `mlflow.pyfunc` under any Keras backend and read by Predictor as Keras
without running its code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow   # MLflow model logging and a second Python process


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray]:
    """(tracking URI, model URI, a uint8 batch) of an mlp_512x2 logged as each run does."""
    import keras
    import mlflow

    from mnist_mlops.core.config import load_params
    from mnist_mlops.tracking.logged_model import log_keras_model
    from mnist_mlops.training.models import build_model

    tmp = tmp_path_factory.mktemp("mlflow_model")
    keras.utils.set_random_seed(0)
    model = build_model(load_params(ROOT / "params.yaml").models["mlp_512x2"])
    model.save(tmp / "m.h5")
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.save(tmp / "example.npy", x[:1])
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    # the new store's Default experiment, named: another module run earlier in this
    # process (pytest -n) may have left an active experiment of its own store
    with mlflow.start_run(experiment_id="0") as run:
        model_uri = log_keras_model(run.info.run_id, tmp / "m.h5", tmp / "example.npy")
    np.save(tmp / "expected.npy", model.predict(x.astype("float32"), verbose=0))
    return uri, model_uri, x


def test_one_python_function_model_with_the_h5_and_a_uint8_signature(logged: tuple) -> None:
    import mlflow

    uri, model_uri, x = logged
    info = mlflow.models.get_model_info(model_uri)
    assert set(info.flavors) == {"python_function"}                    # no TensorFlow pin
    assert info.flavors["python_function"]["artifacts"]["keras_model"]["path"].endswith(".h5")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    assert (local / "serving_input_example.json").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "keras==" in requirements and "tensorflow==" in requirements   # trained with TF


def test_pyfunc_and_predictor_give_the_models_answers(logged: tuple) -> None:
    import mlflow

    from mnist_mlops.inference.predictor import Predictor

    uri, model_uri, x = logged
    expected = np.load(Path(uri.removeprefix("sqlite:///")).parent / "expected.npy")
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    assert np.allclose(pyfunc.predict(x), expected, atol=1e-6)
    predictor = Predictor(model_uri)                   # untrusted: fine, no code runs
    assert predictor._keras is not None
    assert np.allclose(predictor.predict_proba(x), expected, atol=1e-6)


@pytest.mark.parametrize("backend", ["jax"])
def test_the_same_model_serves_under_another_backend(logged: tuple, backend: str) -> None:
    pytest.importorskip(backend)
    uri, model_uri, x = logged
    folder = Path(uri.removeprefix("sqlite:///")).parent
    np.save(folder / "x.npy", x)
    code = ("import json, sys, keras, mlflow, numpy as np\n"
            f"mlflow.set_tracking_uri({uri!r})\n"
            f"m = mlflow.pyfunc.load_model({model_uri!r})\n"
            f"p = m.predict(np.load({str(folder / 'x.npy')!r}))\n"
            "print(json.dumps({'backend': keras.backend.backend(), 'p': p.tolist()}))\n")
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert np.allclose(result["p"], np.load(folder / "expected.npy"), atol=1e-5)
