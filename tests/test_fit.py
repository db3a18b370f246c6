"""The fit loop (training/fit.py): the fits of one recipe train on one compiled model, so
Keras traces their steps once, and still end exactly as fits on a model of their own; the
epochs' batches come from tensors made once per fit (training/feed.py), and train exactly
as the same arrays handed to Keras would."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from mnist_mlops.core.config import TrainParams, load_params
from mnist_mlops.core.runtime import UserError
from mnist_mlops.training.feed import Feed
from mnist_mlops.training.fit import (
    FitContext,
    FitJob,
    SharedStep,
    configure,
    fit,
    job_data,
    plan_fits,
    resumable_fit,
)

from .conftest import ROOT


def synthetic(n: int, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = np.arange(n) % 10
    return (x, y), np.arange(n) % 2


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_fits_on_one_compiled_model_end_as_fits_on_their_own(schedule: str) -> None:
    """mlp_512x2 has dropout, whose seed state must start afresh per fit too. Under a
    constant learning rate the refit trains on the folds' compiled model; under a cosine
    schedule, whose length is compiled in, it needs one of its own."""
    p = load_params(ROOT / "params.yaml").model("mlp_512x2").model_copy(
        update={"lr_schedule": schedule, "batch_size": 32})
    tp = TrainParams(max_epochs=2)
    configure(tp)
    train, folds = synthetic(80)      # a fold trains 2 steps an epoch, the refit 3
    ctx = FitContext(p, tp)
    jobs = plan_fits(ctx, folds)
    assert [j.key for j in jobs] == ["fold-0", "fold-1", "final"]
    results, steps, first = {}, [], None
    for job in jobs:
        results[job.key] = resumable_fit(ctx, job, *job_data(job, train, folds))
        steps.append(ctx.step.model.train_function)
        first = first or [w.copy() for w in results[job.key].model.get_weights()]
    assert steps[1] is steps[0], "the second fold trained on a model of its own"
    assert (steps[2] is steps[0]) == (schedule == "constant")
    for a, b in zip(results["fold-0"].model.get_weights(), first, strict=True):
        np.testing.assert_array_equal(a, b, err_msg="the later fits changed fold-0's model")
    for job in jobs[1:]:      # the fits after the first, each on a compiled model of its own
        alone = resumable_fit(FitContext(p, tp), job, *job_data(job, train, folds))
        got = results[job.key]
        assert got.model is not ctx.step.model
        assert got.history == alone.history and got.best_epoch == alone.best_epoch
        for a, b in zip(got.model.get_weights(), alone.model.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{schedule} {job.key}")


def test_a_shared_step_travels_empty() -> None:
    """What is sent to a Ray worker carries no compiled model: the worker builds its own."""
    step = SharedStep()
    step.model = step._models[None] = object()      # stands for a compiled model
    arrived = pickle.loads(pickle.dumps(step))
    assert arrived.model is None and arrived._models == {}


def test_an_epochs_feed_is_the_arrays_in_the_epochs_order() -> None:
    (x, y), _ = synthetic(70)
    order = np.random.default_rng(3).permutation(70)
    batches = list(Feed(x, y, 32).epoch(order).as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[order])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[order])
    with pytest.raises(ValueError, match="an epoch of 69 images from a feed of 70"):
        Feed(x, y, 32).epoch(order[:-1])
    val = list(Feed(x, y, 32, size=64).in_order().as_numpy_iterator())
    assert [len(b[0]) for b in val] == [32, 32]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in val]), x[:64])


def test_the_feed_does_not_autotune() -> None:
    """tf.data's autotuning left the cores idle as each epoch's iterator ended (feed.py)."""
    (x, y), _ = synthetic(70)
    assert Feed(x, y, 32).batches.options().autotune.enabled is False
    assert Feed(x, y, 32, size=64).in_order().options().autotune.enabled is False


def test_an_order_set_after_the_iterator_is_made_is_the_one_read() -> None:
    """The feed makes no batch until one is asked for, so an iterator made before an epoch's
    order is set (Keras makes one as an epoch ends, though it reads a fresh one each epoch)
    still reads that order."""
    x, y = np.arange(640, dtype=np.float32).reshape(640, 1), np.arange(640)
    feed = Feed(x, y, 32)
    early = iter(feed.epoch(np.arange(640)))
    time.sleep(0.5)                  # time for any read-ahead to run, were there one
    feed.epoch(np.arange(640)[::-1].copy())
    first = next(early)
    np.testing.assert_array_equal(first[1], np.arange(640)[::-1][:32])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp_512x2", "cnn_bn_aug"])   # one-hot and sparse targets
def test_training_on_the_feed_equals_training_on_the_arrays(name: str) -> None:
    """What Keras does with NumPy arrays, the feed does without rebuilding them per epoch."""
    from mnist_mlops.training.models import new_model, targets

    p = load_params(ROOT / "params.yaml").model(name)
    tp = TrainParams(max_epochs=2)
    configure(tp)
    (x, y), _ = synthetic(150)
    yt, (xv, yv) = targets(y, p), (x[:40], targets(y[:40], p))
    orders = [np.random.default_rng(e).permutation(len(x)) for e in range(2)]
    on_arrays, on_feed = new_model(p, tp, 0, len(x)), new_model(p, tp, 0, len(x))
    feed, val = Feed(x, yt, p.batch_size), Feed(xv, yv, p.batch_size).in_order()
    for e, order in enumerate(orders):
        a = on_arrays.fit(x[order], yt[order], batch_size=p.batch_size, epochs=e + 1,
                          initial_epoch=e, validation_data=(xv, yv), shuffle=False, verbose=0)
        b = on_feed.fit(feed.epoch(order), epochs=e + 1, initial_epoch=e,
                        validation_data=val, shuffle=False, verbose=0)
        assert a.history == b.history
    for u, v in zip(on_arrays.get_weights(), on_feed.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp_512x2", "cnn_bn_aug"])   # dropout; augmentation, BN
def test_one_call_for_a_fits_epochs_trains_as_a_call_per_epoch(name: str) -> None:
    """`fit` hands Keras all its epochs in one call and sets each epoch's own seeded order
    as the epoch begins: the same epochs, best epoch and weights as a call per epoch on the
    arrays in those orders. An order set too late (Keras reading the epoch first) would
    train an epoch in the order before it, and fail here from the second epoch on."""
    from mnist_mlops.training.models import epoch_order, new_model, targets

    p = load_params(ROOT / "params.yaml").model(name)
    tp, job = TrainParams(max_epochs=3), FitJob("fold-1", 1, "fold 2/2")
    configure(tp)
    (x, y), _ = synthetic(150)
    xv, yv = x[:40], y[:40]
    got = fit(FitContext(p, tp), job, (x, y), (xv, yv))
    per_call, history, weights = new_model(p, tp, job.index, len(x)), {}, []
    for e in range(3):
        order = epoch_order(tp.seed, job.index, e, len(x))
        h = per_call.fit(x[order], targets(y, p)[order], batch_size=p.batch_size,
                         epochs=e + 1, initial_epoch=e, validation_data=(xv, targets(yv, p)),
                         shuffle=False, verbose=0)
        for k, v in h.history.items():
            history.setdefault(k, []).append(v[-1])
        weights.append(per_call.get_weights())
    assert got.history == history
    best = int(np.argmin(history["val_loss"]))
    assert got.best_epoch == best + 1
    for a, b in zip(got.model.get_weights(), weights[best], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_cap_on_an_epochs_steps_is_refused_before_training() -> None:
    """Keras's debugging cap on an epoch's steps keeps one iterator across epochs, which
    would train an epoch in the order before it: refused in one line, nothing trained."""
    import keras

    p = load_params(ROOT / "params.yaml").model("mlp_512x2")
    tp = TrainParams(max_epochs=2)
    configure(tp)
    keras.config.set_max_steps_per_epoch(1)
    try:
        with pytest.raises(UserError, match="unset it to train") as err:
            fit(FitContext(p, tp), FitJob("fold-0", 0, "fold 1/2"), synthetic(40)[0])
    finally:
        keras.config.set_max_steps_per_epoch(None)
    assert "KERAS_MAX_STEPS_PER_EPOCH" in str(err.value)
