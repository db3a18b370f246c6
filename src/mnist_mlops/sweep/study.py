"""A worker of a sweep: trials of one model's study until the study has its trials.

The study lives in an Optuna storage: SQLite in the project folder by default (one machine,
offline, like mlflow.db), or a database URL (PostgreSQL) that workers on several machines
share. Every worker runs the same loop (`run_worker`): it fails the trials whose worker
stopped beating (heartbeats; each comes back as a waiting trial, which the next free worker
runs), and starts a trial only while the finished and running trials fall short of the
budget, so the workers together finish exactly `n_trials` (COMPLETE or PRUNED) and no trial
runs twice. A trial is the recipe with the trial's changes, fitted by the project's own fit
loop (training/fit.py) on the pipeline's folds, reporting each epoch's validation accuracy
to the pruner through a fit hook.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from mnist_mlops.core.config import ModelParams, Params
from mnist_mlops.core.fsio import project_sqlite_url
from mnist_mlops.core.runtime import UserError
from mnist_mlops.sweep import space
from mnist_mlops.sweep.settings import SweepParams, sweep_params
from mnist_mlops.sweep.tracking import Tracker, end_stale_trial
from mnist_mlops.training.fit import (
    FitContext,
    FitJob,
    FitResult,
    Split,
    configure,
    fit,
    load_training_set,
)
from mnist_mlops.training.recipe import effective_epochs, effective_train

log = logging.getLogger(__name__)
# Keras is imported where it is used, not at the top: after run_main has quietened
# TensorFlow's start-up lines (runtime.quiet_native_stderr);
# psycopg is an optional driver, looked for only for a PostgreSQL storage.

DEFAULT_STORAGE = "sqlite:///optuna.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES = 3           # a worker stops after this many failed trials in a row
MIN_GRACE_S = 10           # a busy machine can delay a live trial's beat by seconds
CREATE_ATTEMPTS = 5        # opening a new database while another worker creates it
SURPLUS_ATTR = "surplus"   # a trial started as another worker took the budget's last one


@dataclass(frozen=True)
class Sweep:
    """What one worker runs: the model's search against one study in one storage."""

    params: Params
    model: str
    study: str
    storage: str = DEFAULT_STORAGE
    n_trials: int | None = None      # overrides the spec's budget (finished trials)
    timeout_s: float | None = None   # overrides the spec's time budget (this worker)
    heartbeat_s: int = 60            # a dead worker's trial fails after 2 x this

    @property
    def spec(self) -> SweepParams:
        sweeps = sweep_params(self.params)
        if self.model not in sweeps:
            raise UserError(f"params.yaml has no sweep for {self.model!r} (sweeps: "
                            f"{', '.join(sweeps) or 'none'}): add "
                            f"sweep.{self.model} (docs/sweeps.md)")
        return sweeps[self.model]

    def budget(self) -> float:
        """How many trials the study finishes: asked, else the grid's size, else no cap."""
        spec = self.spec
        n = self.n_trials if self.n_trials is not None else spec.n_trials
        if n is None and spec.sampler == "grid":
            n = spec.grid_size()
        return math.inf if n is None else n


