"""The `monitor:` section of params.yaml: the prediction log and `mnist-mlops monitor`.

Strict like every section (core/config.py), and checked here rather than by the pipeline's
schema: no stage reads it, so editing it reruns no stage. The log's path is
`paths.prediction_log`, the reports' folder `paths.monitor_reports`. docs/monitoring.md
explains each threshold and how its default was measured.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from mnist_mlops.core.config import ConfigError, Params
from mnist_mlops.core.config_errors import one_line

# Evidently's numerical drift tests that take a threshold (p-value or distance)
StatTest = Literal["ks", "wasserstein", "psi", "jensenshannon", "kl_div", "anderson",
                   "cramer_von_mises", "mannw", "energy_dist", "hellinger"]


def _command(value: object) -> object:
    """YAML's list of words -> a tuple (params are frozen); at least the program."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and not value:
        raise ValueError("must name a command to run, as a list: [mnist-mlops, retrain]")
    return value


class MonitorParams(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    log: bool = True                 # serve appends every answer to paths.prediction_log
    log_predict: bool = False        # `mnist-mlops predict` too (opt-in)
    embedding: bool = True           # the penultimate layer's output, in every line
    max_bytes: int = Field(20_000_000, ge=10_000)   # a log file is rotated at this size
    backups: int = Field(5, ge=0, le=100)          # rotated files kept (.1 ... .N)
    window: int = Field(500, ge=30)                # latest answers compared
    reference_size: int = Field(2000, ge=100)      # training images described as reference
    seed: int = 0                                  # which training images
    stattest: StatTest = "ks"                      # Evidently's test per feature
    stattest_threshold: float = Field(0.05, gt=0)  # p-value (ks) or distance
    drift_share: float = Field(0.3, gt=0, le=1)    # drifted features' share that is drift
    embedding_auc: float = Field(0.6, gt=0.5, lt=1)   # classifier AUC that is drift
    confidence_drop: float = Field(0.05, ge=0, le=1)  # fall of mean confidence that is drift
    retrain: Annotated[tuple[str, ...], BeforeValidator(_command)] = (
        "mnist-mlops", "retrain", "--profile", "quick")   # what `monitor --retrain` runs


def monitor_params(params: Params) -> MonitorParams:
    """The `monitor:` section of `params`, validated (ConfigError naming the key)."""
    try:
        return MonitorParams.model_validate(params.monitor)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, MonitorParams, "monitor")) from None
