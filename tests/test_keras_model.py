"""inference/keras_model.py: the compiled predict step answers as Keras's predict does."""

from __future__ import annotations

import numpy as np

from mnist_mlops.core.config import load_params

from .conftest import ROOT


def test_compiled_call_answers_every_image_as_predict_does() -> None:
    """Batch after batch of the compiled step, the short last one included, in order: the
    same answers as predict() (which it replaces for its pipeline's idle wait), for one
    output and for the prediction log's two."""
    import keras

    from mnist_mlops.inference.keras_model import BIG_BATCH, compiled_call, two_outputs
    from mnist_mlops.training.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(load_params(ROOT / "params.yaml").models["cnn_bn_aug"])
    x = np.random.default_rng(0).integers(0, 256, (2 * BIG_BATCH + 3, 28, 28, 1))
    x = x.astype("float32")
    expected = model.predict(x, batch_size=BIG_BATCH, verbose=0)
    np.testing.assert_array_equal(compiled_call(model, x), expected)
    np.testing.assert_array_equal(compiled_call(model, x[:5]), expected[:5])
    embedding, proba = compiled_call(two_outputs(model), x)
    assert embedding.shape == (len(x), 128)
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-6)
