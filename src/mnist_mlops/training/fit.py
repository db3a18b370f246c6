"""The fit loop: one fit epoch by epoch, K-fold cross validation, the final model.

This is model code: what it computes is what ships, so it is a DVC dependency of every
`train@<model>` and part of the checkpoint fingerprint (checkpoint.MODEL_CODE). Everything
that only reports (MLflow, the terminal, CSV files) reaches it through `FitHooks`, so a
reworded log line elsewhere never retrains a model.

Per fold, train on the other folds and keep the weights of the epoch with the lowest
validation loss (the tutorials' save_best_only). Every finished epoch is checkpointed and a
resumed fit continues bit for bit as if never stopped: each fit is seeded by its index and
each epoch's shuffle by its number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mnist_mlops.core.config import ModelParams, TrainParams
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data.dataset import load_dataset, load_folds
from mnist_mlops.training import backend
from mnist_mlops.training.checkpoint import Checkpoint, FitProgress, state_variables
from mnist_mlops.training.feed import Feed
from mnist_mlops.training.recipe import effective_epochs, final_kind

if TYPE_CHECKING:  # Keras is imported where it is used: after run_main has quietened
    import keras  # TensorFlow's start-up lines (runtime.quiet_native_stderr)

FINAL = "final"
Split = tuple[np.ndarray, np.ndarray]    # images (n, 28, 28, 1) float32, labels (n,)


@dataclass(frozen=True)
class FitJob:
    """One fit: its checkpoint key ("fold-0", "final"), seed index and display label."""

    key: str
    index: int
    label: str
    tags: dict[str, str] = field(default_factory=dict)
    fold: int | None = None            # the fold it validates on; None: the refit


@dataclass
class FitResult:
    model: keras.Model | None
    history: dict[str, list[float]]
    best_epoch: int | None = None          # 1-based; None without validation
    val_accuracy: float | None = None
    val_loss: float | None = None
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What the checkpoint keeps of a finished fit (everything but the model)."""
        return {"history": self.history, "best_epoch": self.best_epoch,
                "val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
                "seconds": self.seconds, "epoch_seconds": self.epoch_seconds}

    def epochs(self) -> list[tuple[int, dict[str, float], float]]:
        """Each epoch (1-based) with its metrics and seconds, as the hooks were told them."""
        n = len(self.history.get("loss", []))
        times = self.epoch_seconds + [0.0] * (n - len(self.epoch_seconds))
        return [(e + 1, {k: v[e] for k, v in self.history.items()}, times[e])
                for e in range(n)]


class FitHooks(Protocol):
    """What the stage does around the loop (tracking, progress): never changes the model.
    Calls come before the matching checkpoint write, so a kill between the two redoes the
    work on resume rather than losing its record."""

    def fit_start(self, job: FitJob, sizes: tuple[int, int], resumed_after: int) -> None:
        """Before the first epoch to run: (train, validation) sizes, epochs already done."""

    def epoch_end(self, job: FitJob, epoch: int, logs: dict[str, float],
                  seconds: float) -> None: ...

    def fit_end(self, job: FitJob, result: FitResult) -> None: ...


class NoHooks:
    """Hooks that do nothing (benchmarks, tests of the loop alone)."""

    def fit_start(self, job: FitJob, sizes: tuple[int, int], resumed_after: int) -> None:
        pass

    def epoch_end(self, job: FitJob, epoch: int, logs: dict[str, float],
                  seconds: float) -> None:
        pass

    def fit_end(self, job: FitJob, result: FitResult) -> None:
        pass


class SharedStep:
    """The compiled model that the fits of one recipe train on in turn, so that Keras traces
    its train and validation steps once per model, not once per fit (1-2 s each on a CPU
    in `make quick`). Each fit still starts from its own freshly built model, whose state is
    copied in first, and gets the trained state copied back out: the results are bit for bit
    those of a new model per fit. A traced model never travels: a copy sent to a Ray worker
    arrives empty."""

    def __init__(self) -> None:
        self._models: dict[int | None, keras.Model] = {}
        self.model: keras.Model | None = None     # the one the last fit trained on

    def __getstate__(self) -> dict[str, Any]:
        return {"_models": {}, "model": None}

    def start(self, ctx: FitContext, job: FitJob, n_train: int) -> tuple[keras.Model,
                                                                        keras.Model]:
        """(the model to train, the fit's own model): the first holds the second's state."""
        from mnist_mlops.training.models import new_model, step_key

        own = new_model(ctx.p, ctx.tp, job.index, n_train)
        key = step_key(ctx.p, ctx.tp, n_train)
        if key not in self._models:
            self._models[key] = new_model(ctx.p, ctx.tp, job.index, n_train)
        self.model = self._models[key]
        copy_state(own, self.model)
        return self.model, own


def copy_state(source: keras.Model, target: keras.Model) -> None:
    """Every variable of a compiled model, optimizer included, into another of its kind: as
    copies, since a JAX train step frees the arrays it was given (donated buffers)."""
    import keras

    for s, t in zip(state_variables(source), state_variables(target), strict=True):
        t.assign(keras.ops.copy(s.value))


