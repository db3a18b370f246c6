"""MLflow wiring shared by the stages: store set-up, run scopes, batched epoch logging.

Runs end as FINISHED, FAILED, or KILLED (Ctrl-C / SIGTERM), so `mlflow ui` never shows a
stage that died as still running.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mnist_mlops.config import MlflowParams

log = logging.getLogger(__name__)


def setup(params: MlflowParams) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    uri = params.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.set_experiment(params.experiment)
    log.info("MLflow tracking at %s, experiment %r", uri, params.experiment)
    return exp.experiment_id


@contextlib.contextmanager
def run_scope(**start_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` whose end status tells an interruption (KILLED) from a crash."""
    run = mlflow.start_run(**start_kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (what `kill` and CI cancellation send) unwind like Ctrl-C."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def log_metrics_batch(run_id: str, metrics: dict[str, float], step: int) -> None:
    """All of one epoch's metrics in one call (one HTTP request on a remote server)."""
    ts = int(time.time() * 1000)
    MlflowClient().log_batch(
        run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()],
        synchronous=True,
    )


def git_info() -> dict[str, str]:
    """Commit and dirty flag of the working tree, or 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def flat_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """A (nested) dataclass/dict as flat MLflow params: {'a.b': '1', ...}."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flat_params(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, tuple | list):
        return {prefix[:-1]: ",".join(map(str, obj))}
    return {prefix[:-1]: str(obj)}


def require_run(run_id: str, name: str) -> Any:
    """The run the train stage recorded for model `name`, or a fix-it error if it is gone."""
    from mlflow.exceptions import MlflowException

    from mnist_mlops.runtime import UserError

    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(
            f"MLflow run {run_id} of model {name} is not in the tracking store "
            f"{mlflow.get_tracking_uri()}; point MLFLOW_TRACKING_URI at the store that holds "
            f"it, or retrain with `dvc repro -f train@{name}`"
        ) from None
