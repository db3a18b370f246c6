"""The fits of a `train@<model>` stage as tasks on a Ray cluster (`train.executor: ray`).

The K folds and the refit depend on nothing but the data, so each becomes one Ray task that
asks for `train.ray.num_cpus`/`num_gpus`; the stage waits for the longest, not the sum.
A worker runs the very fit loop of the local executor (fit.fit, seeded by the fit's index),
so on CPU with the same seeds it trains the same weights.

Design: workers never talk to MLflow. A task returns its fit's weights, per-epoch metrics
and timings, and the stage process (the driver) replays them through the same hooks as a
local fit: nested run, per-epoch metrics, progress lines, then the checkpoint's record of the
finished fit. So MLflow shows what a local run shows whether or not workers can reach the
tracking server, and the journal keeps a tracking outage from costing any training.

Faults: a worker that dies mid-fold is retried by Ray (`train.ray.max_retries`); where the
worker can read the stage's checkpoint folder (one machine, or a shared file system) the
retry continues from the fold's last finished epoch, else from its start. A fit finished
before the stage was killed is in the checkpoint: a rerun sends only the missing ones.

The package reaches workers through Ray's runtime environment (`py_modules`): a worker needs
Python and the training install, not this checkout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mnist_mlops.core.config import RayParams
from mnist_mlops.core.runtime import (
    SHARED_CORES_VAR,
    TF_THREAD_VARS,
    UserError,
    sigterm_as_interrupt,
)
from mnist_mlops.training import backend
from mnist_mlops.training.checkpoint import PACKAGE_DIR, Checkpoint
from mnist_mlops.training.fit import (
    FitContext,
    FitJob,
    FitResult,
    Split,
    concrete,
    configure,
    fit,
    job_data,
)

log = logging.getLogger(__name__)

INSTALL_HINT = ("install it with `pip install -c requirements.lock -e '.[ray]'` (`make setup` "
                "installs it), or set train.executor: local")
CONNECT_TIMEOUT_S = 5.0
# what a worker's process inherits from the stage: the Keras backend and its quiet start
WORKER_ENV_PREFIXES = ("KERAS_", "TF_", "XLA_", "JAX_", "PYTHONHASHSEED")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"train.executor is ray, but Ray is not installed: {INSTALL_HINT}"
                        ) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once, naming the address, when nothing answers there (ray.init would retry
    for minutes). `auto` is left to Ray, which answers at once."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise UserError(f"RAY_ADDRESS={address} is not a Ray address: give host:port (the "
                        "head's GCS, usually port 6379), ray://host:10001, or auto")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"no Ray cluster answers at RAY_ADDRESS={address} ({exc.strerror or exc}): start "
            "one (`ray start --head` on the head machine, `ray start --address=<head>:6379` "
            "on each worker; docs/ray.md), or unset RAY_ADDRESS to run Ray on this machine "
            "alone") from None


def worker_env() -> dict[str, str]:
    """What a worker's process gets from the stage: the Keras backend and its quiet start,
    and GPU manners: a fit that asks for no GPU sees none (Ray leaves them visible since
    2.48), and one that asks for part of a GPU takes memory as it needs it. TensorFlow's
    thread counts go along when the user set them, not when they are the stage's share of
    this host's cores (`--share-cores`): a worker has its own CPUs (train.ray)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)}
    if os.environ.get(SHARED_CORES_VAR):
        env = {k: v for k, v in env.items() if k not in TF_THREAD_VARS}
    return {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false", **env}


def check_resources(ray: Any, rp: RayParams) -> None:
    """A fit no node can take would wait for ever: say so, and what the nodes have."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= rp.num_cpus and n.get("GPU", 0) >= rp.num_gpus
               for n in nodes):
        have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes)
        raise UserError(f"no Ray node can take a fit asking for {rp.num_cpus:g} CPU and "
                        f"{rp.num_gpus:g} GPU (train.ray); the nodes have: {have}")


@contextlib.contextmanager
def cluster(rp: RayParams) -> Iterator[str]:
    """Connected to the cluster RAY_ADDRESS names, or to a Ray started here for the stage
    (even where `ray start` left one running); yields where. Fails in one line, before any
    fit is sent, when nothing answers or no node can take a fit."""
    ray = _ray()
    address = os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
    local = {} if address else {"include_dashboard": False}
    try:
        ctx = ray.init(address=address or "local",
                       runtime_env={"py_modules": [str(PACKAGE_DIR)], "env_vars": worker_env()},
                       log_to_driver=False, logging_level=logging.WARNING, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"join the Ray cluster at RAY_ADDRESS={address}" if address else \
            "start a Ray on this machine (no RAY_ADDRESS)"
        raise UserError(f"could not {where}: {exc}") from None
    sigterm_as_interrupt()     # ray.init puts its own SIGTERM handler (sys.exit) in place
    where = address or f"a Ray started here ({ctx.address_info.get('address', 'local')})"
    try:
        check_resources(ray, rp)
        log.info("Ray: %d node(s), %g CPU, %g GPU, at %s",
                 sum(1 for n in ray.nodes() if n.get("Alive")),
                 ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0),
                 where)
        yield where
    finally:
        ray.shutdown()


@dataclass
class FitStart:
    """A worker's hooks: what the stage's fit_start will be told once the fit comes back
    (the epochs come back in the fit's record, restored ones included)."""

    sizes: tuple[int, int] = (0, 0)
    resumed_after: int = 0

    def fit_start(self, job: FitJob, sizes: tuple[int, int], resumed_after: int) -> None:
        self.sizes, self.resumed_after = sizes, resumed_after

    def epoch_end(self, job: FitJob, epoch: int, logs: dict[str, float],
                  seconds: float) -> None:
        pass

    def fit_end(self, job: FitJob, result: FitResult) -> None:
        pass


@dataclass
class WorkerFit:
    """One fit as it comes back from its worker."""

    weights: list[np.ndarray]
    record: dict[str, Any]
    start: FitStart
    node: str


@dataclass(frozen=True)
class StageFolder:
    """The stage's checkpoint folder as a worker may see it: used only where it is the same
    folder (its attempt id matches) and writable; elsewhere a retried fit starts afresh."""

    path: str
    attempt: str

    def checkpoint(self) -> Checkpoint | None:
        d = Path(self.path)
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if state.get("attempt") != self.attempt or not os.access(d, os.W_OK):
            return None
        return Checkpoint(d.parent.parent, d.parent.name, d.name)


def fit_on_worker(ctx: FitContext, job: FitJob, train: Split, folds: np.ndarray,
                  folder: StageFolder) -> WorkerFit:
    """One fit on a Ray worker, checkpointing each epoch where the stage's folder is its
    own. `ctx` arrives without checkpoint or hooks: those live with the stage."""
    import ray

    configure(ctx.tp)
    if ctx.tp.data_parallel:      # this worker's devices, as the stage does with its own
        backend.data_parallel(ctx.p.batch_size)
    ckpt = folder.checkpoint()
    seen = FitStart()
    try:
        r = fit(replace(ctx, ckpt=ckpt, hooks=seen), job, *job_data(job, train, folds))
    finally:
        if ckpt is not None:
            ckpt.close_writer()
    assert r.model is not None
    return WorkerFit(r.model.get_weights(), r.record(), seen,
                     ray.get_runtime_context().get_node_id())


class RayRunner:
    """A fit runner (fit.FitRunner) that sends the fits not yet done to a Ray cluster, as
    tasks asking for `rp`'s resources. It joins the cluster in `join`, which the stage calls
    only when some fit is left to train (a rerun that only delivers MLflow writes needs no
    cluster); `close` leaves it."""

    def __init__(self, rp: RayParams) -> None:
        self.rp = rp
        self.ray = _ray()           # not installed: one line, at once
        self._joined = contextlib.ExitStack()
        self.where: str | None = None

    def join(self) -> None:
        if self.where is None:
            self.where = self._joined.enter_context(cluster(self.rp))

    def close(self) -> None:
        self._joined.close()

    def __call__(self, ctx: FitContext, jobs: list[FitJob], train: Split,
                 folds: np.ndarray) -> dict[str, FitResult]:
        ray, rp, ckpt = self.ray, self.rp, ctx.ckpt
        assert ckpt is not None, "finished fits come back to the stage's checkpoint"
        done = {j.key: ckpt.fit_done(j.key) for j in jobs}
        results = {k: FitResult(None, **r) for k, r in done.items() if r is not None}
        # the longest first: the refit (on all images) before the folds, so that N workers
        # finish a refit model's K + 1 fits sooner than in plan order
        todo = sorted((job for job in jobs if job.key not in results),
                      key=lambda job: job.fold is not None)
        if not todo:
            return results
        self.join()
        # what travels to workers: the precision as chosen here, one type for every fit
        bare = replace(ctx, tp=concrete(ctx.tp), ckpt=None, hooks=FitStart())
        data = ray.put(train), ray.put(folds)     # once in the object store, not per task
        folder = StageFolder(str(ckpt.dir), ckpt.state["attempt"])
        pending = {}
        for job in todo:
            task = ray.remote(fit_on_worker).options(
                num_cpus=rp.num_cpus, num_gpus=rp.num_gpus, max_retries=rp.max_retries,
                retry_exceptions=False, name=f"train@{ctx.p.name}:{job.key}")
            pending[task.remote(bare, job, *data, folder)] = job
            log.info("%s %s: sent to Ray (%g CPU, %g GPU)", ctx.p.name, job.label,
                     rp.num_cpus, rp.num_gpus)
        try:
            while pending:
                # a second at a time: a SIGTERM (KeyboardInterrupt here) stops the stage
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                if not ready:
                    continue
                ref = ready[0]
                job = pending.pop(ref)
                results[job.key] = _record(ctx, job, _result(ray, ref, ctx.p.name, job))
        finally:
            for ref in pending:        # stopped or failed: nothing left running for us
                ray.cancel(ref, force=True)
        return results


def _result(ray: Any, ref: Any, name: str, job: FitJob) -> WorkerFit:
    """The task's fit, or its own error as one line naming the model and the fold."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        if isinstance(cause, UserError):
            raise UserError(f"{name} {job.label} (on Ray): {cause}") from None
        raise UserError(f"{name} {job.label} failed on its Ray worker: "
                        f"{type(cause).__name__}: {cause}") from cause
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        raise UserError(f"{name} {job.label}: its Ray worker was lost more times than "
                        f"train.ray.max_retries allows ({_first_line(exc)}); finished fits "
                        "are kept: rerun the stage to train the rest") from None
    except ray.exceptions.RayError as exc:    # out of memory, runtime env, lost objects...
        raise UserError(f"{name} {job.label}: Ray could not run it ({_first_line(exc)}); "
                        "finished fits are kept: rerun the stage to train the rest; the "
                        "workers' logs are in /tmp/ray/session_latest/logs on each node"
                        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _record(ctx: FitContext, job: FitJob, wf: WorkerFit) -> FitResult:
    """A fit back from its worker, told to the stage's hooks as a local fit tells them, then
    recorded in the checkpoint as finished."""
    job = replace(job, tags={**job.tags, "ray_node": wf.node})
    ctx.hooks.fit_start(job, wf.start.sizes, wf.start.resumed_after)
    result = FitResult(None, **wf.record)
    for epoch, logs, seconds in result.epochs():   # those of a killed attempt included
        ctx.hooks.epoch_end(job, epoch, logs, seconds)
    ctx.hooks.fit_end(job, result)
    assert ctx.ckpt is not None
    ctx.ckpt.finish_fit(job.key, wf.weights, result.record())   # final_model reads it there
    log.info("%s %s: done on Ray node %s", ctx.p.name, job.label, wf.node[:12])
    return result
