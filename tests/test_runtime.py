"""Stage processes and their launcher: killing `dvc repro` ends the training it started
(runs KILLED, no outputs), and the next `dvc repro` resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from mnist_mlops.core.runtime import (
    SHARED_CORES_VAR,
    TF_THREAD_VARS,
    cores,
    launchers,
    thread_share,
)

from .conftest import Spawned, run, synthetic_project, wait_for

MODEL = "mlp_512x2"


def stage_pids(root: Path) -> list[int]:
    """Train-stage Python processes running in `root`: not the shell that launched one
    (its `-c` string only contains the module name) and not a child it is forking."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"mnist_mlops.training.train" in argv and cwd == str(root):
            found[int(proc.name)] = ppid
    return [pid for pid, ppid in found.items() if ppid not in found]


def test_processes_side_by_side_each_get_a_share_of_the_cores() -> None:
    assert thread_share(1, {}) == {}                 # alone: TensorFlow's own default
    share = str(max(1, cores() // 2))
    assert thread_share(2, {}) == {**dict.fromkeys(TF_THREAD_VARS, share),
                                   SHARED_CORES_VAR: share}        # marked as a share
    assert thread_share(10 * cores(), {}) == {**dict.fromkeys(TF_THREAD_VARS, "1"),
                                              SHARED_CORES_VAR: "1"}
    assert thread_share(2, {"TF_NUM_INTEROP_THREADS": "4"}) == {}   # the user's stands


def test_launchers_are_the_shell_and_what_started_it() -> None:
    code = "from mnist_mlops.core.runtime import launchers; print(launchers())"
    shell = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{code}'; true"],
                             stdout=subprocess.PIPE, text=True)
    out, _ = shell.communicate(timeout=60)
    assert [int(p) for p in out.strip()[1:-1].split(",")] == [shell.pid, os.getpid()]


def test_launchers_climb_every_shell_up_to_the_first_other_process() -> None:
    """python (the launcher) -> sh -> sh -> the stage: both shells and the launcher, and
    nothing above the launcher (this test's own process)."""
    code = "from mnist_mlops.core.runtime import launchers; print(*launchers())"
    inner = f"echo \\$\\$; {sys.executable} -c '{code}'; true"
    outer = f"echo $$; sh -c \"{inner}\"; true"
    launcher = ("import os, subprocess, sys; print(os.getpid(), flush=True); "
                "subprocess.run(['sh', '-c', sys.argv[1]], check=True)")
    out = subprocess.run([sys.executable, "-c", launcher, outer], capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    python_pid, outer_sh, inner_sh = (int(line) for line in out[:3])
    assert [int(p) for p in out[3].split()] == [inner_sh, outer_sh, python_pid]
    assert launchers(1) == []


@pytest.mark.slow
def test_killing_dvc_ends_the_stage_and_the_next_repro_resumes(tmp_path: Path) -> None:
    root, env = synthetic_project(tmp_path / "project", **{
        "train.max_epochs": None, f"models.{MODEL}.epochs": 120})
    run(["dvc", "repro", "preprocess"], root, env)
    dvc = Spawned(["dvc", "repro", f"train@{MODEL}"], root, env)
    try:
        dvc.wait_for_line("fold 1/2 epoch 3/")
        (stage,) = stage_pids(root)
        dvc.proc.send_signal(signal.SIGKILL)        # what a cancelled CI job does
        dvc.wait()
        t0 = time.monotonic()
        wait_for(lambda: not stage_pids(root), 30, "the orphaned stage to stop")
        stopped_after = time.monotonic() - t0
    finally:
        dvc.kill()
        for pid in stage_pids(root):
            os.kill(pid, signal.SIGKILL)
    assert stopped_after < 10
    time.sleep(2)  # nothing is written after it stopped
    assert not (root / "models" / f"{MODEL}.h5").exists()
    assert not (root / "reports" / "train" / MODEL / "run.json").exists()
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("mnist-mlops")
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.status for r in runs} == {"KILLED"}, [r.info.status for r in runs]

    resumed = run(["dvc", "repro", f"train@{MODEL}"], root, env, timeout=900)
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    assert (root / "models" / f"{MODEL}.h5").is_file()
    assert "up to date" in run(["dvc", "status", f"train@{MODEL}"], root, env).stdout
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # continued
    assert all(r.data.tags["mnist_mlops.pid"] != str(stage) for r in runs)   # by a new process


def test_a_stop_signal_whose_interrupt_was_swallowed_still_stops_the_loop() -> None:
    """An interrupt raised inside a finaliser is only printed by Python: the stage's epoch
    loop asks again (`raise_if_stopped`) and stops."""
    import mnist_mlops.core.runtime as rt

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rt.raise_if_stopped()                 # nothing received yet: no interrupt
        rt.sigterm_as_interrupt()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except KeyboardInterrupt:
            pass                              # swallowed, as a finaliser would
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            rt.raise_if_stopped()
    finally:
        rt._stop_signal = None
        for s, h in old.items():
            signal.signal(s, h)


# A stage's last moments: what Python's own exit does, run_main does too (threads, exit
# handlers, buffered output, the exit status), except freeing every object at the end.
EXIT_STAGE = """
import atexit, logging, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from mnist_mlops.core.runtime import UserError, run_main

out = Path(sys.argv[1])

class Freed:
    # what it needs is bound here: in a teardown the module's globals may be gone already
    def __del__(self, _open=open, _path=str(out / "freed")):
        with _open(_path, "w") as f:
            f.write("teardown ran")

KEPT = Freed()
POOLS = []

def main():
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("finished")
    threading.Thread(target=late).start()
    # an idle pool worker that nobody shuts down (MLflow's artifact pools): Python tells
    # it to end before it waits for the threads; waiting first would never return
    POOLS.append(ThreadPoolExecutor(2))
    POOLS[0].submit(lambda: None).result()
    logging.getLogger("stage").info("stage log line")
    print("unflushed tail", end="")
    if sys.argv[2] == "fail":
        raise UserError("bad params: change them")

run_main(main)
"""


def exit_stage(tmp_path: Path, how: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """EXIT_STAGE in a child whose output is buffered (no PYTHONUNBUFFERED), so that the
    last flush is the exit's own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", EXIT_STAGE, str(tmp_path), how], env=env,
                          text=True, timeout=60, **kw)


@pytest.mark.parametrize(("how", "status"), [("ok", 0), ("fail", 2)])
def test_a_stage_exits_without_the_teardown_but_loses_nothing(tmp_path: Path, how: str,
                                                              status: int) -> None:
    """run_main leaves with os._exit once the exit handlers have run (TensorFlow's teardown
    cost 2.4 s a stage): the status, the buffered output, the running thread's work and
    every exit handler still come through, an idle thread pool ends; only the final
    freeing of objects is skipped."""
    proc = exit_stage(tmp_path, how, capture_output=True)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == "unflushed tail"
    assert "stage log line" in proc.stderr
    assert ("bad params: change them" in proc.stderr) == (how == "fail")
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "finished"
    assert not (tmp_path / "freed").exists()      # the teardown itself did not run


def test_output_that_cannot_be_written_at_exit_is_not_a_success(tmp_path: Path) -> None:
    """The last flush failing: a full disk exits 120 (as Python's own exit does) and says
    so; a reader that has gone, 141 (as `... | head` does to every command)."""
    with open("/dev/full", "w") as full:
        proc = exit_stage(tmp_path, "ok", stdout=full, stderr=subprocess.PIPE)
    assert proc.returncode == 120, proc.stderr
    assert "the output could not be written" in proc.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)                            # the reader is gone before the write
    try:
        proc = exit_stage(tmp_path, "ok", stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
