"""The six documented architectures (../shared/spec/architectures.md), layer for layer.

Each model takes raw 0-255 pixels shaped (28, 28, 1): its tutorial's input scaling is a
Rescaling layer inside the model, so the saved .h5 file is all serving needs. Keras is
imported inside the builders so that loading params.yaml stays fast for the data stages.
Only backend-neutral Keras 3 is used, so the same code runs on TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

    from mnist_mlops.config import ModelParams

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Architecture:
    n_hidden: int          # how many sizes `hidden_units` must list
    has_dropout: bool      # whether `dropout` applies
    layers: Callable[[ModelParams], list[Any]]
    params: int            # parameter count at the tutorial's settings (the spec)


def _fc_1024_512(p: ModelParams) -> list[Any]:
    from keras import layers as L

    a, b = p.hidden_units
    return [
        L.Flatten(),  # the tutorial's Input(784)
        L.Dense(a, activation=p.activation, kernel_initializer="he_normal"),
        L.Dropout(p.dropout),
        L.Dense(b, activation=p.activation, kernel_initializer="he_normal"),
        L.Dropout(p.dropout),
    ]


def _lenet_28_50(p: ModelParams) -> list[Any]:
    from keras import layers as L

    return [
        L.Conv2D(28, 5, activation=p.activation, padding="same"),
        L.MaxPooling2D(2),
        L.Conv2D(50, 5, activation=p.activation, padding="same"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(p.hidden_units[0], activation=p.activation),
    ]


def _mlp_512x2(p: ModelParams) -> list[Any]:
    from keras import layers as L

    a, b = p.hidden_units
    return [
        L.Flatten(),
        L.Dense(a, activation=p.activation),
        L.Dropout(p.dropout),
        L.Dense(b, activation=p.activation),
        L.Dropout(p.dropout),
    ]


def _cnn_32_64_64(p: ModelParams) -> list[Any]:
    from keras import layers as L

    return [
        L.Conv2D(32, 3, activation=p.activation),
        L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation=p.activation),
        L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation=p.activation),
        L.Flatten(),
        L.Dense(p.hidden_units[0], activation=p.activation),
    ]


def _cnn_28_dense128(p: ModelParams) -> list[Any]:
    from keras import layers as L

    return [
        L.Conv2D(28, 3),  # no activation, as in tutorial 003
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(p.hidden_units[0], activation=p.activation),
        L.Dropout(p.dropout),
    ]


def _cnn_deep_dropout(p: ModelParams) -> list[Any]:
    from keras import layers as L

    act = p.activation
    return [
        L.Conv2D(16, 3, activation=act),
        L.Conv2D(32, 3, activation=act, padding="same"),
        L.MaxPooling2D(2),
        L.Dropout(p.dropout),
        L.Conv2D(32, 3, activation=act, padding="same"),
        L.Conv2D(64, 3, activation=act, padding="same"),
        L.MaxPooling2D(2),
        L.Dropout(p.dropout),
        L.Conv2D(64, 3, activation=act, padding="same"),
        L.MaxPooling2D(2),
        L.Dropout(p.dropout),
        L.Flatten(),
        L.Dense(p.hidden_units[0], activation=act),
    ]


ARCHITECTURES: dict[str, Architecture] = {
    "fc_1024_512": Architecture(2, True, _fc_1024_512, 1_333_770),
    "lenet_28_50": Architecture(1, False, _lenet_28_50, 1_266_288),
    "mlp_512x2": Architecture(2, True, _mlp_512x2, 669_706),
    "cnn_32_64_64": Architecture(1, False, _cnn_32_64_64, 93_322),
    "cnn_28_dense128": Architecture(1, True, _cnn_28_dense128, 607_394),
    "cnn_deep_dropout": Architecture(1, True, _cnn_deep_dropout, 370_026),
}

SCALING = {  # name -> (scale, offset) of a Rescaling layer; "none" feeds raw 0-255 pixels
    "centered": (1 / 127, -1.0),  # (x - 127) / 127
    "unit": (1 / 255, 0.0),       # x / 255
}


def build_model(p: ModelParams) -> keras.Model:
    """The architecture of `p`, with its input scaling inside, uncompiled."""
    import keras
    from keras import layers as L

    scaling = [L.Rescaling(*SCALING[p.scaling])] if p.scaling in SCALING else []
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE, name="pixels"),
            *scaling,
            *ARCHITECTURES[p.architecture].layers(p),
            # float32 output even under mixed precision, for a numerically sound softmax
            L.Dense(NUM_CLASSES, activation="softmax", dtype="float32"),
        ],
        name=p.name,
    )


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    import keras

    classes = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
               "sgd": keras.optimizers.SGD}
    return classes[name](learning_rate=learning_rate)


def compile_model(model: keras.Model, p: ModelParams, *, jit_compile: bool | str = False
                  ) -> keras.Model:
    loss = ("categorical_crossentropy" if p.loss == "categorical"
            else "sparse_categorical_crossentropy")
    model.compile(optimizer=make_optimizer(p.optimizer, p.learning_rate), loss=loss,
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model


def ensemble(members: list[keras.Model], name: str) -> keras.Model:
    """One model averaging the members' softmax outputs (the `ensemble` final model)."""
    import keras
    from keras import layers as L

    inp = keras.Input(INPUT_SHAPE, name="pixels")
    for i, m in enumerate(members):
        m.name = f"{name}_fold{i}"
    out = L.Average(name="mean_softmax")([m(inp) for m in members])
    return keras.Model(inp, out, name=f"{name}_ensemble")
