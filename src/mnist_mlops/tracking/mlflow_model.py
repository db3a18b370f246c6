"""The MLflow model every run logs: a python-function model that carries the `.h5`.

One format for every Keras backend. The `.h5` is backend-neutral Keras, so a model trained
under JAX, PyTorch or TensorFlow serves under any of them; MLflow's TensorFlow flavour
would pin TensorFlow, and its Keras 3 flavour would store the native `.keras` format
instead of the project's `.h5`. `mnist-mlops predict/serve` and the gate find the `.h5`
inside (core/model_files.H5_ARTIFACT) and load it with Keras without running this file.

MLflow loads this file as "model from code" (`mlflow.pyfunc.load_model`,
`mlflow models serve`): the `set_model` call at the bottom is MLflow's contract for such a
file, which is why this module does work at import time. Nothing in the package imports it.
It needs only Keras and NumPy, not this package.
"""

from __future__ import annotations

import os
import sys

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class KerasH5Model(PythonModel):
    """uint8 (n, 28, 28, 1) raw pixels in, float32 (n, 10) class probabilities out."""

    def load_context(self, context):  # noqa: ANN001, ANN201 (MLflow reads the hints)
        # the backend it was trained with (and pinned in requirements.txt), unless the
        # environment chooses one: a fresh serving environment may have only that one.
        # Only before Keras is imported: a process that already runs Keras keeps its own
        # backend, and its environment (inherited by its children) is left alone.
        backend = (context.model_config or {}).get("keras_backend")
        if backend and "keras" not in sys.modules:
            os.environ.setdefault("KERAS_BACKEND", backend)
        import keras

        (h5,) = context.artifacts.values()          # the one artifact: the .h5
        self.model = keras.saving.load_model(h5, compile=False)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201

        x = np.asarray(model_input, dtype="float32").reshape(-1, 28, 28, 1)
        return np.asarray(self.model.predict(x, batch_size=256, verbose=0), dtype="float32")


mlflow.models.set_model(KerasH5Model())
