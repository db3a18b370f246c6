"""`mnist-mlops repro`: `dvc repro`, with independent stages running side by side.

DVC runs a pipeline's stages one after another, yet the seven `train@<model>` stages need
only the folds, and each `evaluate@<model>` only its own model. Most of a stage's time on
a small run is its own process: imports, tracking, figures, one core busy. So this runs
each stage as `dvc repro --single-item <stage>` in its own process, up to `jobs` at a time,
each as soon as the stages it depends on have finished. DVC itself decides, as always,
whether a stage runs, is restored from the run cache or is skipped, and records it in
`dvc.lock`; it lets go of its repository lock while a stage's command runs, so that stages
can run side by side.

With `share_cores`, each stage's TensorFlow gets its share of the cores instead of every
core (core/runtime.thread_share), unless the environment sets TensorFlow's thread counts
itself. Small stages side by side (the quick profile) then spend less time crowding each
other's cores; long trainings lose by it, since a stage keeps its share when it is left to
run alone (docs/benchmarks.md, "A share of the cores for each small stage").

A stage that fails stops the run: no further stage starts, the running ones finish (as
`make -j` does), and the error names the stage. Ctrl-C or SIGTERM is passed to every
running stage, which ends as it would under `dvc repro` (its MLflow run KILLED, its
checkpoint kept).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mnist_mlops.core.runtime import (
    TF_THREAD_VARS,
    OperationFailed,
    UserError,
    cores,
    thread_share,
)

log = logging.getLogger(__name__)
RAN = "Running stage '"    # DVC's line before it runs a stage's command
STOP_WAIT_S = 60.0        # how long an interrupted stage may take to end before SIGKILL
PUMP_WAIT_S = 10.0        # how long the output of an ended stage may take to drain


@dataclass(frozen=True)
class Plan:
    """The stages to run, in DVC's order, and the planned stages each one waits for."""

    stages: tuple[str, ...]
    needs: Mapping[str, frozenset[str]]


@dataclass
class Outcome:
    """What a run did: each stage's exit status and seconds, in the order they ended, and
    the stages whose command DVC ran (not restored from the run cache, not left as it was),
    in the order they started."""

    ended: list[tuple[str, int, float]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [name for name, rc, _ in self.ended if rc != 0]


def dvc_root(cwd: Path) -> Path:
    """The DVC project `cwd` is in (its root, as `dvc` finds it from a subfolder)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(cwd)))
    except NotDvcRepoError:
        raise UserError(f"{cwd} is not in a DVC project (no .dvc folder here or above): "
                        "run this in the project") from None


def plan(root: Path, targets: Iterable[str] = ()) -> Plan:
    """The stages `dvc repro [targets]` would consider, in its order (DVC's own planning:
    frozen stages cut off from what they need), each with the planned stages it waits for.

    A stage is planned when DVC reports it changed or a stage upstream of it is planned:
    an upstream stage's new output may change it (its own `dvc repro --single-item` then
    decides). Nothing changed: an empty plan."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    try:
        # targets are read as `dvc repro` in `root` reads them; a stage's state under the lock
        with contextlib.chdir(root), Repo(str(root)) as repo, repo.lock:
            graph = get_active_graph(repo.index.graph)   # an edge: stage -> one it needs
            order = plan_repro(graph, collect_stages(repo, list(targets) or [PROJECT_FILE]))
            planned: set = set()
            for stage in order:
                if set(graph.successors(stage)) & planned or stage.changed():
                    planned.add(stage)
            names = {s: s.addressing for s in planned}    # as `dvc repro` here names it
            return Plan(
                stages=tuple(names[s] for s in order if s in planned),
                needs={names[s]: frozenset(names[u] for u in _upstream(graph, s) & planned)
                       for s in planned})
    except DvcException as exc:
        raise UserError(f"DVC could not read the pipeline in {root}: {exc}") from None


def _upstream(graph, stage) -> set:  # noqa: ANN001 (a networkx DiGraph, a DVC stage)
    """Every stage `stage` needs, directly or through others."""
    import networkx as nx

    return set(nx.descendants(graph, stage))


def ready(p: Plan, done: set[str], started: set[str]) -> list[str]:
    """The planned stages not started yet whose planned upstream stages have all ended."""
    return [s for s in p.stages if s not in started and p.needs[s] <= done]


