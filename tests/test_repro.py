"""`mnist-mlops repro` (jobs/repro.py) and `mnist-mlops exp-run` (jobs/experiment.py) on a
real git + DVC project whose stages are small Python scripts, so that what is tested is
the scheduling, DVC's records and the experiment, in seconds: stages that need each other
run in order, the others side by side; a failure stops what has not started; a signal
stops every stage; an experiment leaves the workspace as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from mnist_mlops.core.runtime import TF_THREAD_VARS, OperationFailed, cores
from mnist_mlops.jobs import repro

from .conftest import run, tool_env

pytestmark = pytest.mark.slow   # real DVC processes and signals

# A stage: waits `sleep` seconds (params.yaml), records its pid, start and end, and fails
# with exit 3 when params.yaml's `fail` names it. Stopped by SIGTERM, it takes a second to
# unwind (as a training ends its MLflow run and keeps its checkpoint), then says so.
STAGE = '''
import json, os, signal, sys, time, yaml
name, deps = sys.argv[1], sys.argv[2:]
def stop(*_):
    time.sleep(1.0)
    open(f"out/{name}.stopped", "w").write("unwound")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
p = yaml.safe_load(open("params.yaml"))
os.makedirs("out", exist_ok=True)
open(f"out/{name}.pid", "w").write(str(os.getpid()))
start = time.time()
time.sleep(p["sleep"].get(name, 0))
for _ in range(p.get("noise", {}).get(name, 0)):
    print("x" * 99, flush=True)
if name in p["fail"]:
    sys.exit(3)
text = "".join(open(f"out/{d}.txt").read() for d in deps) + f"{name}{p['n']}\\n"
open(f"out/{name}.txt", "w").write(text)
json.dump({"start": start, "end": time.time(),
           "threads": [os.environ.get(v) for v in ("TF_NUM_INTRAOP_THREADS",
                                                   "TF_NUM_INTEROP_THREADS")]},
          open(f"out/{name}.json", "w"))
'''


def stage(name: str, deps: tuple[str, ...] = ()) -> dict:
    return {"cmd": f"python stage.py {name} {' '.join(deps)}".strip(),
            "deps": ["stage.py", *(f"out/{d}.txt" for d in deps)],
            "params": ["n", "sleep", "fail"],
            "outs": [f"out/{name}.txt", {f"out/{name}.json": {"cache": False}}]}


def diamond(root: Path, sleep: dict[str, float] | None = None,
            fail: tuple[str, ...] = ()) -> Path:
    """A committed project: a, then b and c (each needs only a), then d (needs both)."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(STAGE)
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"n": 1, "sleep": sleep or {}, "fail": list(fail)}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": stage("a"), "b": stage("b", ("a",)), "c": stage("c", ("a",)),
        "d": stage("d", ("b", "c"))}}))
    (root / ".gitignore").write_text("/out/*.pid\n/out/*.stopped\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.invalid"],
                ["git", "config", "user.name", "t"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "pipeline"]):
        run(cmd, root)
    return root


def span(root: Path, name: str) -> tuple[float, float]:
    t = json.loads((root / "out" / f"{name}.json").read_text())
    return t["start"], t["end"]


def set_param(root: Path, key: str, value: object) -> None:
    p = yaml.safe_load((root / "params.yaml").read_text())
    p[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(p))


@pytest.fixture(autouse=True)
def _venv_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage commands and `dvc` are this venv's, as in the project."""
    monkeypatch.setenv("PATH", tool_env()["PATH"])


def test_independent_stages_run_side_by_side_and_dependent_ones_wait(tmp_path: Path) -> None:
    root = diamond(tmp_path / "p", sleep={"b": 1.5, "c": 1.5})
    ran = repro.reproduce(root, jobs=2)
    assert sorted(ran) == ["a", "b", "c", "d"]
    a, b, c, d = (span(root, s) for s in "abcd")
    assert a[1] <= min(b[0], c[0]), "b and c started before a ended"
    assert b[0] < c[1] and c[0] < b[1], f"b {b} and c {c} did not overlap"
    assert d[0] >= max(b[1], c[1]), "d started before b and c ended"
    assert (root / "out" / "d.txt").read_text() == "a1\nb1\na1\nc1\nd1\n"
    # DVC recorded every stage: nothing left to do, for DVC and for the plan
    assert "up to date" in run(["dvc", "status"], root).stdout
    assert repro.reproduce(root, jobs=2) == []


