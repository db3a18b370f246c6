"""A Keras model as the `--runtime keras` path and the training stages call it: loading a
saved .h5, the compiled predict step, and the second output the prediction log reads.

Cold start: keras (with TensorFlow: 5-7 s to import on a 2-core CPU) is imported inside
each function, so that importing this module costs nothing on the ONNX path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.mnist import INPUT_SHAPE
from mnist_mlops.core.runtime import UserError

BIG_BATCH = 256   # images per call of the compiled predict step


def load_keras_model(path: Path) -> Any:
    """A saved .h5 model, ready for inference (no optimizer state needed)."""
    try:
        import keras
    except ImportError:
        raise UserError(f"{path} is a Keras model, and Keras is not installed here (a "
                        "serving install): pass --model with the model's ONNX file or "
                        "MLflow model, or install the training stack (pip install "
                        "'.[train]')") from None
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:   # h5py's and Keras' refusals
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a Keras model file that can be loaded ({reason}): "
                        "pass --model with a .h5 this pipeline saved (models/<model>.h5), "
                        "or an MLflow model URI") from None


def compiled_call(model: Any, x: np.ndarray) -> Any:
    """`model` on float32 images `x`, as NumPy (a list for a model of several outputs):
    the compiled predict step (predict_on_batch: tf.function / jax.jit; 1.4 ms for one
    image of cnn_32_64_64 against 16 ms for an eager call) on BIG_BATCH images at a time.
    Not predict(): its tf.data pipeline left the cores idle for up to 0.9 s of a 1.7 s
    pass over 10,000 digits as it ended (training/feed.py says why; docs/benchmarks.md)."""
    import keras

    def numpy(out: Any) -> list[np.ndarray]:
        outs = out if isinstance(out, list | tuple) else [out]
        return [keras.ops.convert_to_numpy(o) for o in outs]

    parts = [numpy(model.predict_on_batch(x[i:i + BIG_BATCH]))
             for i in range(0, max(len(x), 1), BIG_BATCH)]
    joined = [np.concatenate(outs) for outs in zip(*parts, strict=True)]
    return joined if len(joined) > 1 else joined[0]


def members(model: Any) -> list[Any]:
    """The fold models inside an ensemble (train.final / a recipe's `final: ensemble`);
    none for a single network."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def two_outputs(model: Any) -> Any:
    """`model` with a second output, the input of its last layer (the penultimate layer's
    activations; for an ensemble, its members' probabilities side by side), so that one
    call gives both the embedding and the probabilities: (embedding, probabilities)."""
    import keras

    last = model.layers[-1]
    feats = last.input
    if isinstance(feats, list | tuple):
        feats = keras.layers.Concatenate(name="members")(list(feats))
    return keras.Model(model.inputs, [feats, model.outputs[0]], name=f"{model.name}_logged")


def call_two_outputs(both: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embedding) of uint8 `images` (n, 28, 28[, 1]) in one model call."""
    x = np.asarray(images, dtype=np.uint8).reshape(-1, *INPUT_SHAPE).astype("float32")
    emb, proba = compiled_call(both, x)
    return (np.asarray(proba, dtype=np.float64).reshape(len(x), -1),
            np.asarray(emb, dtype=np.float32).reshape(len(x), -1))