class Runner:
    """Runs a plan's stages, `jobs` at a time, each its own `dvc repro --single-item`."""

    def __init__(self, root: Path, jobs: int, *, share_cores: bool = False,
                 out: IO[str] | None = None) -> None:
        self.root, self.jobs = root, jobs
        self.thread_env = thread_share(jobs) if share_cores else {}
        self.out = out or sys.stderr
        self._write = threading.Lock()
        self._running: dict[str, tuple[subprocess.Popen[bytes], float, threading.Thread]] = {}
        self.outcome = Outcome()

    def run(self, p: Plan) -> Outcome:
        """Every stage of `p`, or until one fails; interrupted: every running stage is
        stopped before the interruption goes on."""
        outcome, done, started = Outcome(), set(), set()
        self.outcome = outcome        # the output pumps note there which stages ran
        try:
            while True:
                if not outcome.failed:
                    for name in ready(p, done, started)[:self.jobs - len(self._running)]:
                        self._start(name)
                        started.add(name)
                if not self._running:
                    return outcome
                name, rc, seconds = self._wait_one()
                outcome.ended.append((name, rc, seconds))
                if rc == 0:
                    done.add(name)
                elif self._running:
                    log.error("stage %s failed (exit %d); waiting for %s to finish; no "
                              "other stage starts", name, rc, ", ".join(self._running))
        except BaseException:
            self._stop_all()
            raise

    def _start(self, name: str) -> None:
        log.info("starting %s", name)
        # --wait-for-lock: DVC holds its repository lock around a stage's command (checking,
        # restoring, committing outputs, writing dvc.lock); a stage starting or ending while
        # another one does that waits its turn instead of failing after 3 s
        proc = subprocess.Popen(["dvc", "--wait-for-lock", "repro", "--single-item", name],
                                cwd=self.root, env={**os.environ, **self.thread_env},
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        pump = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
        self._running[name] = (proc, time.monotonic(), pump)   # stopped on interrupt from now
        pump.start()

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """The stage's output, line by line, each line led by the stage's name when
        stages run side by side. Read to the end even when it cannot be shown (a closed
        terminal, `| head`): a stage blocked on a full pipe would never end."""
        prefix = f"[{name}] " if self.jobs > 1 else ""
        shown = True
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            with self._write:
                if line.startswith(RAN):
                    self.outcome.ran.append(name)
                if shown:
                    try:
                        self.out.write(prefix + line if line.strip() else line)
                        self.out.flush()
                    except (OSError, ValueError):
                        shown = False

    def _wait_one(self) -> tuple[str, int, float]:
        """Block until a running stage ends; its name, exit status and seconds."""
        while True:
            for name, (proc, t0, pump) in list(self._running.items()):
                rc = proc.poll()
                if rc is not None:
                    pump.join(timeout=PUMP_WAIT_S)   # a process it left may hold the pipe
                    del self._running[name]
                    seconds = time.monotonic() - t0
                    log.info("%s %s in %.1f s", name,
                             "finished" if rc == 0 else f"FAILED (exit {rc})", seconds)
                    return name, rc, seconds
            time.sleep(0.1)

    def _stop_all(self) -> None:
        """SIGTERM to every running stage's process group: DVC ends at once, the stage's
        command unwinds (its MLflow run KILLED, its checkpoint kept). Waits until every
        process of each group has ended, SIGKILL after STOP_WAIT_S, so that nothing still
        writes once this returns."""
        for name, (proc, _, _) in self._running.items():
            log.warning("stopping %s", name)
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for proc, _, pump in self._running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))   # reaped: not a zombie
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(proc.pid):
                log.warning("a stage did not end within %.0f s of SIGTERM: killed", STOP_WAIT_S)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            pump.join(timeout=PUMP_WAIT_S)
        self._running.clear()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):     # it has ended meanwhile
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still exists (each stage leads its own group)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def reproduce(root: Path, jobs: int, targets: Iterable[str] = (), *,
              share_cores: bool = False) -> list[str]:
    """Run what `dvc repro [targets]` would, `jobs` stages at a time (with `share_cores`,
    each stage's TensorFlow on its share of the cores); the stages whose command ran. A
    failure: OperationFailed naming the stage."""
    p = plan(root, targets)
    if not p.stages:
        log.info("every stage is up to date: nothing to reproduce")
        return []
    log.info("%d stage(s) to reproduce, %d at a time: %s", len(p.stages), jobs,
             ", ".join(p.stages))
    t0 = time.monotonic()
    runner = Runner(root, jobs, share_cores=share_cores)
    if runner.thread_env:
        log.info("%d stages at a time on %d cores: TensorFlow uses %s thread(s) per pool in "
                 "each (%s; set them to choose otherwise)", jobs, cores(),
                 runner.thread_env[TF_THREAD_VARS[0]],
                 ", ".join(f"{k}={runner.thread_env[k]}" for k in TF_THREAD_VARS))
    outcome = runner.run(p)
    log.info("%d stage(s) in %.1f s (%.1f s of stage time)", len(outcome.ended),
             time.monotonic() - t0, sum(s for _, _, s in outcome.ended))
    if outcome.failed:
        left = [s for s in p.stages if s not in {n for n, _, _ in outcome.ended}]
        led = f" (lines led by [{outcome.failed[0]}])" if jobs > 1 else ""
        raise OperationFailed(
            f"stage {', '.join(outcome.failed)} failed; see its output above{led}. Fix the "
            f"cause and rerun: finished stages are not run again"
            f"{'; not started: ' + ', '.join(left) if left else ''}")
    return outcome.ran