def test_one_job_runs_them_one_after_another(tmp_path: Path) -> None:
    root = diamond(tmp_path / "p", sleep={"b": 0.5, "c": 0.5})
    repro.reproduce(root, jobs=1)
    b, c = span(root, "b"), span(root, "c")
    assert b[1] <= c[0] or c[1] <= b[0], f"b {b} and c {c} overlapped with --jobs 1"


def threads(root: Path, name: str) -> list[str | None]:
    """TensorFlow's thread counts as the stage's environment gave them."""
    return json.loads((root / "out" / f"{name}.json").read_text())["threads"]


def test_stages_share_the_cores_when_asked_unless_the_user_set_the_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TF_THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    share = str(max(1, cores() // 2))
    root = diamond(tmp_path / "p")
    repro.reproduce(root, jobs=2, share_cores=True)
    assert {tuple(threads(root, s)) for s in "abcd"} == {(share, share)}
    for n, jobs, share_cores in ((2, 2, False), (3, 1, True)):    # not asked; one at a time
        set_param(root, "n", n)                  # every stage runs again
        repro.reproduce(root, jobs=jobs, share_cores=share_cores)
        assert {tuple(threads(root, s)) for s in "abcd"} == {(None, None)}
    set_param(root, "n", 4)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "7")     # the user's own setting stands
    repro.reproduce(root, jobs=2, share_cores=True)
    assert {tuple(threads(root, s)) for s in "abcd"} == {("7", None)}


def test_plan_holds_what_changed_and_what_stands_below_it(tmp_path: Path) -> None:
    root = diamond(tmp_path / "p")
    repro.reproduce(root, jobs=2)
    (root / "out" / "c.txt").unlink()          # an output gone: c, and d below it
    p = repro.plan(root)
    assert set(p.stages) == {"c", "d"}
    assert p.needs == {"c": frozenset(), "d": frozenset({"c"})}
    assert repro.plan(root, ["b"]).stages == ()    # b and a are as DVC recorded them
    assert repro.reproduce(root, jobs=2, targets=["c"]) == ["c"]
    # c made the same file again, so d's input did not change: DVC leaves it, so does plan
    assert repro.plan(root).stages == ()


def test_a_failed_stage_stops_what_has_not_started(tmp_path: Path) -> None:
    root = diamond(tmp_path / "p", sleep={"c": 2.0}, fail=("b",))
    with pytest.raises(OperationFailed) as err:
        repro.reproduce(root, jobs=2)
    assert "stage b failed" in str(err.value) and "not started: d" in str(err.value)
    assert (root / "out" / "c.txt").exists(), "c, already running, was not let finish"
    assert not (root / "out" / "d.txt").exists()
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"a", "c"}                     # c's run is recorded, b's is not
    set_param(root, "fail", [])                         # fixed: b and what needs it run
    assert sorted(repro.reproduce(root, jobs=2)) == ["a", "b", "c", "d"]
    assert "up to date" in run(["dvc", "status"], root).stdout


def test_the_command_fails_with_the_stage_named(tmp_path: Path) -> None:
    root = diamond(tmp_path / "p", fail=("c",))
    proc = run(["mnist-mlops", "repro", "-j", "2"], root, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "stage c failed" in last and "lines led by [c]" in last, last
    assert "[c] " in proc.stderr                       # the stage's own lines, marked


def test_sigterm_stops_every_running_stage(tmp_path: Path) -> None:
    root = diamond(tmp_path / "p", sleep={"b": 60, "c": 60})
    proc = subprocess.Popen(["mnist-mlops", "repro", "-j", "2"], cwd=root, env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids = [root / "out" / f"{s}.pid" for s in "bc"]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.read_text() for p in pids):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.2)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - t0 < 20
    # it returned only once each stage's command had unwound, not when DVC itself ended
    assert {p.name for p in (root / "out").glob("*.stopped")} == {"b.stopped", "c.stopped"}
    for p in pids:
        pid = int(p.read_text())
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"stage process {pid} outlived the run"
            time.sleep(0.2)
    assert not (root / "out" / "b.txt").exists() and not (root / "out" / "c.txt").exists()
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {"a"}


