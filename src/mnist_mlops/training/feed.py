"""How a fit's images reach Keras: one tf.data pipeline per fit over tensors made once.

Every epoch of a fit trains in its own seeded order, set as the epoch begins (the fit
loop's one `model.fit` call per fit reads the feed anew each epoch). Handed NumPy arrays in
that order, Keras would turn them into tensors and build its input pipeline again for every
epoch, the validation set's included: a fixed cost of about 0.1 s an epoch on a CPU,
whatever the epoch's length. Here the images become tensors once per fit, and one pipeline,
built then, gathers each batch by index from the order the epoch sets (a TensorFlow
variable, read as each batch is made: Keras makes each epoch's iterator as the epoch
asks for its first batch, once the order is set, and tf.data makes no batch before that;
tests/test_fit.py checks the epochs against a call per epoch),
as Keras's own pipeline gathers its batches: the tensors on the CPU, zipped in, not
captured, and tf.data's graph rewrites off, which would copy them. The batches hold the
same values in the same order as the arrays' would, so the training is the same, bit for
bit. tf.data is TensorFlow's, which every training install has; Keras feeds it to its JAX
and PyTorch backends too (TensorFlow then stays off the GPUs: backend.input_device).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_mlops.training import backend

if TYPE_CHECKING:
    import tensorflow as tf


class Feed:
    """Images and their targets, as tensors, handed out in batches in the order an epoch
    sets. Every order has the same length, `size` (the images used per epoch)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int,
                 size: int | None = None) -> None:
        import tensorflow as tf

        self.size = len(x) if size is None else size
        with tf.device(backend.input_device()):
            self._order = tf.Variable(np.arange(self.size), dtype=tf.int64, trainable=False)
            data = (tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        self._dataset = _batches(data, self._order, batch_size, self.size)

    @property
    def batches(self) -> tf.data.Dataset:
        """The one pipeline, in whatever order `epoch` last set (Keras reads it anew each
        epoch)."""
        return self._dataset

    def epoch(self, order: np.ndarray) -> tf.data.Dataset:
        """The batches of the images at `order`, in that order (the last may be partial)."""
        if len(order) != self.size:
            raise ValueError(f"an epoch of {len(order)} images from a feed of {self.size}")
        self._order.assign(order)
        return self.batches

    def in_order(self) -> tf.data.Dataset:
        """The first `size` images once, in their own order: a validation set, whole fit."""
        return self.epoch(np.arange(self.size))


def _batches(data: tuple[Any, Any], order: Any, batch_size: int, size: int
             ) -> tf.data.Dataset:
    import tensorflow as tf

    def grab(b: Any, d: tuple[Any, Any]) -> tuple[Any, Any]:
        i = order[b * batch_size:(b + 1) * batch_size]
        return tf.gather(d[0], i), tf.gather(d[1], i)

    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    # No autotuning: as Keras drops an epoch's iterator at the epoch's end, the iterator
    # waits for autotuning's background thread, asleep, while every core idles: seconds
    # in some epochs, none in others (docs/benchmarks.md, "Idle cores as each epoch
    # ends"). The map only gathers a batch by index; TensorFlow's default parallelism
    # serves it.
    options.autotune.enabled = False
    return tf.data.Dataset.zip((
        tf.data.Dataset.range(math.ceil(size / batch_size)),
        tf.data.Dataset.from_tensors(data).repeat(),
    )).map(grab, num_parallel_calls=tf.data.AUTOTUNE).with_options(options)