@dataclass(frozen=True)
class FitContext:
    """What every fit of one model shares: its recipe, the train params, where it resumes
    from, the stage's hooks, and the compiled model the fits train on."""

    p: ModelParams
    tp: TrainParams
    ckpt: Checkpoint | None = None
    hooks: FitHooks = field(default_factory=NoHooks)
    step: SharedStep = field(default_factory=SharedStep, compare=False, repr=False)

    @property
    def epochs(self) -> int:
        return effective_epochs(self.p, self.tp)


def concrete(tp: TrainParams) -> TrainParams:
    """`tp` with train.mixed_precision as the type it takes here (auto and true depend on the
    device): what a checkpoint is keyed by, and what the stage sends to Ray workers, so that
    every fit of a model computes in one type whichever node it lands on."""
    return tp.model_copy(update={"mixed_precision":
                                 backend.half_type(tp.mixed_precision) or False})


def configure(tp: TrainParams) -> None:
    """Seeds, deterministic ops and the precision policy: before any model is built."""
    backend.configure(seed=tp.seed, deterministic=tp.deterministic,
                      mixed_precision=tp.mixed_precision)


class FitRunner(Protocol):
    """Runs independent fits and returns each one's result by key: one after another in this
    process (`run_here`), or as tasks on a Ray cluster (training/ray_fits.py)."""

    def __call__(self, ctx: FitContext, jobs: list[FitJob], train: Split,
                 folds: np.ndarray) -> dict[str, FitResult]: ...


def train_model(ctx: FitContext, train: Split, folds: np.ndarray,
                runner: FitRunner | None = None) -> tuple[list[FitResult], FitResult]:
    """Cross validation on `folds`, then the model that ships (`final_model`). The folds and
    a refit depend on nothing but the data, so `runner` may run them in any order or at once."""
    jobs = plan_fits(ctx, folds)
    results = (runner or run_here)(ctx, jobs, train, folds)
    cv = [results[job.key] for job in jobs if job.key != FINAL]
    return cv, final_model(ctx, cv, results.get(FINAL))


def plan_fits(ctx: FitContext, folds: np.ndarray) -> list[FitJob]:
    """Every fit of one model: one per fold (validated on it), then the refit on all images
    when the final model is a refit."""
    ks = np.unique(folds).tolist()
    jobs = [FitJob(f"fold-{k}", i, f"fold {i + 1}/{len(ks)}", {"fold": str(k), "role": "fold"},
                   fold=int(k)) for i, k in enumerate(ks)]
    if final_kind(ctx.p, ctx.tp) == "refit":
        jobs.append(FitJob(FINAL, len(ks), "final refit", {"role": "final"}))
    return jobs


def pending_fits(ctx: FitContext, folds: np.ndarray) -> list[FitJob]:
    """The planned fits that the checkpoint does not record as finished."""
    return [job for job in plan_fits(ctx, folds)
            if ctx.ckpt is None or ctx.ckpt.fit_done(job.key) is None]


def job_data(job: FitJob, train: Split, folds: np.ndarray) -> tuple[Split, Split | None]:
    """What fit `job` trains on and validates on (None: the refit on all images)."""
    if job.fold is None:
        return train, None
    x, y = train
    val = folds == job.fold
    return (x[~val], y[~val]), (x[val], y[val])


def run_here(ctx: FitContext, jobs: list[FitJob], train: Split,
             folds: np.ndarray) -> dict[str, FitResult]:
    """The fits one after another in this process (train.executor: local)."""
    return {job.key: resumable_fit(ctx, job, *job_data(job, train, folds)) for job in jobs}


def load_training_set(dataset: Path, folds_csv: Path) -> tuple[Split, np.ndarray]:
    """The training images the folds select, as the models take them, and their folds."""
    data = load_dataset(dataset)
    idx, folds = load_folds(folds_csv)
    return (data["x_train"][idx][..., None].astype("float32"), data["y_train"][idx]), folds


