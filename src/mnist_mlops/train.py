"""Stage `train@<model>`: K-fold cross validation, then the final model, all tracked in MLflow.

Per fold, train on the other folds and keep the weights of the epoch with the lowest
validation loss (the tutorials' save_best_only). The final model is a refit on every
training image, the best fold's model, or an ensemble of the fold models (params).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np

from mnist_mlops import backend, figures, tracking
from mnist_mlops.config import ModelParams, Params, TrainParams, load_params
from mnist_mlops.fsio import atomic_path, sha256_files, write_json_atomic, write_text_atomic
from mnist_mlops.models import build_model, compile_model, ensemble
from mnist_mlops.parse import load_dataset
from mnist_mlops.preprocess import load_folds
from mnist_mlops.runtime import run_main

log = logging.getLogger(__name__)
HISTORY_KEYS = ("accuracy", "val_accuracy", "loss", "val_loss")


class BestWeights(keras.callbacks.Callback):
    """Keep the weights of the epoch with the lowest val_loss and restore them at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.best_loss, self.best_epoch, self.best_logs = np.inf, -1, {}
        self._weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if logs.get("val_loss", np.inf) < self.best_loss:
            self.best_loss, self.best_epoch, self.best_logs = logs["val_loss"], epoch, dict(logs)
            self._weights = self.model.get_weights()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._weights is not None:
            self.model.set_weights(self._weights)


