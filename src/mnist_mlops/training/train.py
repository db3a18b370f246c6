"""Stage `train@<model>`: K-fold cross validation, then the final model, all tracked in MLflow.

Per fold, train on the other folds and keep the weights of the epoch with the lowest
validation loss (the tutorials' save_best_only). The final model is a refit on every
training image, the best fold's model, or an ensemble of the fold models (params).

Runs survive interruption: every finished epoch is checkpointed (checkpoint.py) and the
next run of the stage continues from there, bit for bit as if never stopped (each fit is
seeded by its own index and each epoch's shuffle by its number). MLflow writes go through a
durable journal (journal.py), so a tracking outage costs no training.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_mlops.core.config import ModelParams, Params, TrainParams, load_params
from mnist_mlops.core.fsio import atomic_path, sha256_files, write_json_atomic, write_text_atomic
from mnist_mlops.core.runtime import UserError, run_main, signals_deferred
from mnist_mlops.data.parse import load_dataset
from mnist_mlops.data.preprocess import load_folds
from mnist_mlops.evaluation import figures
from mnist_mlops.tracking import mlflow_io
from mnist_mlops.tracking.journal import Journal, short_reason
from mnist_mlops.training import backend
from mnist_mlops.training.checkpoint import Checkpoint, FitProgress, fingerprint, open_checkpoint

if TYPE_CHECKING:  # Keras is imported where it is used: after run_main has quietened
    import keras  # TensorFlow's start-up lines (runtime.quiet_native_stderr)

log = logging.getLogger(__name__)
HISTORY_KEYS = ("accuracy", "val_accuracy", "loss", "val_loss")
FINAL = "final"
DATASET_DIGEST_CHARS = 32   # MLflow caps a dataset digest at 36 characters


@dataclass
class FitResult:
    model: keras.Model | None
    history: dict[str, list[float]]
    best_epoch: int | None = None          # 1-based; None without validation
    val_accuracy: float | None = None
    val_loss: float | None = None
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """What the checkpoint keeps of a finished fit (everything but the model)."""
        return {"history": self.history, "best_epoch": self.best_epoch,
                "val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
                "seconds": self.seconds}


class Progress:
    """Per epoch: fit k/K, epoch e/E, metrics, and time left (fit and stage). A terminal
    gets one live line per fit; a log (DVC, CI: not a terminal) one plain line per epoch."""

    def __init__(self, name: str, total_epochs: int, done_epochs: int, verbose: int) -> None:
        self.name, self.total, self.done, self.verbose = name, total_epochs, done_epochs, verbose
        self.epoch_s: list[float] = []
        self.live = bool(verbose) and sys.stderr.isatty()

    def epoch(self, label: str, e: int, epochs: int, logs: dict[str, float],
              seconds: float) -> None:
        self.done += 1
        self.epoch_s.append(seconds)
        if not self.verbose:
            return
        per = float(np.mean(self.epoch_s[-5:]))
        metrics = " ".join(f"{k} {logs[k]:.4f}" for k in HISTORY_KEYS if k in logs)
        text = (f"{self.name} {label} epoch {e}/{epochs}: {metrics} ({seconds:.1f} s; left: "
                f"{_duration(per * (epochs - e))} this fit, "
                f"{_duration(per * (self.total - self.done))} stage)")
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r" + text[:width] + "\x1b[K" + ("\n" if e == epochs else ""))
            sys.stderr.flush()
        else:
            log.info("%s", text)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def fit(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray, *, key: str,
        index: int, ckpt: Checkpoint | None, journal: Journal | None, progress: Progress,
        label: str, val: tuple[np.ndarray, np.ndarray] | None = None) -> FitResult:
    """Train one model epoch by epoch, checkpointing each; with `val`, keep the weights of
    the epoch with the lowest validation loss. Continues from the checkpoint if any."""
    from mnist_mlops.training.models import epoch_order, new_model, targets

    model = new_model(p, tp, index, len(x))
    prog = (ckpt.load_progress(key, model) if ckpt else None) or FitProgress()
    epochs = p.effective_epochs(tp)
    if prog.epochs_done:
        log.info("%s %s: resuming after epoch %d/%d", p.name, label, prog.epochs_done, epochs)
    yt = targets(y, p)
    devices = backend.replicas()      # data parallel: the last batch must split evenly too
    val_data = None if val is None else tuple(
        a[:backend.evenly_split(len(val[0]), p.batch_size, devices)]
        for a in (val[0], targets(val[1], p)))
    for e in range(prog.epochs_done, epochs):
        order = epoch_order(tp.seed, index, e, len(x))[
            :backend.evenly_split(len(x), p.batch_size, devices)]
        t0 = time.perf_counter()
        h = model.fit(x[order], yt[order], batch_size=p.batch_size, epochs=e + 1,
                      initial_epoch=e, validation_data=val_data, shuffle=False, verbose=0)
        seconds = time.perf_counter() - t0
        logs = {k: float(v[-1]) for k, v in h.history.items()}
        for k, v in logs.items():
            prog.history.setdefault(k, []).append(v)
        prog.epochs_done, prog.seconds = e + 1, prog.seconds + seconds
        if val is not None and logs["val_loss"] < prog.best_loss:
            prog.best_loss, prog.best_epoch, prog.best_logs = logs["val_loss"], e, logs
            prog.best_weights = [np.array(w) for w in model.get_weights()]
        # journal first: a kill between the two retrains this epoch on resume, and the
        # journal does not record its step twice; the other order could lose the step
        if journal:
            journal.metrics(key, {**logs, "epoch_time_s": seconds}, step=e + 1)
        if ckpt:
            ckpt.save_progress(key, model, prog)
        progress.epoch(label, e + 1, epochs, logs, seconds)
    if val is None:
        return FitResult(model, prog.history, seconds=prog.seconds)
    if prog.best_weights is not None:
        model.set_weights(prog.best_weights)
    return FitResult(model, prog.history, prog.best_epoch + 1,
                     float(prog.best_logs["val_accuracy"]), float(prog.best_logs["val_loss"]),
                     prog.seconds)


def _tracked_fit(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray, *, key: str,
                 index: int, ckpt: Checkpoint, journal: Journal, progress: Progress,
                 label: str, tags: dict[str, str],
                 val: tuple[np.ndarray, np.ndarray] | None = None) -> FitResult:
    """One fit as a nested MLflow run; a fit finished by an earlier attempt is reused."""
    done = ckpt.fit_done(key)
    if done is not None:
        return FitResult(None, **done)
    journal.start_run(key, f"{p.name}/{'final-refit' if key == FINAL else key}", tags,
                      parent="parent")
    r = fit(p, tp, x, y, key=key, index=index, ckpt=ckpt, journal=journal, progress=progress,
            label=label, val=val)
    summary = {"train_time_s": r.seconds}
    if val is not None:
        summary.update(best_val_accuracy=r.val_accuracy, best_val_loss=r.val_loss,
                       best_epoch=r.best_epoch)
    journal.metrics(key, summary)
    journal.end_run(key, "FINISHED")   # before the fit is marked done (see Journal.record)
    ckpt.finish_fit(key, r.model, r.record())
    return r


def cross_validate(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray,
                   folds: np.ndarray, ckpt: Checkpoint, journal: Journal,
                   progress: Progress) -> list[FitResult]:
    results = []
    ks = np.unique(folds).tolist()
    for i, k in enumerate(ks):
        val_mask = folds == k
        if ckpt.fit_done(f"fold-{k}") is None:
            log.info("%s fold %d/%d: train on %d, validate on %d", p.name, i + 1, len(ks),
                     (~val_mask).sum(), val_mask.sum())
        results.append(_tracked_fit(
            p, tp, x[~val_mask], y[~val_mask], key=f"fold-{k}", index=i, ckpt=ckpt,
            journal=journal, progress=progress, label=f"fold {i + 1}/{len(ks)}",
            tags={"fold": str(k), "role": "fold"}, val=(x[val_mask], y[val_mask])))
    return results


def fold_model(p: ModelParams, tp: TrainParams, r: FitResult, ckpt: Checkpoint,
               key: str, index: int) -> keras.Model:
    from mnist_mlops.training.models import new_model

    return r.model if r.model is not None else ckpt.load_done_weights(
        key, new_model(p, tp, index, n_train=0))  # only its weights are loaded


def final_model(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray,
                cv: list[FitResult], ckpt: Checkpoint, journal: Journal,
                progress: Progress) -> FitResult:
    """The model that ships: refit on all images, the best fold, or the fold ensemble."""
    keys = [f"fold-{k}" for k in range(len(cv))]
    final = p.final_model(tp)
    if final == "best_fold":
        i = min(range(len(cv)), key=lambda j: cv[j].val_loss)
        return FitResult(fold_model(p, tp, cv[i], ckpt, keys[i], i), {})
    if final == "ensemble":
        from mnist_mlops.training.models import ensemble

        members = [fold_model(p, tp, r, ckpt, keys[i], i) for i, r in enumerate(cv)]
        return FitResult(ensemble(members, p.name), {})
    log.info("%s final refit on all %d images", p.name, len(x))
    r = _tracked_fit(p, tp, x, y, key=FINAL, index=len(cv), ckpt=ckpt, journal=journal,
                     progress=progress, label="final refit", tags={"role": "final"})
    return FitResult(fold_model(p, tp, r, ckpt, FINAL, len(cv)), r.history, seconds=r.seconds)


def cv_summary(cv: list[FitResult]) -> dict[str, Any]:
    acc = np.array([r.val_accuracy for r in cv])
    loss = np.array([r.val_loss for r in cv])
    return {
        "cv_val_accuracy_mean": float(acc.mean()), "cv_val_accuracy_std": float(acc.std()),
        "cv_val_loss_mean": float(loss.mean()), "cv_val_loss_std": float(loss.std()),
        "folds": [{"fold": i, "val_accuracy": r.val_accuracy, "val_loss": r.val_loss,
                   "best_epoch": r.best_epoch} for i, r in enumerate(cv)],
    }


def history_csv(history: dict[str, list[float]]) -> str:
    """One row per epoch, always the same columns (blank val_* for a fit without validation),
    so that one DVC plot definition covers every file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", *HISTORY_KEYS])
    for i in range(len(history["loss"])):
        w.writerow([i + 1, *(f"{history[k][i]:.6f}" if k in history else ""
                             for k in HISTORY_KEYS)])
    return buf.getvalue()