def storage_url(url: str) -> str:
    """A relative SQLite path is the project's (also from a DVC temp workspace); a plain
    postgresql:// URL uses psycopg2 (the `server` extra's driver) unless psycopg 3, which
    SQLAlchemy 2.1 takes by default, is installed."""
    url = project_sqlite_url(url)
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return f"postgresql+psycopg2://{rest}"
    return url


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats: a trial silent for 2 x `heartbeat_s` (at
    least `MIN_GRACE_S`) fails and comes back as a waiting trial with the same params
    (retried once)."""
    url = storage_url(url)
    engine: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                              else {"pool_pre_ping": True})

    def stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        end_stale_trial(study, trial)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)

    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                    grace_period=max(2 * heartbeat_s, MIN_GRACE_S),
                    heartbeat_stale_trial_callback=stale)
        except ImportError as exc:
            raise UserError(f"no database driver for {url.split(':')[0]} ({exc}): "
                            "pip install -e '.[server]' (psycopg2 for PostgreSQL)") from None
        except Exception as exc:   # sqlalchemy.exc.OperationalError: unreachable, refused
            reason = str(exc).splitlines()[0][:300]
            # workers starting together on a new database race to create its tables: the
            # loser's CREATE fails, and its next try finds them made
            if attempt + 1 < CREATE_ATTEMPTS and ("already exists" in reason
                                                  or "duplicate key" in reason):
                time.sleep(0.5 + random.random())
                continue
            raise UserError(f"cannot open the study storage {_safe(url)}: {reason}") from None
    raise AssertionError("unreachable")


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


def open_study(sweep: Sweep, storage: optuna.storages.RDBStorage
               ) -> tuple[optuna.Study, bool]:
    """The study, created by the first worker (which the second value says)."""
    spec, seed = sweep.spec, sweep.params.train.seed
    tp = space.train_params(sweep.params.train, spec)
    epochs = effective_epochs(sweep.params.model(sweep.model), tp)
    kwargs = {"study_name": sweep.study, "storage": storage,
              "sampler": space.sampler(spec, seed), "pruner": space.pruner(spec, epochs)}
    try:
        study = optuna.create_study(direction="maximize", **kwargs)
        study.set_user_attr("model", sweep.model)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**{**kwargs, "sampler": space.sampler(spec, seed, True)})
    if study.user_attrs.get("model", sweep.model) != sweep.model:
        raise UserError(f"study {sweep.study} searches {study.user_attrs['model']}, not "
                        f"{sweep.model}: give another --study")
    return study, False


def load_data(params: Params) -> tuple[Split, np.ndarray]:
    """The pipeline's training images and folds (the parse and preprocess outputs)."""
    paths = params.paths
    missing = [str(p) for p in (paths.dataset, paths.folds) if not Path(p).is_file()]
    if missing:
        raise UserError(f"{', '.join(missing)} not found: a sweep trains on the pipeline's "
                        "data; run `dvc repro preprocess` first")
    return load_training_set(paths.dataset, paths.folds)


class PruneHooks:
    """Each epoch to MLflow and, as validation accuracy, to the pruner: a trial the pruner
    stops ends here, with TrialPruned, before its remaining epochs."""

    def __init__(self, trial: optuna.Trial, tracker: Tracker, run_id: str,
                 epochs: int) -> None:
        self.trial, self.tracker, self.run_id, self.epochs = trial, tracker, run_id, epochs
        self.fold = 0

    def fit_start(self, job: FitJob, sizes: tuple[int, int], resumed_after: int) -> None:
        log.info("trial %d %s: train on %d, validate on %d", self.trial.number, job.label,
                 *sizes)

    def epoch_end(self, job: FitJob, epoch: int, logs: dict[str, float],
                  seconds: float) -> None:
        step = self.fold * self.epochs + epoch
        self.tracker.epoch(self.run_id, step, logs, seconds)
        log.info("trial %d %s epoch %d/%d: val_accuracy %.4f (%.1f s)", self.trial.number,
                 job.label, epoch, self.epochs, logs["val_accuracy"], seconds)
        self.trial.report(logs["val_accuracy"], step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val_accuracy {logs['val_accuracy']:.4f} at epoch "
                                     f"{epoch}/{self.epochs}")

    def fit_end(self, job: FitJob, result: FitResult) -> None:
        pass


