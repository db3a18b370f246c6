"""The six documented architectures (../shared/spec/architectures.md), layer for layer, the
project's own `cnn_bn_aug`, and how a fit's model and epochs are made from a recipe.

Each model takes raw 0-255 pixels shaped (28, 28, 1): its tutorial's input scaling is a
Rescaling layer inside the model, so the saved .h5 file is all serving needs. What params
must say about each architecture (hidden sizes, dropout, parameter count) is in config.py,
without Keras. Only backend-neutral Keras 3 is used, so the same code runs on TensorFlow,
JAX or PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers as L

from mnist_mlops.core.config import ModelParams, TrainParams
from mnist_mlops.core.mnist import INPUT_SHAPE, NUM_CLASSES
from mnist_mlops.training import backend
from mnist_mlops.training.recipe import effective_epochs


def _fc_1024_512(p: ModelParams) -> list[Any]:
    a, b = p.hidden_units
    return [
        L.Flatten(),  # the tutorial's Input(784)
        L.Dense(a, activation=p.activation, kernel_initializer="he_normal"),
        L.Dropout(p.dropout),
        L.Dense(b, activation=p.activation, kernel_initializer="he_normal"),
        L.Dropout(p.dropout),
    ]


def _lenet_28_50(p: ModelParams) -> list[Any]:
    return [
        L.Conv2D(28, 5, activation=p.activation, padding="same"),
        L.MaxPooling2D(2),
        L.Conv2D(50, 5, activation=p.activation, padding="same"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(p.hidden_units[0], activation=p.activation),
    ]


def _mlp_512x2(p: ModelParams) -> list[Any]:
    a, b = p.hidden_units
    return [
        L.Flatten(),
        L.Dense(a, activation=p.activation),
        L.Dropout(p.dropout),
        L.Dense(b, activation=p.activation),
        L.Dropout(p.dropout),
    ]


def _cnn_32_64_64(p: ModelParams) -> list[Any]:
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
    return [
        L.Conv2D(28, 3),  # no activation, as in tutorial 003
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(p.hidden_units[0], activation=p.activation),
        L.Dropout(p.dropout),
    ]


def _cnn_deep_dropout(p: ModelParams) -> list[Any]:
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


def _augment() -> list[Any]:
    """Random rotation, zoom and shift of the digit, as the anchors use (about 10 degrees,
    10 %, 10 %). Keras runs these layers only in training: evaluation and serving see the
    image as it is, so the saved .h5 still takes raw pixels. Blank (0) fills the border."""
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    return [
        L.RandomRotation(10 / 360, **fill),
        L.RandomZoom(0.1, **fill),
        L.RandomTranslation(0.1, 0.1, **fill),
    ]


def _conv_bn(filters: int, size: int, act: str, strides: int = 1,
             padding: str = "valid") -> list[Any]:
    return [
        L.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False),
        L.BatchNormalization(),
        L.Activation(act),
    ]


def _cnn_bn_aug(p: ModelParams) -> list[Any]:
    """The project's own model, not from the tutorials: the small CNN of Deotte's MNIST
    study (32C3-32C3-32C5S2-64C3-64C3-64C5S2-128C4, BatchNorm, dropout) with augmentation
    in the model; strided 5x5 convolutions replace max pooling."""
    act, drop = p.activation, p.dropout
    return [
        *_augment(),
        *_conv_bn(32, 3, act), *_conv_bn(32, 3, act),
        *_conv_bn(32, 5, act, strides=2, padding="same"), L.Dropout(drop),
        *_conv_bn(64, 3, act), *_conv_bn(64, 3, act),
        *_conv_bn(64, 5, act, strides=2, padding="same"), L.Dropout(drop),
        *_conv_bn(p.hidden_units[0], 4, act), L.Flatten(), L.Dropout(drop),
    ]


LAYERS: dict[str, Callable[[ModelParams], list[Any]]] = {
    "fc_1024_512": _fc_1024_512,
    "lenet_28_50": _lenet_28_50,
    "mlp_512x2": _mlp_512x2,
    "cnn_32_64_64": _cnn_32_64_64,
    "cnn_28_dense128": _cnn_28_dense128,
    "cnn_deep_dropout": _cnn_deep_dropout,
    "cnn_bn_aug": _cnn_bn_aug,
}

SCALING = {  # name -> (scale, offset) of a Rescaling layer; "none" feeds raw 0-255 pixels
    "centered": (1 / 127, -1.0),  # (x - 127) / 127
    "unit": (1 / 255, 0.0),       # x / 255
}


def build_model(p: ModelParams) -> keras.Model:
    """The architecture of `p`, with its input scaling inside, uncompiled."""
    scaling = [L.Rescaling(*SCALING[p.scaling])] if p.scaling in SCALING else []
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE, name="pixels"),
            *scaling,
            *LAYERS[p.architecture](p),
            # float32 output even under mixed precision, for a numerically sound softmax
            L.Dense(NUM_CLASSES, activation="softmax", dtype="float32"),
        ],
        name=p.name,
    )


def make_optimizer(p: ModelParams, total_steps: int | None = None
                   ) -> keras.optimizers.Optimizer:
    """The recipe's optimizer. A schedule is a function of the optimizer's step counter,
    which the checkpoint keeps, so a resumed fit continues on the same curve."""
    classes = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
               "sgd": keras.optimizers.SGD}
    lr: float | keras.optimizers.schedules.LearningRateSchedule = p.learning_rate
    if p.lr_schedule == "cosine":
        if not total_steps:
            raise ValueError("a cosine schedule needs the fit's total number of steps")
        lr = keras.optimizers.schedules.CosineDecay(p.learning_rate, total_steps)
    return classes[p.optimizer](learning_rate=lr)


def compile_model(model: keras.Model, p: ModelParams, *, jit_compile: bool | str = "auto",
                  total_steps: int | None = None, steps_per_execution: int = 1
                  ) -> keras.Model:
    loss = ("categorical_crossentropy" if p.loss == "categorical"
            else "sparse_categorical_crossentropy")
    model.compile(optimizer=make_optimizer(p, total_steps), loss=loss,
                  metrics=["accuracy"], jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    return model


def ensemble(members: list[keras.Model], name: str) -> keras.Model:
    """One model averaging the members' softmax outputs (the `ensemble` final model)."""
    inp = keras.Input(INPUT_SHAPE, name="pixels")
    for i, m in enumerate(members):
        m.name = f"{name}_fold{i}"
    out = L.Average(name="mean_softmax")([m(inp) for m in members])
    return keras.Model(inp, out, name=f"{name}_ensemble")


