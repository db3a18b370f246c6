"""A study in MLflow: one parent run per study, one nested run per trial.

Every worker of a study (other processes, other machines) logs under the same parent run:
the worker that creates the study creates the run and records its id on the study
(`PARENT_ATTR`), the others read it there. A trial's run holds its recipe as params, each
epoch's metrics, its trial number and its final Optuna state (tag `optuna.state`:
COMPLETE, PRUNED or FAIL); a trial whose worker died is ended FAILED by the worker that
finds it stale (`end_stale_trial`). The study's plots (optimization history, parameter
importances) and its trials table are artifacts of the parent, so `mlflow ui` compares
trials like any other runs. The store is the project's (params `mlflow:`), reached through
tracking/mlflow_io.py like every stage.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from optuna.exceptions import ExperimentalWarning

from mnist_mlops.core import figures
from mnist_mlops.core.config import ModelParams, Params
from mnist_mlops.sweep.settings import sweep_params
from mnist_mlops.tracking import mlflow_io

log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"   # on the study: the parent run of every worker
RUN_ATTR = "mlflow_run_id"             # on a trial: its nested run
STATE_TAG = "optuna.state"
PARENT_WAIT_S = 60.0                   # how long a worker waits for the creator's parent run
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """The MLflow side of one worker of one study."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_id: str,
                 model: str) -> None:
        self.client, self.experiment_id = client, experiment_id
        self.parent_id, self.model = parent_id, model

    @classmethod
    def open(cls, params: Params, model: str, study: optuna.Study,
             created: bool) -> Tracker:
        """Connect to the store and find (or, as the study's creator, create) the parent."""
        with mlflow_io.outage_as_user_error():
            exp_id = mlflow_io.setup(params.mlflow)
            client = MlflowClient()
            parent = study.user_attrs.get(PARENT_ATTR)
            end = time.monotonic() + (0 if created else PARENT_WAIT_S)
            while parent is None and time.monotonic() < end:   # the creator is making it
                time.sleep(0.5)
                parent = study.user_attrs.get(PARENT_ATTR)   # read from the storage
            if parent is None:
                parent = cls._create_parent(client, exp_id, params, model, study)
                study.set_user_attr(PARENT_ATTR, parent)
        log.info("study %s: MLflow parent run %s (%s)", study.study_name, parent,
                 mlflow_io.ui_url(params.mlflow.resolved_tracking_uri(), exp_id))
        return cls(client, exp_id, parent, model)

    @staticmethod
    def _create_parent(client: MlflowClient, exp_id: str, params: Params, model: str,
                       study: optuna.Study) -> str:
        spec = sweep_params(params)[model]
        run = client.create_run(exp_id, run_name=f"sweep/{study.study_name}", tags={
            "role": "sweep", "model_name": model, "optuna.study": study.study_name,
            **mlflow_io.git_info()})
        client.log_batch(run.info.run_id, params=[
            Param(k, v[:6000]) for k, v in {
                **mlflow_io.flat_params(spec.model_dump(mode="json"), "sweep."),
                **mlflow_io.flat_params(params.model(model), "model.")}.items()])
        return run.info.run_id

    def start_trial(self, trial: optuna.Trial, p: ModelParams,
                    changes: dict[str, Any]) -> str:
        """The trial's nested run: the whole recipe as params, the changes as tags."""
        run = self.client.create_run(self.experiment_id, run_name=f"{self.model}/trial-"
                                     f"{trial.number}", tags={
            "mlflow.parentRunId": self.parent_id, "role": "trial", "model_name": self.model,
            "optuna.study": trial.study.study_name, "optuna.trial": str(trial.number),
            **{f"sweep.{k}": str(v) for k, v in changes.items()}, **mlflow_io.owner_tags()})
        self.client.log_batch(run.info.run_id, params=[
            Param(k, v) for k, v in mlflow_io.flat_params(p, "model.").items()])
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def epoch(self, run_id: str, step: int, logs: dict[str, float], seconds: float) -> None:
        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[
            Metric(k, float(v), ts, step) for k, v in {**logs, "epoch_time_s": seconds}.items()])

    def end_trial(self, run_id: str, state: str, value: float | None) -> None:
        if value is not None:
            self.client.log_metric(run_id, "objective", value)
        self.client.set_tag(run_id, STATE_TAG, state)
        self.client.set_terminated(run_id, MLFLOW_STATUS[state])

    def finish_study(self, study: optuna.Study, last: bool) -> None:
        """Plots, trials table and best result on the parent; ended if no trial still runs."""
        states = [t.state for t in study.get_trials(deepcopy=False)]
        counts = {s.name.lower(): states.count(s) for s in (
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)}
        metrics = {f"trials_{k}": float(v) for k, v in counts.items()}
        if counts["complete"]:
            best = study.best_trial
            metrics.update(best_value=float(best.value), best_trial=float(best.number))
            self.client.set_tag(self.parent_id, "best_params", str(best.params))
        ts = _now_ms()
        self.client.log_batch(self.parent_id, metrics=[Metric(k, v, ts, 0)
                                                       for k, v in metrics.items()])
        with tempfile.TemporaryDirectory() as tmp:
            for path in study_files(study, Path(tmp)):
                self.client.log_artifact(self.parent_id, str(path), "study")
        if last:
            self.client.set_terminated(self.parent_id, "FINISHED")


def study_files(study: optuna.Study, out: Path) -> list[Path]:
    """The study's trials table (CSV) and, once trials finished, its plots (PNG)."""
    plt = figures.pyplot()
    from optuna.visualization import matplotlib as ovm  # imports pyplot: after `pyplot()`

    files = [out / "trials.csv"]
    study.trials_dataframe().to_csv(files[0], index=False)
    plots = {"optimization_history.png": ovm.plot_optimization_history,
             "param_importances.png": ovm.plot_param_importances}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)   # "too few trials": drawn equal
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few trials
            log.info("study %s: no %s yet (%s)", study.study_name, name, exc)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(out / name)
    return files


def end_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A worker died in this trial (no heartbeat): its MLflow run ends FAILED too."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    log.warning("study %s: trial %d stopped beating (its worker died): failed%s",
                study.study_name, trial.number, ", retried" if trial.params else "")
    if run_id:
        try:
            client = MlflowClient()
            client.set_tag(run_id, STATE_TAG, "FAIL")
            client.set_terminated(run_id, "FAILED")
        except Exception as exc:   # the study goes on; the run shows RUNNING
            log.warning("could not end MLflow run %s of trial %d: %s", run_id, trial.number,
                        exc)