def fit(ctx: FitContext, job: FitJob, train: Split, val: Split | None = None) -> FitResult:
    """Train one model epoch by epoch, checkpointing each; with `val`, keep the weights of
    the epoch with the lowest validation loss. Continues from the checkpoint if any."""
    import keras

    from mnist_mlops.training.models import epoch_order, targets

    if keras.config.max_steps_per_epoch() is not None:   # one iterator over all epochs
        raise UserError(
            f"Keras caps an epoch at {keras.config.max_steps_per_epoch()} steps "
            "(KERAS_MAX_STEPS_PER_EPOCH or keras.config.set_max_steps_per_epoch): the "
            "pipeline trains whole epochs, each in its own order; unset it to train")
    p, tp, (x, y) = ctx.p, ctx.tp, train
    model, own = ctx.step.start(ctx, job, len(x))
    prog = (ctx.ckpt.load_progress(job.key, model) if ctx.ckpt else None) or FitProgress()
    ctx.hooks.fit_start(job, (len(x), 0 if val is None else len(val[0])), prog.epochs_done)
    devices = backend.replicas()      # data parallel: the last batch must split evenly too
    feed = Feed(x, targets(y, p), p.batch_size,
                backend.evenly_split(len(x), p.batch_size, devices))
    val_data = None if val is None else Feed(
        val[0], targets(val[1], p), p.batch_size,
        backend.evenly_split(len(val[0]), p.batch_size, devices)).in_order()
    started = 0.0

    def epoch_begin(e: int, logs: dict[str, Any] | None = None) -> None:
        """The epoch's own seeded order, set before Keras starts reading the epoch."""
        nonlocal started
        feed.epoch(epoch_order(tp.seed, job.index, e, len(x))[:feed.size])
        started = time.perf_counter()

    def epoch_end(e: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - started
        record = {k: float(v) for k, v in (logs or {}).items()}
        for k, v in record.items():
            prog.history.setdefault(k, []).append(v)
        prog.epochs_done, prog.seconds = e + 1, prog.seconds + seconds
        prog.epoch_seconds.append(seconds)
        if val is not None and record["val_loss"] < prog.best_loss:
            prog.best_loss, prog.best_epoch, prog.best_logs = record["val_loss"], e, record
            prog.best_weights = [np.array(w) for w in model.get_weights()]
        ctx.hooks.epoch_end(job, e + 1, record, seconds)
        if ctx.ckpt:
            ctx.ckpt.save_progress(job.key, model, prog)

    if prog.epochs_done < ctx.epochs:
        # One `fit` call for the epochs left, each epoch's order set as it begins: Keras
        # makes each epoch's iterator at its first batch, and a call per epoch cost
        # 0.03-0.06 s of set-up each, a tenth of a 0.6 s epoch of mlp_512x2 on 12,000
        # images (benchmarks/bench_tracking, docs/benchmarks.md)
        model.fit(feed.batches, epochs=ctx.epochs, initial_epoch=prog.epochs_done,
                  validation_data=val_data, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=epoch_begin,
                                                            on_epoch_end=epoch_end)])
    if val is not None and prog.best_weights is not None:
        model.set_weights(prog.best_weights)
    copy_state(model, own)             # the shared model goes on to the next fit
    if val is None:
        return FitResult(own, prog.history, seconds=prog.seconds,
                         epoch_seconds=prog.epoch_seconds)
    return FitResult(own, prog.history, prog.best_epoch + 1,
                     float(prog.best_logs["val_accuracy"]), float(prog.best_logs["val_loss"]),
                     prog.seconds, prog.epoch_seconds)


def resumable_fit(ctx: FitContext, job: FitJob, train: Split,
                  val: Split | None = None) -> FitResult:
    """`fit`, unless an earlier attempt finished it (then its recorded result, no model)."""
    if ctx.ckpt is not None and (done := ctx.ckpt.fit_done(job.key)) is not None:
        return FitResult(None, **done)
    r = fit(ctx, job, train, val)
    ctx.hooks.fit_end(job, r)
    if ctx.ckpt is not None:
        ctx.ckpt.finish_fit(job.key, r.model.get_weights(), r.record())
    return r


def fold_model(ctx: FitContext, r: FitResult, key: str, index: int) -> keras.Model:
    """The model of a fit: in memory, or rebuilt from a finished fit's saved weights."""
    from mnist_mlops.training.models import new_model

    if r.model is not None:
        return r.model
    assert ctx.ckpt is not None, "a fit without a model comes from a checkpoint"
    return ctx.ckpt.load_done_weights(key, new_model(ctx.p, ctx.tp, index, n_train=0))


def final_model(ctx: FitContext, cv: list[FitResult], refit: FitResult | None) -> FitResult:
    """The model that ships: the refit on all images, the best fold, or the fold ensemble;
    in float32, however it trained (models.in_float32)."""
    from mnist_mlops.training.models import ensemble, in_float32

    keys = [f"fold-{k}" for k in range(len(cv))]
    final = final_kind(ctx.p, ctx.tp)
    if final == "best_fold":
        i = min(range(len(cv)), key=lambda j: cv[j].val_loss)
        return FitResult(in_float32(fold_model(ctx, cv[i], keys[i], i)), {})
    if final == "ensemble":
        members = [fold_model(ctx, r, keys[i], i) for i, r in enumerate(cv)]
        return FitResult(in_float32(ensemble(members, ctx.p.name)), {})
    assert refit is not None, "plan_fits plans a refit when the final model is one"
    return FitResult(in_float32(fold_model(ctx, refit, FINAL, len(cv))), refit.history,
                     seconds=refit.seconds)


def cv_summary(cv: list[FitResult]) -> dict[str, Any]:
    acc = np.array([r.val_accuracy for r in cv])
    loss = np.array([r.val_loss for r in cv])
    return {
        "cv_val_accuracy_mean": float(acc.mean()), "cv_val_accuracy_std": float(acc.std()),
        "cv_val_loss_mean": float(loss.mean()), "cv_val_loss_std": float(loss.std()),
        "folds": [{"fold": i, "val_accuracy": r.val_accuracy, "val_loss": r.val_loss,
                   "best_epoch": r.best_epoch} for i, r in enumerate(cv)],
    }