def curves_csv(cv: list[FitResult], final: FitResult) -> str:
    """Every fit's accuracy per epoch in one long table (`epoch,fit,accuracy,loss`): the
    folds' validation curves and the refit's training curve, drawn as one chart per model
    by DVC (`.dvc/plots/folds.json` colours the lines by `fit`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", "fit", "accuracy", "loss"])
    curves = [(f"fold {i} (validation)", r.history["val_accuracy"], r.history["val_loss"])
              for i, r in enumerate(cv)]
    if final.history:
        curves.append(("final refit (training)", final.history["accuracy"],
                       final.history["loss"]))
    for fit_name, acc, loss in curves:
        for e, (a, lo) in enumerate(zip(acc, loss, strict=True), start=1):
            w.writerow([e, fit_name, f"{a:.6f}", f"{lo:.6f}"])
    return buf.getvalue()


def model_summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


def save_h5(model: keras.Model, out: Path) -> None:
    with atomic_path(out, suffix=".tmp.h5") as tmp:
        model.save(tmp)


def stage_outputs(name: str, cv: list[FitResult], final: FitResult, summary: dict[str, Any],
                  ckpt: Checkpoint) -> None:
    """Write every output into the checkpoint's staging folder (committed later)."""
    out = ckpt.staged("train")
    histories = {f"fold {i}": r.history for i, r in enumerate(cv)}
    for i, r in enumerate(cv):
        write_text_atomic(out / "history" / f"fold_{i}.csv", history_csv(r.history))
    if final.history:
        histories["final"] = final.history
        write_text_atomic(out / "history" / "final.csv", history_csv(final.history))
    figures.learning_curves(histories, out / "curves.png", f"{name}: learning curves")
    write_text_atomic(out / "curves.csv", curves_csv(cv, final))
    write_text_atomic(out / "summary.txt", model_summary(final.model))
    write_json_atomic(out / "cv.json", summary)
    save_h5(final.model, ckpt.staged(f"{name}.h5"))