class Objective:
    """One trial: the recipe with its changes, fitted on the first `folds` folds; its value
    is the mean best validation accuracy."""

    def __init__(self, sweep: Sweep, data: tuple[Split, np.ndarray], tracker: Tracker) -> None:
        self.sweep, self.data, self.tracker = sweep, data, tracker
        self.spec = sweep.spec
        self.base: ModelParams = sweep.params.model(sweep.model)
        self.tp = space.train_params(effective_train(self.base, sweep.params.train), self.spec)
        self.budget = sweep.budget()
        n_folds = len(np.unique(data[1]))
        if self.spec.folds > n_folds:
            raise UserError(f"sweep.{sweep.model}.folds is {self.spec.folds}, but folds.csv "
                            f"has {n_folds} folds: lower it or raise preprocess.folds")

    def __call__(self, trial: optuna.Trial) -> float:
        earlier = [t for t in trial.study.get_trials(deepcopy=False,
                                                     states=(*FINISHED, TrialState.RUNNING))
                   if t.number < trial.number]
        if len(earlier) >= self.budget:   # another worker took the last trial meanwhile
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise Surplus(f"trial {trial.number} not run: the study has its trials")
        changes = space.suggest(trial, self.spec)
        p = space.recipe(self.base, changes)
        log.info("trial %d: %s", trial.number, changes or "the recipe as it is")
        run_id = self.tracker.start_trial(trial, p, changes)
        state, value = "FAIL", None
        try:
            value = self._fit(trial, p, run_id)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            self.tracker.end_trial(run_id, state, value)

    def _fit(self, trial: optuna.Trial, p: ModelParams, run_id: str) -> float:
        import keras

        keras.backend.clear_session()   # earlier trials' graphs: memory stays flat
        configure(self.tp)
        (x, y), folds = self.data
        ctx_epochs = effective_epochs(p, self.tp)
        hooks = PruneHooks(trial, self.tracker, run_id, ctx_epochs)
        ctx = FitContext(p, self.tp, None, hooks)
        ks = np.unique(folds)[:self.spec.folds]
        accuracies = []
        for i, k in enumerate(ks.tolist()):
            hooks.fold, val = i, folds == k
            job = FitJob(f"fold-{k}", i, f"fold {i + 1}/{len(ks)}")
            r = fit(ctx, job, (x[~val], y[~val]), (x[val], y[val]))
            accuracies.append(float(r.val_accuracy or 0.0))
        return float(np.mean(accuracies))


class Surplus(Exception):
    """The trial would go past the study's budget (a race between workers): not run."""


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, all workers together."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return sum(states.count(s) for s in FINISHED), states.count(TrialState.RUNNING)


def run_worker(sweep: Sweep, poll_s: float | None = None) -> optuna.Study:
    """Trials until the study has its finished trials (or this worker's time is up)."""
    spec = sweep.spec
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # our lines say what it would
    data = load_data(sweep.params)
    storage = open_storage(sweep.storage, sweep.heartbeat_s)
    study, created = open_study(sweep, storage)
    tracker = Tracker.open(sweep.params, sweep.model, study, created)
    objective, budget = Objective(sweep, data, tracker), sweep.budget()
    timeout = sweep.timeout_s if sweep.timeout_s is not None else spec.timeout_s
    deadline = time.monotonic() + (timeout if timeout is not None else math.inf)
    poll = poll_s if poll_s is not None else min(5.0, float(sweep.heartbeat_s))
    failures: list[TrialState] = []
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        done, running = counts(study)
        if done >= budget or time.monotonic() >= deadline:
            break
        if done + running >= budget:   # the others run the last trials: wait for them
            time.sleep(poll)
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,),   # clear_session: gc
                           callbacks=[lambda _s, t: failures.append(t.state)])
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            log.warning("study %s: another worker took this worker's trial for dead (%s): "
                        "its heartbeat came late; give a longer --heartbeat", sweep.study, exc)
        if failures[-MAX_FAILURES:] == [TrialState.FAIL] * MAX_FAILURES:
            raise UserError(f"study {sweep.study}: {MAX_FAILURES} trials failed in a row; "
                            "see the errors above (run with -v for more)")
    done, running = counts(study)
    log.info("study %s: %d trials finished, %d running elsewhere", study.study_name, done,
             running)
    tracker.finish_study(study, last=running == 0)
    return study