class MlflowEpochLogger(keras.callbacks.Callback):
    """Every epoch's metrics (and its wall time) to one MLflow run, in one batched call."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["epoch_time_s"] = time.perf_counter() - self._t0
        tracking.log_metrics_batch(self.run_id, metrics, step=epoch + 1)


@dataclass
class FitResult:
    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int | None = None          # 1-based; None without validation
    val_accuracy: float | None = None
    val_loss: float | None = None
    seconds: float = 0.0


def targets(labels: np.ndarray, p: ModelParams) -> np.ndarray:
    """Integer labels for sparse loss, one-hot for categorical."""
    return keras.utils.to_categorical(labels, 10) if p.loss == "categorical" else labels


def fit(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray, run_id: str,
        val: tuple[np.ndarray, np.ndarray] | None = None) -> FitResult:
    """Build, compile and train one model; with `val`, restore its best-val-loss epoch."""
    model = compile_model(build_model(p), p, jit_compile=tp.xla)
    best = BestWeights()
    callbacks: list[keras.callbacks.Callback] = [MlflowEpochLogger(run_id)]
    if val is not None:
        callbacks.insert(0, best)
        val = (val[0], targets(val[1], p))
    t0 = time.perf_counter()
    h = model.fit(x, targets(y, p), batch_size=p.batch_size, epochs=p.effective_epochs(tp),
                  validation_data=val, callbacks=callbacks, verbose=tp.verbose, shuffle=True)
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vs] for k, vs in h.history.items()}
    if val is None:
        return FitResult(model, history, seconds=seconds)
    return FitResult(model, history, best.best_epoch + 1, float(best.best_logs["val_accuracy"]),
                     float(best.best_logs["val_loss"]), seconds)


def cross_validate(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray,
                   folds: np.ndarray) -> list[FitResult]:
    results = []
    for k in np.unique(folds).tolist():
        val_mask = folds == k
        with tracking.run_scope(run_name=f"{p.name}/fold-{k}", nested=True) as run:
            mlflow.set_tags({"fold": str(k), "role": "fold"})
            log.info("%s fold %d: train on %d, validate on %d", p.name, k, (~val_mask).sum(),
                     val_mask.sum())
            r = fit(p, tp, x[~val_mask], y[~val_mask], run.info.run_id,
                    val=(x[val_mask], y[val_mask]))
            mlflow.log_metrics({"best_val_accuracy": r.val_accuracy,
                                "best_val_loss": r.val_loss, "best_epoch": r.best_epoch,
                                "train_time_s": r.seconds})
            results.append(r)
    return results


def final_model(p: ModelParams, tp: TrainParams, x: np.ndarray, y: np.ndarray,
                cv: list[FitResult]) -> FitResult:
    """The model that ships: refit on all images, the best fold, or the fold ensemble."""
    if tp.final == "best_fold":
        return min(cv, key=lambda r: r.val_loss)
    if tp.final == "ensemble":
        return FitResult(ensemble([r.model for r in cv], p.name), {})
    with tracking.run_scope(run_name=f"{p.name}/final-refit", nested=True) as run:
        mlflow.set_tags({"role": "final"})
        r = fit(p, tp, x, y, run.info.run_id)
        mlflow.log_metric("train_time_s", r.seconds)
        return r


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


def model_summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


def save_h5(model: keras.Model, out: Path) -> None:
    with atomic_path(out, suffix=".tmp.h5") as tmp:
        model.save(tmp)


def log_mlflow_model(model: keras.Model, example: np.ndarray) -> str | None:
    """Log the final model as an MLflow model (.h5, uint8 signature); return its URI."""
    if keras.backend.backend() != "tensorflow":
        log.warning("MLflow tensorflow flavour needs the TensorFlow backend; .h5 artifact only")
        return None
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    sig = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 28, 28, 1))]),
                         outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]))
    info = mlflow.tensorflow.log_model(
        model, name="model", signature=sig, input_example=example,
        keras_model_kwargs={"save_format": "h5"},
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                          f"mlflow=={mlflow.__version__}", "h5py"],
    )
    return info.model_uri


def train(params: Params, name: str) -> dict[str, Any]:
    """Cross-validate and train model `name`; write its outputs and log everything."""
    p, tp, paths = params.model(name), params.train, params.paths
    backend.configure(seed=tp.seed, deterministic=tp.deterministic,
                      mixed_precision=tp.mixed_precision)
    data = load_dataset(paths.dataset)
    idx, folds = load_folds(paths.folds)
    x = data["x_train"][idx][..., None].astype("float32")
    y = data["y_train"][idx]
    out_dir = paths.train_dir(name)
    device = backend.device_info()
    log.info("%s on %s (%s)", name, device["device"], device["backend"])

    tracking.setup(params.mlflow)
    with tracking.run_scope(run_name=name) as parent:
        mlflow.set_tags({
            "architecture": p.architecture, "model_name": name, "role": "parent",
            "dvc_stage": f"train@{name}", "dvc_exp": os.environ.get("DVC_EXP_NAME", "workspace"),
            "data_sha256": sha256_files([paths.dataset, paths.folds]),
            **tracking.git_info(), **{k: str(v) for k, v in device.items()},
        })
        mlflow.log_params({
            **tracking.flat_params(p, "model."), **tracking.flat_params(tp, "train."),
            "model.effective_epochs": p.effective_epochs(tp), "data.n_train_images": len(idx),
            "data.folds": int(folds.max()) + 1,
        })
        t0 = time.perf_counter()
        cv = cross_validate(p, tp, x, y, folds)
        final = final_model(p, tp, x, y, cv)
        seconds = time.perf_counter() - t0
        summary = {**cv_summary(cv), "train_time_s": seconds,
                   "n_params": int(final.model.count_params()), "final": tp.final}
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})

        histories = {f"fold {i}": r.history for i, r in enumerate(cv)}
        for i, r in enumerate(cv):
            write_text_atomic(out_dir / "history" / f"fold_{i}.csv", history_csv(r.history))
        if final.history:
            histories["final"] = final.history
            write_text_atomic(out_dir / "history" / "final.csv", history_csv(final.history))
        figures.learning_curves(histories, out_dir / "curves.png", f"{name}: learning curves")
        write_text_atomic(out_dir / "summary.txt", model_summary(final.model))
        save_h5(final.model, paths.model_file(name))
        mlflow.log_artifact(str(paths.model_file(name)), "keras")
        mlflow.log_artifacts(str(out_dir), "train")
        model_uri = log_mlflow_model(final.model, data["x_test"][:2][..., None])
        run_info = {"model": name, "run_id": parent.info.run_id,
                    "experiment_id": parent.info.experiment_id, "model_uri": model_uri}
        write_json_atomic(paths.run_file(name), run_info)
        write_json_atomic(out_dir / "cv.json", summary)
    log.info("%s: CV val accuracy %.4f ± %.4f, %.1f s", name, summary["cv_val_accuracy_mean"],
             summary["cv_val_accuracy_std"], seconds)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help="model name from params.yaml `models:`")
    args = ap.parse_args()
    tracking.sigterm_as_interrupt()
    train(load_params(), args.model)


if __name__ == "__main__":
    run_main(main)
