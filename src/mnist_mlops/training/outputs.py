"""The train stage's outputs: history CSVs, curves, the model summary and file, staged in
the checkpoint folder and then committed together (a model file never appears without
its run record)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_mlops.core import calibration, figures
from mnist_mlops.core.config import Paths
from mnist_mlops.core.fsio import atomic_path, write_json_atomic, write_text_atomic
from mnist_mlops.core.runtime import signals_deferred
from mnist_mlops.training.calibrate import Calibrated
from mnist_mlops.training.checkpoint import Checkpoint
from mnist_mlops.training.fit import FitResult
from mnist_mlops.training.progress import HISTORY_KEYS

if TYPE_CHECKING:
    import keras


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


def stage_outputs(name: str, cv: list[FitResult], final: FitResult, summary: dict[str, Any],
                  cal: Calibrated, ckpt: Checkpoint) -> None:
    """Write every output into the checkpoint's staging folder (committed later): the .h5
    carries its calibration."""
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
    write_json_atomic(out / "calibration.json", cal.report)
    figures.reliability_diagram(cal.curves(), out / "reliability.png",
                                f"{name}: out-of-fold answers, temperature "
                                f"{cal.calibration.temperature:.2f}")
    save_h5(final.model, ckpt.staged(f"{name}.h5"), cal.calibration)


def save_h5(model: keras.Model, out: Path, cal: calibration.Calibration | None = None) -> None:
    """The model as .h5, with its calibration (core/calibration.py) when it has one."""
    with atomic_path(out, suffix=".tmp.h5") as tmp:
        model.save(tmp)
        if cal is not None:
            calibration.write_h5(tmp, cal)


def commit_outputs(paths: Paths, name: str, ckpt: Checkpoint, run_info: dict[str, Any]
                   ) -> None:
    """Copy the staged outputs into place, the run record before the model file, with
    SIGINT/SIGTERM held: a model file never appears without its run record."""
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