def in_float32(model: keras.Model) -> keras.Model:
    """`model` computing in float32 with its trained weights: what ships after a
    mixed-precision training (train.mixed_precision), so that Keras and the ONNX export
    answer in float32 wherever the model is loaded. The model itself where it is float32."""
    if all(layer.dtype_policy.name == "float32" for layer in _layers(model)):
        return model
    config = _float32_policies(keras.saving.serialize_keras_object(model))
    with backend.policy("float32"):    # for what the config leaves out: inputs, nested models
        clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(model.get_weights())
    return clone


def _float32_policies(config: Any) -> Any:
    """A serialized model's config with every dtype policy float32."""
    if isinstance(config, list):
        return [_float32_policies(v) for v in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy":
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {k: _float32_policies(v) for k, v in config.items()}


def targets(labels: np.ndarray, p: ModelParams) -> np.ndarray:
    """Integer labels for sparse loss, one-hot for categorical."""
    return keras.utils.to_categorical(labels, NUM_CLASSES) if p.loss == "categorical" \
        else labels


def _layers(model: keras.Model) -> list[Any]:
    """Every layer, those of nested models (an ensemble's members) included."""
    return [sub for layer in model.layers
            for sub in [layer, *(_layers(layer) if isinstance(layer, keras.Model) else [])]]


def uncompilable_layers(model: keras.Model) -> list[str]:
    """Layers that Keras cannot compile into a train step (its random image transforms):
    where there is one, Keras runs the whole step uncompiled."""
    return sorted({type(layer).__name__ for layer in _layers(model) if not layer.supports_jit})


def step_compiled(model: keras.Model, tp: TrainParams) -> bool:
    """Whether `model`'s train step is compiled (XLA): `train.xla` as the backend resolves
    it (backend.jit_compile), unless a layer cannot be."""
    return backend.jit_compile(tp.xla, tp.deterministic) and not uncompilable_layers(model)


def new_model(p: ModelParams, tp: TrainParams, fit_index: int, n_train: int) -> keras.Model:
    """A compiled model whose initial weights depend only on the seed and the fit's index,
    so a resumed stage builds exactly what an uninterrupted one would have. `n_train` sets
    the length of a learning-rate schedule (steps per epoch x epochs)."""
    keras.utils.set_random_seed(tp.seed + 1000 * fit_index)
    model = build_model(p)
    compile_model(model, p, jit_compile=step_compiled(model, tp),
                  total_steps=fit_steps(p, tp, n_train),
                  steps_per_execution=backend.steps_per_execution(tp.steps_per_execution))
    model.optimizer.build(model.trainable_variables)
    return model


def fit_steps(p: ModelParams, tp: TrainParams, n_train: int) -> int:
    """A fit's optimizer steps (steps per epoch x epochs): the length of its schedule."""
    return max(1, math.ceil(n_train / p.batch_size)) * effective_epochs(p, tp)


def step_key(p: ModelParams, tp: TrainParams, n_train: int) -> int | None:
    """What of a fit's size its compiled train step holds as a constant: the schedule's
    length, None without a schedule. Fits of one recipe with the same key can train on one
    compiled model (fit.SharedStep)."""
    return None if p.lr_schedule == "constant" else fit_steps(p, tp, n_train)


def epoch_order(seed: int, fit_index: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of one epoch: a function of its number, not of the epochs before it."""
    return np.random.default_rng([seed, fit_index, epoch]).permutation(n)
