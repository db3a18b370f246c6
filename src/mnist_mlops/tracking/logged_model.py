"""The MLflow model every train run logs: mlflow_model.py's python-function model with the
.h5 inside, its uint8 signature, input example and pinned requirements; and the ONNX
graph register adds to it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from mnist_mlops.core.mnist import INPUT_SHAPE, NUM_CLASSES
from mnist_mlops.core.model_files import H5_ARTIFACT, KERAS_H5
from mnist_mlops.tracking.mlflow_io import MLFLOW_MODEL_CODE

# Keras is imported where it is used, not at the top: after run_main has quietened
# TensorFlow's start-up lines (runtime.quiet_native_stderr):
# the train stage imports this module before it starts.


def log_keras_model(run_id: str, h5: Path, example: Path) -> str:
    """Log a saved .h5 Keras model to run `run_id` as an MLflow model; return its URI.

    The MLflow model is mlflow_model.py's python-function model with the .h5 inside and
    the uint8 signature of raw pixels: the same under every Keras backend (see there why)."""
    import keras
    sig = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *INPUT_SHAPE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]))
    # Model.log is pyfunc.log_model with `run_id`: the delivery thread has no active run
    info = mlflow.models.Model.log(
        artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
        python_model=str(MLFLOW_MODEL_CODE), artifacts={H5_ARTIFACT: str(h5)},
        signature=sig, input_example=np.load(example),
        model_config={"keras_backend": keras.backend.backend()},
        pip_requirements=[f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}",
                          "h5py", *backend_requirements()])
    return info.model_uri


def backend_requirements() -> list[str]:
    """The Keras backend the model was trained with, pinned, for `mlflow models serve`."""
    import keras

    package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(
        keras.backend.backend())
    if package is None:
        return []
    try:
        return [f"{package}=={importlib.metadata.version(package)}"]
    except importlib.metadata.PackageNotFoundError:
        return [package]


def add_onnx(model_uri: str, onnx_file: Path) -> None:
    """Add the ONNX graph to the MLflow model a train run logged (`models:/<model id>`), so
    that the registry version made from it carries both. MLflow's `onnx` flavour then leads
    (`mlflow models serve` runs the graph on ONNX Runtime, uint8 pixels in, `probabilities`
    and `embedding` out); the .h5 stays where it was, named in the metadata (KERAS_H5)."""
    import onnx
    import onnxruntime

    info = mlflow.models.get_model_info(model_uri)
    pyfunc = info.flavors.get("python_function") or {}
    h5 = ((pyfunc.get("artifacts") or {}).get(H5_ARTIFACT) or {}).get("path") or (
        (info.metadata or {}).get(KERAS_H5))
    if not h5:
        raise ValueError(f"{model_uri} holds no .h5 of this pipeline")
    sig = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *INPUT_SHAPE))]))
    mlflow.onnx.log_model(
        onnx.load(str(onnx_file)), model_id=model_uri.removeprefix("models:/"),
        signature=sig, save_as_external_data=False,
        metadata={**(info.metadata or {}), KERAS_H5: h5},
        pip_requirements=[f"onnxruntime=={onnxruntime.__version__}",
                          f"onnx=={onnx.__version__}", f"mlflow=={mlflow.__version__}"])
