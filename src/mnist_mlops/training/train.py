"""Stage `train@<model>`: K-fold cross validation, then the final model, all tracked in MLflow.

The model itself comes from fit.py (the fit loop) and models.py (the layers); this module
wires them to the stage's services: the checkpoint that makes an interrupted run resume
(checkpoint.py), the durable journal of MLflow writes that makes a tracking outage cost no
training (tracking/journal.py), the progress lines, and the outputs DVC records.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_mlops.core.calibration import effect_text
from mnist_mlops.core.config import ModelParams, Params, TrainParams, load_params
from mnist_mlops.core.fsio import sha256_files
from mnist_mlops.core.runtime import UserError, raise_if_stopped, run_main
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.inference import onnx_draft
from mnist_mlops.inference.keras_model import load_keras_model
from mnist_mlops.tracking import mlflow_io
from mnist_mlops.tracking.journal import Journal, short_reason
from mnist_mlops.training import backend
from mnist_mlops.training.calibrate import calibrate_model
from mnist_mlops.training.checkpoint import Checkpoint, fingerprint, open_checkpoint
from mnist_mlops.training.fit import (
    FINAL,
    FitContext,
    FitJob,
    FitResult,
    FitRunner,
    Split,
    concrete,
    configure,
    cv_summary,
    load_training_set,
    pending_fits,
    train_model,
)
from mnist_mlops.training.outputs import commit_outputs, stage_outputs
from mnist_mlops.training.progress import Progress
from mnist_mlops.training.recipe import effective_epochs, effective_train, final_kind

if TYPE_CHECKING:
    from mnist_mlops.training.ray_fits import RayRunner

log = logging.getLogger(__name__)
# Keras is imported where it is used, not at the top: after run_main has quietened
# TensorFlow's start-up lines (runtime.quiet_native_stderr) and set up the backend;
# training/models.py imports it, so it is imported in the functions that build models.

DATASET_DIGEST_CHARS = 32   # MLflow caps a dataset digest at 36 characters


class TrackedHooks:
    """Each fit as a nested MLflow run (through the journal), each epoch on the terminal."""

    def __init__(self, name: str, journal: Journal, progress: Progress, epochs: int) -> None:
        self.name, self.journal, self.progress, self.epochs = name, journal, progress, epochs

    def fit_start(self, job: FitJob, sizes: tuple[int, int], resumed_after: int) -> None:
        if resumed_after:
            log.info("%s %s: resuming after epoch %d/%d", self.name, job.label,
                     resumed_after, self.epochs)
        elif sizes[1]:
            log.info("%s %s: train on %d, validate on %d", self.name, job.label, *sizes)
        else:
            log.info("%s %s on all %d images", self.name, job.label, sizes[0])
        run = f"{self.name}/{'final-refit' if job.key == FINAL else job.key}"
        self.journal.start_run(job.key, run, job.tags, parent="parent")

    def epoch_end(self, job: FitJob, epoch: int, logs: dict[str, float],
                  seconds: float) -> None:
        self.journal.metrics(job.key, {**logs, "epoch_time_s": seconds}, step=epoch)
        self.progress.epoch(job.label, epoch, self.epochs, logs, seconds)
        raise_if_stopped()   # a SIGTERM whose interrupt was lost stops here

    def fit_end(self, job: FitJob, result: FitResult) -> None:
        summary: dict[str, Any] = {"train_time_s": result.seconds}
        if result.val_accuracy is not None:
            summary.update(best_val_accuracy=result.val_accuracy,
                           best_val_loss=result.val_loss, best_epoch=result.best_epoch)
        self.journal.metrics(job.key, summary)
        self.journal.end_run(job.key, "FINISHED")  # before the fit is marked done


@dataclass(frozen=True)
class StageRun:
    """One run of the stage for one model: what its parts share."""

    params: Params
    name: str
    data_digest: str
    device: dict[str, Any]
    ckpt: Checkpoint
    journal: Journal
    runner: FitRunner | None = None     # None: the fits one after another, here


def _run_tags(run: StageRun) -> dict[str, str]:
    p = run.params.model(run.name)
    return {"architecture": p.architecture, "model_name": run.name, "role": "parent",
            "dvc_stage": f"train@{run.name}",
            "dvc_exp": os.environ.get("DVC_EXP_NAME", "workspace"),
            "data_sha256": run.data_digest, **mlflow_io.git_info(),
            **{k: str(v) for k, v in run.device.items()}}


def _connect(params: Params, name: str, journal: Journal) -> None:
    """Reach the store and end runs a killed attempt left RUNNING; an outage only warns."""
    try:
        exp_id = mlflow_io.connect(params.mlflow)
        mlflow_io.end_stale_runs(mlflow_io.MlflowClient(), exp_id, f"train@{name}",
                                 keep=set(journal.run_ids.values()))
    except Exception as exc:
        if not mlflow_io.is_outage(exc):
            raise
        log.warning("tracking store %s unreachable (%s): training goes on; MLflow writes "
                    "wait in %s", params.mlflow.resolved_tracking_uri(), short_reason(exc),
                    journal.ops_file)


def _device(params: Params, name: str) -> dict[str, Any]:
    """Where and how the model trains, logged and recorded as run tags."""
    from mnist_mlops.training.models import build_model, step_compiled, uncompilable_layers

    p, tp = model_and_train(params, name)
    architecture = build_model(p)      # what Keras can compile (the fits build their own)
    device = {**backend.device_info(),
              "data_parallel_devices": backend.data_parallel(p.batch_size)
              if tp.data_parallel else 1,
              "jit_compile": step_compiled(architecture, tp),
              "precision": backend.precision_policy(tp.mixed_precision)}
    log.info("%s trains on %s (Keras backend %s, %s train step, %s)", name, device["device"],
             device["backend"], "compiled" if device["jit_compile"] else "uncompiled",
             device["precision"])
    if backend.jit_compile(tp.xla, tp.deterministic) and not device["jit_compile"]:
        log.info("%s: Keras cannot compile %s, so its train step runs uncompiled", name,
                 ", ".join(uncompilable_layers(architecture)))
    if (warning := backend.unused_gpu_warning(device)) is not None:
        log.warning("%s", warning)
    return device


@contextlib.contextmanager
def _executor(tp: TrainParams) -> Iterator[RayRunner | None]:
    """Where the fits run (train.executor): here, or on a Ray cluster, joined once some fit
    is left to train (training/ray_fits.py; Ray is imported only then)."""
    if tp.executor == "local":
        yield None
        return
    from mnist_mlops.training import ray_fits

    runner = ray_fits.RayRunner(tp.ray)
    try:
        yield runner
    finally:
        runner.close()


def model_and_train(params: Params, name: str) -> tuple[ModelParams, TrainParams]:
    """Model `name`'s recipe and the train params it trains with (recipe.effective_train)."""
    p = params.model(name)
    return p, effective_train(p, params.train)