def commit_outputs(params: Params, name: str, ckpt: Checkpoint, run_info: dict[str, Any]
                   ) -> None:
    """Copy the staged outputs into place, the run record before the model file, with
    SIGINT/SIGTERM held: a model file never appears without its run record."""
    paths = params.paths
    out_dir = paths.train_dir(name)
    with signals_deferred():
        for src in sorted(ckpt.staged("train").rglob("*")):
            if src.is_file():
                dest = out_dir / src.relative_to(ckpt.staged("train"))
                with atomic_path(dest) as tmp:
                    shutil.copyfile(src, tmp)
        write_json_atomic(paths.run_file(name), run_info)
        with atomic_path(paths.model_file(name), suffix=".tmp.h5") as tmp:
            shutil.copyfile(ckpt.staged(f"{name}.h5"), tmp)


def _run_tags(params: Params, name: str, data_digest: str, device: dict[str, Any]
              ) -> dict[str, str]:
    p = params.model(name)
    return {"architecture": p.architecture, "model_name": name, "role": "parent",
            "dvc_stage": f"train@{name}",
            "dvc_exp": os.environ.get("DVC_EXP_NAME", "workspace"),
            "data_sha256": data_digest, **mlflow_io.git_info(),
            **{k: str(v) for k, v in device.items()}}


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


