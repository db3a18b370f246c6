"""MLflow wiring shared by the stages: store set-up, locks, outages, stale runs.

Runs end as FINISHED, FAILED, or KILLED (Ctrl-C / SIGTERM), so `mlflow ui` never shows a
stage that died as still running; runs a SIGKILL left RUNNING are ended by the next run of
the same stage (`end_stale_runs`). Calls to a tracking server fail within seconds rather
than MLflow's default of minutes of retries: the train stage queues what it cannot deliver
(`journal.py`), the other stages stop with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mnist_mlops.core.config import MlflowParams
from mnist_mlops.core.fsio import file_lock, project_root, sqlite_file
from mnist_mlops.core.runtime import OperationFailed, UserError
from mnist_mlops.tracking import refusals

log = logging.getLogger(__name__)
MLFLOW_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the model each run logs

# MLflow's defaults retry an unreachable server for minutes per call (7 retries, backoff
# factor 2, 120 s timeout). Ours: about 3 s to give up on a refused connection.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# MlflowException codes that retrying cannot fix; anything else counts as an outage.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_ALREADY_EXISTS",
                    "INVALID_STATE", "FEATURE_DISABLED"}
RUN_KEY_TAG = "mnist_mlops.run_key"     # identifies a run across resumes of one training
HOST_TAG, PID_TAG = "mnist_mlops.host", "mnist_mlops.pid"
# The kind of experiment this is, for MLflow's own use (search, older UIs). MLflow 3.17's
# UI does not read it to pick its tabs: a browser it has not seen opens every experiment on
# the GenAI overview unless the address says `workflowType=machine_learning` (`ui_url`).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_ADDRESS = "http://127.0.0.1:5000"   # where `mlflow ui` serves by default


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` from a tracking call may go away by itself (server down, store busy).
    A refusal of the credentials (HTTP 401/403, also from the artifact proxy) is not."""
    if isinstance(exc, UserError) or refusals.refusal_status(exc) is not None:
        return False
    return not (isinstance(exc, MlflowException) and exc.error_code in PERMANENT_ERRORS)


def fast_failing_http() -> None:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


def store_lock_path(uri: str, name: str, fallback_dir: Path) -> Path:
    """A lock file for operations that must not interleave on one store: beside a SQLite
    file, else in the project's (git-ignored) checkpoint folder."""
    db = sqlite_file(uri)
    if db is not None:
        return db.with_name(f"{db.name}.{name}.lock")
    return project_root() / fallback_dir / "locks" / f"{name}.lock"


@contextlib.contextmanager
def store_lock(params: MlflowParams, name: str, fallback_dir: Path) -> Iterator[None]:
    """Serialise `name` (store creation, registration) between processes of this machine."""
    with file_lock(store_lock_path(params.resolved_tracking_uri(), name, fallback_dir)):
        yield


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it if needed. On a local store its artifacts go to
    `<project>/mlruns/`, even when the first run comes from a DVC temp workspace."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for k, v in EXPERIMENT_KIND.items():
            if exp.tags.get(k) != v:
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    location = None
    if sqlite_file(uri) is not None:
        location = (project_root() / "mlruns" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException as exc:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise exc from None
        return exp.experiment_id


def ui_url(uri: str, experiment_id: str | None) -> str:
    """Where to see an experiment's runs: the page of a tracking server, or for a local
    store the `mlflow ui` command and the page it then serves. The address opens the
    experiment on its runs (the machine-learning view), not on the GenAI overview."""
    page = (f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            if experiment_id else "/#/experiments?workflowType=machine_learning")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + page
    return f"mlflow ui --backend-store-uri {uri}, then {UI_ADDRESS}{page}"


def connect(params: MlflowParams) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id.

    Creating a fresh SQLite store is serialised (a lock file beside it): two stages
    starting together on a new store would otherwise both try to create its tables."""
    fast_failing_http()
    uri = params.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    init_lock = file_lock(store_lock_path(uri, "init", Path())) if sqlite_file(uri) \
        else contextlib.nullcontext()
    with refusals.refusals_as_user_error(uri), init_lock:
        exp_id = ensure_experiment(MlflowClient(), params.experiment, uri)
    mlflow.set_experiment(experiment_id=exp_id)
    log.info("MLflow tracking at %s, experiment %r", uri, params.experiment)
    return exp_id


def setup(params: MlflowParams) -> str:
    """`connect`, or a one-line error that says the store is unreachable and what to do."""
    try:
        return connect(params)
    except MlflowException as exc:
        raise unreachable(params.resolved_tracking_uri(), exc) from None


def unreachable(uri: str, exc: BaseException) -> OperationFailed:
    reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return OperationFailed(
        f"MLflow tracking store {uri} is unreachable ({reason}); start it (or fix "
        f"MLFLOW_TRACKING_URI) and rerun `dvc repro`: finished stages are not run again")


@contextlib.contextmanager
def outage_as_user_error() -> Iterator[None]:
    """An unreachable store inside the block stops the stage with `unreachable`'s message."""
    try:
        yield
    except MlflowException as exc:
        if refusals.refusal_status(exc) is not None:
            raise refusals.refusal(exc, mlflow.get_tracking_uri()) from None
        if not is_outage(exc):
            raise
        raise unreachable(mlflow.get_tracking_uri(), exc) from None


def owner_tags() -> dict[str, str]:
    """Who runs a run: lets a later stage tell a run a SIGKILL orphaned from a live one."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_runs(client: MlflowClient, experiment_id: str, stage: str,
                   keep: set[str]) -> list[str]:
    """End as KILLED the runs of `stage` left RUNNING by a process of this host that is
    gone (SIGKILL, power loss); `keep` are runs about to be resumed. Returns their ids."""
    host = socket.gethostname()
    runs = client.search_runs([experiment_id],
                              f"tags.dvc_stage = '{stage}' and attributes.status = 'RUNNING'")
    ended = []
    for r in runs:
        tags = r.data.tags
        if r.info.run_id in keep or tags.get(HOST_TAG) != host:
            continue
        if PID_TAG in tags and _pid_alive(int(tags[PID_TAG])):
            continue
        for child in client.search_runs(
                [experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}' and "
                                 "attributes.status = 'RUNNING'"):
            client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(r.info.run_id, "KILLED")
        ended.append(r.info.run_id)
    if ended:
        log.warning("%s: ended %d run(s) left RUNNING by a process that died: %s", stage,
                    len(ended), ", ".join(ended))
    return ended


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
    """A (nested) params section, dataclass or dict as flat MLflow params: {'a.b': '1'}."""
    if isinstance(obj, BaseModel):
        obj = dict(obj)
    elif dataclasses.is_dataclass(obj):
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
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if refusals.refusal_status(exc) is not None:
            raise refusals.refusal(exc, mlflow.get_tracking_uri()) from None
        if is_outage(exc):
            raise unreachable(mlflow.get_tracking_uri(), exc) from None
        raise UserError(
            f"MLflow run {run_id} of model {name} is not in the tracking store "
            f"{mlflow.get_tracking_uri()}; point MLFLOW_TRACKING_URI at the store that holds "
            f"it, or retrain with `dvc repro -f train@{name}`"
        ) from None
