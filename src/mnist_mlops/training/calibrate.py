"""The train stage's last step: calibrate the model that ships on the folds' answers.

Each fold model answers the fold it was validated on, which it never trained on: together
these out-of-fold answers cover every training image once, as a model meets new pictures.
The temperature and the "unsure" line fitted to them (core/calibration.py) are stored in
the shipped .h5. For a refit on all images they describe a model trained the same way on a
quarter more data, for an ensemble its members: close, and the best estimate the folds give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_mlops.core.calibration import Calibration, calibrate, reliability
from mnist_mlops.core.mnist import NUM_CLASSES
from mnist_mlops.training.fit import FINAL, FitContext, FitResult, Split, fold_model, plan_fits

PREDICT_BATCH = 512


def out_of_fold(ctx: FitContext, cv: list[FitResult], train: Split, folds: np.ndarray
                ) -> np.ndarray:
    """Every training image's probabilities from the fold model that did not train on it,
    computed in float32 as the model that ships computes (models.in_float32)."""
    from mnist_mlops.training.models import in_float32

    x, _ = train
    proba = np.zeros((len(x), NUM_CLASSES))
    jobs = [job for job in plan_fits(ctx, folds) if job.key != FINAL]
    for job, result in zip(jobs, cv, strict=True):
        model = in_float32(fold_model(ctx, result, job.key, job.index))
        val = folds == job.fold
        proba[val] = model.predict(x[val], batch_size=PREDICT_BATCH, verbose=0)
    return proba


@dataclass(frozen=True)
class Calibrated:
    """The calibration fitted for a model, and the out-of-fold answers it was fitted on."""

    calibration: Calibration
    report: dict[str, Any]         # calibration.calibrate's figures, the images, give_up
    proba: np.ndarray
    y: np.ndarray

    def curves(self) -> dict[str, list[dict[str, float]]]:
        """The reliability diagram's two lines: the answers before and after."""
        return {"before": reliability(self.proba, self.y),
                "after": reliability(self.calibration.apply(self.proba), self.y)}


def calibrate_model(ctx: FitContext, cv: list[FitResult], train: Split, folds: np.ndarray
                    ) -> Calibrated:
    """The calibration of model `ctx.p`, fitted to its folds' out-of-fold answers."""
    proba = out_of_fold(ctx, cv, train, folds)
    cal, report = calibrate(proba, train[1], ctx.tp.unsure_give_up)
    return Calibrated(cal, {**report, "images": len(proba), "give_up": ctx.tp.unsure_give_up},
                      proba, np.asarray(train[1]))
