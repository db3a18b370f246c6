"""The tools that time the loops: against.sh's refusals, the stage timeline, the suite
profile. (Their figures are in docs/benchmarks.md; here, that they read what they claim.)"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import ROOT

AGAINST = ROOT / "benchmarks" / "against.sh"


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("args", "says"), [
    ([], "LOOP is one of"),
    (["HEAD", "lunch"], "unknown loop 'lunch'"),
    (["HEAD", "quick", "0"], "RUNS must be a positive number"),
    (["no-such-commit", "quick"], "'no-such-commit' is not a commit"),
])
def test_against_refuses_bad_arguments_before_building_anything(
        args: list[str], says: str, tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(AGAINST), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert not (tmp_path / ".cache").exists()          # no worktree, no venv, no log


def test_stage_timeline_gives_each_stage_its_span_from_the_stage_before() -> None:
    log = textwrap.dedent("""\
        Running stage 'parse':
        > python -m mnist_mlops.data.parse
        2026-12-06 10:00:00,000 INFO __main__: train: images (60000, 28, 28)
        2026-12-06 10:00:01,500 INFO __main__: test: images (10000, 28, 28)
        Updating lock file 'dvc.lock'

        Running stage 'train@mlp_512x2':
        2026/12/06 10:00:09 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
        2026-12-06 10:00:21,500 INFO __main__: mlp_512x2: CV val accuracy 0.9
        Running stage 'evaluate@mlp_512x2':
        2026-12-06 10:00:31,500 INFO __main__: mlp_512x2: test accuracy 0.9
        Running stage 'register':
        """).splitlines()
    timeline = bench_module("stage_timeline").spans(log)
    assert timeline == [("parse", 1.5), ("train@mlp_512x2", 20.0), ("evaluate@mlp_512x2", 10.0)]


def test_stage_timeline_takes_each_stage_seconds_from_a_side_by_side_run() -> None:
    log = textwrap.dedent("""\
        2026-12-06 10:00:00,000 INFO mnist_mlops.jobs.repro: starting train@a
        [train@a] Running stage 'train@a':
        2026-12-06 10:00:00,001 INFO mnist_mlops.jobs.repro: starting train@b
        [train@b] Running stage 'train@b':
        [train@a] 2026-12-06 10:00:09,000 INFO __main__: a: CV val accuracy 0.9
        2026-12-06 10:00:10,000 INFO mnist_mlops.jobs.repro: train@a finished in 10.0 s
        2026-12-06 10:00:12,500 INFO mnist_mlops.jobs.repro: train@b FAILED (exit 1) in 12.5 s
        2026-12-06 10:00:12,500 INFO mnist_mlops.jobs.repro: 2 stage(s) in 12.5 s (22.5 s ...)
        """).splitlines()
    timeline = bench_module("stage_timeline").spans(log)
    assert timeline == [("train@a", 10.0), ("train@b", 12.5)]


def test_suite_profile_sums_each_file_and_ranks_the_slowest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "suite.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_one" time="10.0"/>'
        '<testcase classname="tests.test_a" name="test_two" time="5.0"/>'
        '<testcase classname="tests.test_b" name="test_three" time="30.0"/>'
        '</testsuite></testsuites>')
    bench_module("suite_profile").report(junit, wall=25.0, top=2)
    out = capsys.readouterr().out
    assert "3 tests, 45 s of test time; wall 25 s on 2 workers (at best 22 s" in out
    per_file = out.split("per file")[1].split("slowest")[0]
    assert per_file.index("test_b") < per_file.index("test_a")
    assert "15.0     2  33.3%  test_a" in per_file
    slowest = out.split("slowest tests (seconds):")[1].splitlines()
    assert [line.split()[-1] for line in slowest if line.strip()] == [
        "test_b::test_three", "test_a::test_one"]


def test_suite_profile_records_each_python_process_that_exits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--processes' recorder in real interpreters: one that exits is a line with its CPU
    time; one killed by a signal is none (the report says such go uncounted)."""
    profile = bench_module("suite_profile")
    (tmp_path / "sitecustomize.py").write_text(profile.RECORDER)
    log = tmp_path / "processes.tsv"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SUITE_PROCESS_LOG": str(log)}
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], env=env,
                   check=True, timeout=60)
    killed = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); "
                               "import time; time.sleep(60)"], env=env, stdout=subprocess.PIPE,
                              text=True)
    assert killed.stdout is not None and killed.stdout.readline() == "up\n"  # recorder armed
    killed.kill()
    killed.wait(timeout=60)
    (row,) = log.read_text().splitlines()
    cpu, tensorflow, argv = row.split("\t")
    assert float(cpu) > 0.05 and tensorflow == "False" and argv == "-c"
    profile.report_processes(log, wall=10.0, busy_share=0.5, top=5)
    out = capsys.readouterr().out
    assert "1 Python processes recorded" in out and "busy 50% of them" in out
    assert "0 of them loaded TensorFlow" in out and out.rstrip().endswith("-c")
    assert [profile.kind(a) for a in (
        "/v/bin/dvc --wait-for-lock repro train@a", "/p/src/mnist_mlops/training/train.py m",
        "/v/bin/mnist-mlops --params p.yaml sweep m", "/v/bin/mlflow server --port 1")] == [
        "dvc repro", "training/train.py", "mnist-mlops sweep", "mlflow server"]


@pytest.mark.slow
def test_profile_stage_runs_the_stage_and_ranks_its_functions(tmp_path: Path) -> None:
    """The download stage of a project, run by the profiler as `dvc repro` would run it:
    its outputs written, its own functions listed with their seconds, the longest first."""
    from .conftest import synthetic_project

    root, env = synthetic_project(tmp_path / "project")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_stage.py"),
                           "mnist_mlops.data.download", "--min-share", "0"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((root / "data" / "raw").glob("*.gz"))) == 4
    assert proc.stdout.startswith("mnist_mlops.data.download: ")
    ours = proc.stdout.split("this package's functions")[1].split("\n\n")[0]
    seconds = [float(line.split()[0]) for line in ours.splitlines()[1:]]
    assert seconds == sorted(seconds, reverse=True) and len(seconds) > 3
    assert "data/download.py" in ours and "(main)" in ours


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_speed_benchmarks_peak_is_a_matmul_in_the_loops_type(dtype: str) -> None:
    """A recipe that trains in bfloat16 is held against a bfloat16 matmul's peak (TensorFlow
    cannot hand NumPy a bfloat16 tensor: the benchmark reads its result as float32)."""
    speed = bench_module("bench_speed")
    flops, what = speed.peak_flops(dtype, seconds=0.2, window=0.05)
    assert flops > 1e8 and f" {dtype} matmul 2048x2048" in what