def train(params: Params, name: str) -> dict[str, Any]:
    """Cross-validate and train model `name`; write its outputs and log everything."""
    from mnist_mlops.training.models import build_model, step_compiled, uncompilable_layers

    p, tp, paths = params.model(name), params.train, params.paths
    backend.configure(seed=tp.seed, deterministic=tp.deterministic,
                      mixed_precision=tp.mixed_precision)
    data = load_dataset(paths.dataset)
    idx, folds = load_folds(paths.folds)
    x = data["x_train"][idx][..., None].astype("float32")
    y = data["y_train"][idx]
    data_digest = sha256_files([paths.dataset, paths.folds])
    architecture = build_model(p)      # what Keras can compile (the fits build their own)
    device = {**backend.device_info(),
              "data_parallel_devices": backend.data_parallel(p.batch_size)
              if tp.data_parallel else 1,
              "jit_compile": step_compiled(architecture, tp)}
    log.info("%s trains on %s (Keras backend %s, %s train step)", name, device["device"],
             device["backend"], "compiled" if device["jit_compile"] else "uncompiled")
    if backend.jit_compile(tp.xla, tp.deterministic) and not device["jit_compile"]:
        log.info("%s: Keras cannot compile %s, so its train step runs uncompiled", name,
                 ", ".join(uncompilable_layers(architecture)))
    if (warning := backend.unused_gpu_warning(device)) is not None:
        log.warning("%s", warning)
    fp = fingerprint(p, tp, data_digest)
    with open_checkpoint(paths.checkpoints, name, fp) as ckpt:
        journal = Journal(ckpt.dir, params.mlflow.resolved_tracking_uri(),
                          params.mlflow.experiment,
                          f"train@{name}/{ckpt.state['attempt']}")
        if ckpt.resumed:
            done = sorted(ckpt.state["fits"])
            log.info("%s: resuming the interrupted training (%s finished)", name,
                     ", ".join(done) if done else "no fit")
        _connect(params, name, journal)
        journal.start_delivery()
        try:
            summary = _train_tracked(params, name, x, y, folds, data, data_digest, device,
                                     ckpt, journal)
        except BaseException as exc:
            journal.abort("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        delivered = journal.flush(params.mlflow.outage_wait_s)
        run_info = {"model": name, "run_id": journal.run_ids.get("parent"),
                    "experiment_id": journal.experiment_id,
                    "model_uri": journal.model_uri if delivered else None}
        commit_outputs(params, name, ckpt, run_info)
        if not delivered:
            raise UserError(
                f"{name}: trained and saved to {paths.model_file(name)}, but the tracking "
                f"store {journal.uri} was unreachable for the last "
                f"{params.mlflow.outage_wait_s:.0f} s ({journal.outage}); {journal.pending} "
                f"MLflow writes wait in {journal.ops_file}. Once the store is back, rerun "
                f"`dvc repro` (or this stage): it delivers them without retraining")
        ckpt.remove()
    log.info("%s: CV val accuracy %.4f ± %.4f, %.1f s; MLflow run %s; model %s", name,
             summary["cv_val_accuracy_mean"], summary["cv_val_accuracy_std"],
             summary["train_time_s"], run_info["run_id"], paths.model_file(name))
    return summary


def _train_tracked(params: Params, name: str, x: np.ndarray, y: np.ndarray,
                   folds: np.ndarray, data: dict[str, np.ndarray], data_digest: str,
                   device: dict[str, Any], ckpt: Checkpoint, journal: Journal
                   ) -> dict[str, Any]:
    """Everything up to the staged outputs and the journal's last record."""
    p, tp = params.model(name), params.train
    if ckpt.state.get("staged"):
        return ckpt.state["summary"]
    journal.start_run("parent", name, _run_tags(params, name, data_digest, device))
    n_folds = int(folds.max()) + 1
    journal.dataset("parent", "mnist-train", data_digest[:DATASET_DIGEST_CHARS],
                    f"{params.paths.dataset} + {params.paths.folds} (sha256 {data_digest})",
                    len(x))
    journal.params("parent", {
        **mlflow_io.flat_params(p, "model."), **mlflow_io.flat_params(tp, "train."),
        "model.effective_epochs": p.effective_epochs(tp), "data.n_train_images": len(x),
        "data.folds": n_folds})
    n_fits = n_folds + (p.final_model(tp) == "refit")
    done_epochs = sum(len(f["history"].get("loss", [])) for f in ckpt.state["fits"].values())
    progress = Progress(name, n_fits * p.effective_epochs(tp), done_epochs, tp.verbose)
    cv = cross_validate(p, tp, x, y, folds, ckpt, journal, progress)
    final = final_model(p, tp, x, y, cv, ckpt, journal, progress)
    seconds = sum(r.seconds for r in cv) + (final.seconds if final.history else 0.0)
    summary = {**cv_summary(cv), "train_time_s": seconds,
               "n_params": int(final.model.count_params()), "final": p.final_model(tp)}
    journal.metrics("parent", {k: v for k, v in summary.items() if isinstance(v, int | float)})
    stage_outputs(name, cv, final, summary, ckpt)
    example = ckpt.dir / "input_example.npy"
    np.save(example, data["x_test"][:2][..., None])
    journal.artifacts("parent", ckpt.staged(f"{name}.h5"), "keras")
    journal.artifacts("parent", ckpt.staged("train"), "train")
    journal.model("parent", ckpt.staged(f"{name}.h5"), example)
    journal.end_run("parent", "FINISHED")
    ckpt.state["summary"] = summary
    ckpt.mark("staged")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help="model name from params.yaml `models:`")
    args = ap.parse_args()
    train(load_params(), args.model)


if __name__ == "__main__":
    run_main(main)
