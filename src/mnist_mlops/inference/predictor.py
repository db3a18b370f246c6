"""Loading a model and asking it for probabilities: the one place for both.

evaluate, register's gate, predict, serve and monitor all call `Predictor.predict_proba`.
A model is a saved .h5 file or an MLflow model URI; pixels go in as uint8 0-255, shaped
like MNIST (core/mnist.py), ten probabilities come out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from mnist_mlops.core.mnist import INPUT_SHAPE, NUM_CLASSES
from mnist_mlops.core.runtime import UserError
from mnist_mlops.tracking.mlflow_io import H5_ARTIFACT

# Cold start: keras (with TensorFlow: 7 s to import on a 2-core CPU) is imported where a
# Keras model is loaded or called, not at the top: the paths that never need it (a
# python-function model, a missing file's one-line error, `--help`) answer without it.

BIG_BATCH = 256   # above this many images, predict() batches; below, one compiled step


class ModelLoadError(UserError):
    """A model that cannot be loaded; `cause` is why, without the advice around it."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"cannot load model {source!r}: {cause}. Pass --model with a .h5 file "
                         "or an MLflow model URI (models:/NAME@champion), and set "
                         "MLFLOW_TRACKING_URI to the store that holds it")
        self.cause = cause


def load_keras_model(path: Path) -> Any:
    """A saved .h5 model, ready for inference (no optimizer state needed)."""
    import keras

    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:   # h5py's and Keras' refusals
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a Keras model file that can be loaded ({reason}): "
                        "pass --model with a .h5 this pipeline saved (models/<model>.h5), "
                        "or an MLflow model URI") from None


def pipeline_h5(source: str, flavors: dict[str, Any]) -> Path | None:
    """The .h5 inside an MLflow model this pipeline logged (tracking/mlflow_model.py),
    downloaded; None for any other model."""
    conf = flavors.get("python_function", {})
    entry = (conf.get("artifacts") or {}).get(H5_ARTIFACT) or {}
    path = entry.get("path", "")
    if not path.endswith(".h5") or "tensorflow" in flavors:
        return None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source)).resolve()
    h5 = (local / path).resolve()
    if not h5.is_relative_to(local):
        raise UserError(f"{source}: its MLmodel points outside the model ({path}); refused")
    return h5


def compiled_call(model: Any, x: np.ndarray) -> Any:
    """`model` on float32 images `x`, as NumPy (a list for a model of several outputs).
    Up to BIG_BATCH images: one call of the compiled predict step (predict_on_batch:
    tf.function / jax.jit, no per-call data pipeline; 1.4 ms for one image of
    cnn_32_64_64 against 16 ms for an eager call); more: predict() in batches."""
    import keras

    if len(x) > BIG_BATCH:
        return model.predict(x, batch_size=BIG_BATCH, verbose=0)
    out = model.predict_on_batch(x)
    if isinstance(out, list | tuple):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return keras.ops.convert_to_numpy(out)


class Predictor:
    """One interface over a Keras .h5 file and an MLflow pyfunc model: uint8 in, probs out."""

    def __init__(self, source: str, trusted: bool = False) -> None:
        self.source = source
        # which model answers: registry version and architecture where known
        self.about: dict[str, str | None] = {"source": source, "version": None,
                                              "architecture": None}
        self._keras: Any = None
        self._pyfunc: Any = None
        path = Path(source)
        if path.suffix in (".h5", ".keras") or path.is_file():
            self._keras = load_keras_model(path)
        else:
            self._load_mlflow(source, trusted)
        if self._keras is not None:
            self.about["architecture"] = self._keras.name

    @classmethod
    def of_keras(cls, model: Any, source: str) -> Predictor:
        """A Predictor over a Keras model already in memory (an ensemble's fold model)."""
        self = cls.__new__(cls)
        self.source, self._keras, self._pyfunc = source, model, None
        self.about = {"source": source, "version": None, "architecture": model.name}
        return self

    def _load_mlflow(self, source: str, trusted: bool) -> None:
        try:
            # A Keras model inside (this pipeline's models are) is loaded as Keras and
            # called directly: faster for a few images and silent, unlike pyfunc's predict.
            flavors = mlflow.models.get_model_info(source).flavors
            h5 = pipeline_h5(source, flavors)
            if h5 is not None:       # this pipeline's model: its .h5, no code run
                self._keras = load_keras_model(h5)
            elif "tensorflow" in flavors:   # models logged by earlier versions
                self._keras = mlflow.tensorflow.load_model(source)
            elif not trusted:
                raise UserError(
                    f"{source} is an MLflow model of flavour(s) {', '.join(flavors)}, not "
                    "a Keras/TensorFlow model: loading it runs its own Python code. Pass "
                    "--trust-model if you trust where it came from")
            else:
                self._pyfunc = mlflow.pyfunc.load_model(source)
        except UserError:
            raise
        except Exception as exc:  # MlflowException, OSError, ... : all mean "can't load"
            raise ModelLoadError(source, str(exc).strip()) from None

    @property
    def keras_model(self) -> Any:
        """The Keras model that answers; None for a python-function model."""
        return self._keras

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 images shaped (n, 28, 28[, 1])."""
        x = np.asarray(images, dtype=np.uint8).reshape(-1, *INPUT_SHAPE)
        if self._keras is not None:
            out = compiled_call(self._keras, x.astype("float32"))
        else:
            out = self._pyfunc.predict(x)
        return np.asarray(out, dtype=np.float64).reshape(len(x), NUM_CLASSES)