def checkpoint_key(p: ModelParams, tp: TrainParams, data_digest: str) -> str:
    """The checkpoint's fingerprint, `train.mixed_precision` in it as the type it takes here
    (fit.concrete): auto and true depend on the device, and a checkpoint resumes only into
    the type that made it."""
    return fingerprint(p, concrete(tp), data_digest)


def train(params: Params, name: str) -> dict[str, Any]:
    """Cross-validate and train model `name`; write its outputs and log everything."""
    with _executor(params.train) as runner, backend.policy():   # the caller's, afterwards
        return _train(params, name, runner)


def _train(params: Params, name: str, runner: RayRunner | None) -> dict[str, Any]:
    (p, tp), paths = model_and_train(params, name), params.paths
    configure(tp)
    train_set, folds = load_training_set(paths.dataset, paths.folds)
    data_digest = sha256_files([paths.dataset, paths.folds])
    device = _device(params, name)
    key = checkpoint_key(p, tp, data_digest)
    with open_checkpoint(paths.checkpoints, name, key) as ckpt:
        journal = Journal(ckpt.dir, params.mlflow.resolved_tracking_uri(),
                          params.mlflow.experiment,
                          f"train@{name}/{ckpt.state['attempt']}")
        if ckpt.resumed:
            done = sorted(ckpt.state["fits"])
            log.info("%s: resuming the interrupted training (%s finished)", name,
                     ", ".join(done) if done else "no fit")
        if runner is not None and not ckpt.state.get("staged") and \
                pending_fits(FitContext(p, tp, ckpt), folds):
            runner.join()      # no cluster: one line, before any fit or MLflow write
        _connect(params, name, journal)
        journal.start_delivery()
        run = StageRun(params, name, data_digest, device, ckpt, journal, runner)
        try:
            summary = _train_tracked(run, train_set, folds)
        except BaseException as exc:
            journal.abort("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        delivered = journal.flush(params.mlflow.outage_wait_s)
        run_info = {"model": name, "run_id": journal.run_ids.get("parent"),
                    "experiment_id": journal.experiment_id,
                    "model_uri": journal.model_uri if delivered else None}
        commit_outputs(paths, name, ckpt, run_info)
        if not delivered:
            raise UserError(
                f"{name}: trained and saved to {paths.model_file(name)}, but the tracking "
                f"store {journal.uri} was unreachable for the last "
                f"{params.mlflow.outage_wait_s:.0f} s ({journal.outage}); {journal.pending} "
                f"MLflow writes wait in {journal.ops_file}. Once the store is back, rerun "
                f"`dvc repro` (or this stage): it delivers them without retraining")
        _export_for_evaluate(params, name)
        ckpt.remove()
    log.info("%s: CV val accuracy %.4f ± %.4f, %.1f s; MLflow run %s; model %s; runs: %s",
             name, summary["cv_val_accuracy_mean"], summary["cv_val_accuracy_std"],
             summary["train_time_s"], run_info["run_id"], paths.model_file(name),
             mlflow_io.ui_url(journal.uri, run_info["experiment_id"]))
    return summary


def _train_tracked(run: StageRun, train_set: Split, folds: np.ndarray) -> dict[str, Any]:
    """Everything up to the staged outputs and the journal's last record."""
    params, name, ckpt, journal = run.params, run.name, run.ckpt, run.journal
    p, tp = model_and_train(params, name)
    if ckpt.state.get("staged"):
        return ckpt.state["summary"]
    journal.start_run("parent", name, _run_tags(run))
    n_folds, n_images = int(folds.max()) + 1, len(train_set[0])
    journal.dataset("parent", "mnist-train", run.data_digest[:DATASET_DIGEST_CHARS],
                    f"{params.paths.dataset} + {params.paths.folds} "
                    f"(sha256 {run.data_digest})", n_images)
    journal.params("parent", {
        **mlflow_io.flat_params(p, "model."), **mlflow_io.flat_params(tp, "train."),
        "model.effective_epochs": effective_epochs(p, tp), "data.n_train_images": n_images,
        "data.folds": n_folds})
    n_fits = n_folds + (final_kind(p, tp) == "refit")
    done_epochs = sum(len(f["history"].get("loss", [])) for f in ckpt.state["fits"].values())
    epochs = effective_epochs(p, tp)
    progress = Progress(name, n_fits * epochs, done_epochs, tp.verbose)
    ctx = FitContext(p, tp, ckpt, TrackedHooks(name, journal, progress, epochs))
    cv, final = train_model(ctx, train_set, folds, run.runner)
    cal = calibrate_model(ctx, cv, train_set, folds)
    seconds = sum(r.seconds for r in cv) + (final.seconds if final.history else 0.0)
    summary = {**cv_summary(cv), "train_time_s": seconds,
               "n_params": int(final.model.count_params()), "final": final_kind(p, tp)}
    journal.metrics("parent", {**{k: v for k, v in summary.items()
                                  if isinstance(v, int | float)},
                               **{f"oof_{k}": v for k, v in cal.report.items()}})
    log.info("%s: calibrated on %d out-of-fold answers: temperature %.2f, unsure below %.3f; "
             "%s", name, cal.report["images"], cal.report["temperature"],
             cal.report["unsure_below"], effect_text(cal.report))
    stage_outputs(name, cv, final, summary, cal, ckpt)
    example = ckpt.dir / "input_example.npy"
    np.save(example, _input_example(params))
    journal.artifacts("parent", ckpt.staged(f"{name}.h5"), "keras")
    journal.artifacts("parent", ckpt.staged("train"), "train")
    journal.model("parent", ckpt.staged(f"{name}.h5"), example)
    journal.end_run("parent", "FINISHED")
    ckpt.state["summary"] = summary
    ckpt.mark("staged")
    return summary


def _export_for_evaluate(params: Params, name: str) -> None:
    """The ONNX export and its check against Keras, made here where Keras is loaded, so
    that evaluate need not import TensorFlow (inference/onnx_draft.py). Best effort: where
    it fails, evaluate exports the model itself and reports what is wrong."""
    if not params.register.onnx:
        return
    h5 = params.paths.model_file(name)
    try:
        with _as_a_fresh_process():
            onnx_draft.make(load_keras_model(h5), name, h5, params.paths.checkpoints,
                            load_dataset(params.paths.dataset)["x_test"])
    except Exception as exc:  # tf2onnx's, Keras' and ONNX Runtime's refusals alike
        log.warning("%s: no ONNX export for evaluate (%s): evaluate exports it itself",
                    name, short_reason(exc))


@contextlib.contextmanager
def _as_a_fresh_process() -> Iterator[None]:
    """Keras as evaluate's own process loads a model: no precision policy, no device
    layout; the training's settings back afterwards."""
    import keras

    layout = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        with backend.policy("float32"):
            yield
    finally:
        keras.distribution.set_distribution(layout)


def _input_example(params: Params) -> np.ndarray:
    """Two test images as the model takes them (uint8, 28x28x1): the MLflow model's example."""
    return load_dataset(params.paths.dataset)["x_test"][:2][..., None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help="model name from params.yaml `models:`")
    args = ap.parse_args()
    train(load_params(), args.model)


if __name__ == "__main__":
    run_main(main)
