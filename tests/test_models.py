"""The recipes as Keras models (training/models.py). Keras is imported by each test, not
by the module: collecting this file (every pytest worker collects every file) then costs
no TensorFlow import on a worker that runs none of these tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.core.config import ARCHITECTURES, load_params

from .conftest import ROOT

PARAMS = load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("name", list(PARAMS.models))
def test_parameter_count_matches_spec(name: str) -> None:
    from mnist_mlops.training.models import build_model

    p = PARAMS.models[name]
    model = build_model(p)
    assert model.count_params() == ARCHITECTURES[p.architecture].params
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)


def test_spec_counts_are_the_documented_ones() -> None:
    assert {k: a.params for k, a in ARCHITECTURES.items()} == {
        "fc_1024_512": 1_333_770, "lenet_28_50": 1_266_288, "mlp_512x2": 669_706,
        "cnn_32_64_64": 93_322, "cnn_28_dense128": 607_394, "cnn_deep_dropout": 370_026,
        "cnn_bn_aug": 326_826,  # the project's own: not in the tutorials' spec
    }


def test_augmentation_acts_in_training_only() -> None:
    import keras

    from mnist_mlops.training.models import build_model

    model = build_model(PARAMS.models["cnn_bn_aug"])
    x = np.zeros((4, 28, 28, 1), "float32")
    x[:, 8:20, 12:16] = 255.0
    augment = keras.Sequential(model.layers[1:4])      # after the Rescaling layer
    assert [type(layer).__name__ for layer in augment.layers] == [
        "RandomRotation", "RandomZoom", "RandomTranslation"]
    numpy = keras.ops.convert_to_numpy                # any backend's tensor
    assert np.array_equal(numpy(augment(x, training=False)), x)
    moved = numpy(augment(x, training=True))
    assert not np.allclose(moved, x) and moved.min() >= 0     # blank (0) fill at the border
    served = model.predict(x, verbose=0)               # how evaluate and serving call it
    assert np.allclose(served, model.predict(x, verbose=0))
    assert np.allclose(served, numpy(model(x, training=False)), atol=1e-6)


def test_only_the_augmenting_model_has_layers_keras_cannot_compile() -> None:
    """Keras runs a step uncompiled if one layer cannot be compiled: the stage must say so
    rather than report the `train.xla` it was asked for."""

    from mnist_mlops.training.models import build_model, step_compiled, uncompilable_layers

    for name, p in PARAMS.models.items():
        assert uncompilable_layers(build_model(p)) == (
            ["RandomRotation", "RandomTranslation", "RandomZoom"] if name == "cnn_bn_aug"
            else []), name
    lenet, aug = (build_model(PARAMS.models[n]) for n in ("lenet_28_50", "cnn_bn_aug"))
    tp = PARAMS.train.model_copy(update={"xla": True, "deterministic": False})
    assert step_compiled(lenet, tp) is True
    assert step_compiled(aug, tp) is False
    assert step_compiled(lenet, tp.model_copy(update={"xla": False})) is False


def test_cosine_schedule_runs_from_the_rate_to_zero() -> None:
    from mnist_mlops.training.models import make_optimizer

    p = PARAMS.models["cnn_bn_aug"]
    assert p.lr_schedule == "cosine"
    opt = make_optimizer(p, total_steps=100)
    assert float(opt.learning_rate) == pytest.approx(p.learning_rate)
    opt.iterations.assign(50)
    assert float(opt.learning_rate) == pytest.approx(p.learning_rate / 2, rel=1e-3)
    opt.iterations.assign(100)
    assert float(opt.learning_rate) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="total number of steps"):
        make_optimizer(p)


@pytest.mark.parametrize(("scaling", "expected"), [
    ("centered", [-1.0, 0.0, 128 / 127]), ("unit", [0.0, 127 / 255, 1.0]),
    ("none", [0.0, 127.0, 255.0]),
])
def test_scaling_is_inside_the_model(scaling: str, expected: list[float]) -> None:
    import keras

    from mnist_mlops.training.models import build_model

    p = PARAMS.models["mlp_512x2"].model_copy(update={"scaling": scaling})
    model = build_model(p)
    first_dense = next(i for i, layer in enumerate(model.layers)
                       if isinstance(layer, keras.layers.Flatten))
    probe = keras.Model(model.inputs, model.layers[first_dense].output)
    x = np.zeros((1, 28, 28, 1), np.uint8)
    x[0, 0, :3, 0] = [0, 127, 255]
    out = np.asarray(probe(x.astype("float32")))[0, :3]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_hidden_units_and_activation_are_parameters() -> None:
    import keras

    from mnist_mlops.training.models import build_model

    p = PARAMS.models["mlp_512x2"].model_copy(
        update={"hidden_units": (128, 128), "activation": "linear"})
    model = build_model(p)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [128, 128, 10]
    assert dense[0].activation.__name__ == "linear"


def test_ensemble_averages_and_round_trips_as_h5(tmp_path: Path) -> None:
    import keras

    from mnist_mlops.training.models import build_model, compile_model, ensemble

    p = PARAMS.models["cnn_32_64_64"]
    members = [compile_model(build_model(p), p) for _ in range(2)]
    ens = ensemble(members, p.name)
    x = np.random.default_rng(0).integers(0, 255, (3, 28, 28, 1)).astype("float32")
    expected = (np.asarray(members[0](x)) + np.asarray(members[1](x))) / 2
    np.testing.assert_allclose(np.asarray(ens(x)), expected, rtol=1e-5, atol=1e-6)
    ens.save(tmp_path / "e.h5")
    back = keras.saving.load_model(tmp_path / "e.h5", compile=False)
    np.testing.assert_allclose(np.asarray(back(x)), expected, rtol=1e-5, atol=1e-6)


def test_a_mixed_precision_ensemble_ships_in_float32_with_its_weights() -> None:
    """What the train stage saves after mixed-precision training computes in float32:
    ONNX Runtime has no kernels for a graph mixing bfloat16 and float32."""
    import keras

    from mnist_mlops.training.models import build_model, ensemble, in_float32

    p = PARAMS.models["cnn_bn_aug"]
    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype("float32")
    try:      # as the stage converts it: the training's policy still set
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        trained = ensemble([build_model(p) for _ in range(2)], p.name)
        shipped = in_float32(trained)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all_policies(shipped) == {"float32"}
    for ours, theirs in zip(shipped.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # same answers up to bfloat16's rounding (8 bits of mantissa)
    np.testing.assert_allclose(shipped.predict(x, verbose=0), trained.predict(x, verbose=0),
                               atol=0.05)
    assert in_float32(shipped) is shipped       # a float32 model ships as it is


def all_policies(model: object) -> set[str]:
    """The dtype policies of a model's layers, an ensemble's members' included."""
    return {sub.dtype_policy.name for layer in model.layers
            for sub in [layer, *getattr(layer, "layers", [])]}


@pytest.mark.parametrize("final", ["refit", "best_fold", "ensemble"])
def test_every_kind_of_final_model_ships_in_float32(final: str) -> None:
    import keras

    from mnist_mlops.training.fit import FitContext, FitResult, final_model
    from mnist_mlops.training.models import build_model

    p = PARAMS.models["cnn_28_dense128"].model_copy(update={"final": None})
    tp = PARAMS.train.model_copy(update={"final": final, "mixed_precision": "bfloat16"})
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        cv = [FitResult(build_model(p), {}, 1, 0.5, loss) for loss in (0.7, 0.6)]
        shipped = final_model(FitContext(p, tp), cv, FitResult(build_model(p), {"loss": [1.0]}))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all_policies(shipped.model) == {"float32"}
    if final == "best_fold":        # the fold with the lower validation loss
        np.testing.assert_array_equal(shipped.model.get_weights()[0], cv[1].model.get_weights()[0])
