"""The fit loop (training/fit.py): the fits of one recipe train on one compiled model, so
Keras traces their steps once, and still end exactly as fits on a model of their own."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mnist_mlops.core.config import TrainParams, load_params
from mnist_mlops.training.fit import (
    FitContext,
    SharedStep,
    configure,
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
    train, folds = synthetic(80)      # the refit takes twice a fold's steps
    ctx = FitContext(p, tp)
    jobs = plan_fits(ctx, folds)
    assert [j.key for j in jobs] == ["fold-0", "fold-1", "final"]
    results, steps, first = {}, [], None
    for job in jobs:
        results[job.key] = resumable_fit(ctx, job, *job_data(job, train, folds))
        steps.append(ctx.step.model.train_function)
        first = first or [w.copy() for w in results[job.key].model.get_weights()]
    assert steps[1] is steps[0], "the second fold traced a train step of its own"
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
    step._model = object()          # stands for a compiled model that cannot be pickled
    assert pickle.loads(pickle.dumps(step)).model is None