def test_output_that_cannot_be_shown_is_still_read_to_the_end(tmp_path: Path) -> None:
    """A closed terminal or `| head`: writing fails, yet each stage's output is drained, so
    that no stage blocks on a full pipe (200 kB each here, three times the pipe's 64 kB)."""
    root = diamond(tmp_path / "p")
    set_param(root, "noise", {s: 2000 for s in "abcd"})
    closed = (tmp_path / "gone.log").open("w")
    closed.close()                                     # every write raises ValueError
    runner = repro.Runner(root, 2, out=closed)
    worker = threading.Thread(target=runner.run, args=(repro.plan(root),), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the run hung on a stage's unread output"
    assert not runner.outcome.failed and sorted(runner.outcome.ran) == ["a", "b", "c", "d"]
    assert "up to date" in run(["dvc", "status"], root).stdout


def test_outside_a_project_without_a_commit_or_with_a_broken_pipeline_is_one_line(
        tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    proc = run(["mnist-mlops", "repro"], nowhere, check=False)
    assert proc.returncode == 2 and "is not in a DVC project" in proc.stderr, proc.stderr
    root = tmp_path / "fresh"
    root.mkdir()
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    proc = run(["mnist-mlops", "exp-run"], root, check=False)
    assert proc.returncode == 2 and "no commit yet" in proc.stderr, proc.stderr
    (root / "dvc.yaml").write_text("stages:\n  a:\n    cmd: [not, a, command]\n    outs: 3\n")
    proc = run(["mnist-mlops", "repro"], root, check=False)
    assert proc.returncode == 2 and "DVC could not read the pipeline" in proc.stderr, \
        proc.stderr
    assert "Traceback" not in proc.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by its parent) is not running
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def experiments(root: Path) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's name -> its params.yaml."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    out = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                out[rev["name"]] = data["params"]["params.yaml"]["data"]
    return out


def test_exp_run_saves_an_experiment_and_leaves_the_workspace_as_it_was(
        tmp_path: Path) -> None:
    root = diamond(tmp_path / "p", sleep={"b": 0.5, "c": 0.5})
    (root / "old.txt").write_text("committed, then removed\n")
    run(["git", "add", "old.txt"], root)
    run(["git", "commit", "-q", "-m", "old"], root)
    run(["git", "rm", "-q", "old.txt"], root)                  # a staged deletion
    (root / "stage.py").write_text(STAGE + "# edited, not committed\n")
    (root / "notes.txt").write_text("untracked\n")
    (root / "link.txt").symlink_to("notes.txt")                # an untracked symlink
    before = {f: (root / f).read_text() for f in ("params.yaml", "stage.py", "notes.txt")}
    proc = run(["mnist-mlops", "exp-run", "-S", "n=7", "-n", "seven"], root)
    assert "saved as experiment seven" in proc.stderr
    assert experiments(root)["seven"]["n"] == 7
    assert {f: (root / f).read_text() for f in before} == before
    ref = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
    (exp,) = [r for r in ref if r.endswith("/seven")]
    tree = run(["git", "ls-tree", "-r", exp], root).stdout
    assert "old.txt" not in tree                               # deleted there too
    assert any(line.startswith("120000") and line.endswith("\tlink.txt")
               for line in tree.splitlines()), tree            # still a link
    assert not (root / "out").exists()                  # nothing ran in the workspace
    assert run(["git", "worktree", "list"], root).stdout.count("\n") == 1
    assert not list((root / ".dvc" / "tmp" / "exps").glob("exp-*"))
    # the experiment holds the workspace's uncommitted edit, and its outputs are in the
    # workspace's cache: applied, they are there
    run(["dvc", "exp", "apply", "seven"], root)
    assert (root / "stage.py").read_text() == before["stage.py"]
    assert (root / "out" / "d.txt").read_text() == "a7\nb7\na7\nc7\nd7\n"


def test_exp_run_refuses_a_malformed_setting_and_reports_a_failed_stage(
        tmp_path: Path) -> None:
    root = diamond(tmp_path / "p")
    bad = run(["mnist-mlops", "exp-run", "-S", "n"], root, check=False)
    assert bad.returncode == 2 and "key=value" in bad.stderr, bad.stderr[-1500:]
    failed = run(["mnist-mlops", "exp-run", "-S", "fail=[d]"], root, check=False)
    assert failed.returncode == 1 and "stage d failed" in failed.stderr, failed.stderr[-1500:]
    assert experiments(root) == {}
    assert run(["git", "worktree", "list"], root).stdout.count("\n") == 1
    assert not list((root / ".dvc" / "tmp" / "exps").glob("exp-*"))
