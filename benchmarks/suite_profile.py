"""Where the test suite's time goes: seconds per test file and the slowest tests.

    python benchmarks/suite_profile.py                 # runs `make test`, with a JUnit report
    python benchmarks/suite_profile.py -m "not slow"   # extra arguments go to pytest
    python benchmarks/suite_profile.py --junit FILE    # reads a JUnit XML of an earlier run
    python benchmarks/suite_profile.py --processes     # also: CPU seconds per kind of process

Each file's figure is the sum of its tests' setup, call and teardown (module fixtures land
on the file's first test), so the files add up to the workers' busy time; divided by the
worker count it is the least wall time the suite could take on that many workers, printed
beside the wall time the run took. tests/conftest.py's LONGEST_FIRST should follow the
"per file" ranking.

--processes says what the suite's CPU time is spent in, across every Python process it
starts (stages, `dvc`, `mnist-mlops`, servers, scripts): a `sitecustomize`
module put first on PYTHONPATH records each process's own CPU seconds as it exits, and
whether it loaded TensorFlow. Processes that end without Python's exit handlers (killed by
a signal, as the fault tests and server teardowns do; pytest's workers, which skip the
handlers registered before the test files' imports: tests/conftest.py) and programs that
are not Python (PostgreSQL, Chromium) are not counted; the machine's busy share over the
run is printed beside, from /proc/stat. A sitecustomize of your own on the path is
shadowed meanwhile.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = int(os.environ.get("TEST_WORKERS", "2"))    # the Makefile's default, or yours


# Each Python process appends one line as it exits: its own CPU seconds, whether it loaded
# TensorFlow, its argv. Written into a temporary folder put first on PYTHONPATH.
RECORDER = """import atexit, os, sys
def _record():
    try:
        t = os.times()
        argv = " ".join(sys.argv).replace("\\t", " ")[:300]
        fields = [f"{t.user + t.system:.2f}", str("tensorflow" in sys.modules), argv]
        with open(os.environ["SUITE_PROCESS_LOG"], "a") as f:
            f.write("\\t".join(fields) + "\\n")
    except Exception:
        pass
atexit.register(_record)
"""


def run_suite(junit: Path, pytest_args: list[str], env: dict[str, str] | None = None
              ) -> float:
    """`make test` itself (the suite as CI runs it), its pytest given a JUnit report through
    PYTEST_ADDOPTS, with `env` added; returns the wall seconds. Failed tests still leave
    their timings."""
    addopts = " ".join(filter(None, [os.environ.get("PYTEST_ADDOPTS", ""),
                                     f"--junitxml={junit}", *map(shlex.quote, pytest_args)]))
    start = time.monotonic()
    subprocess.run(["make", "-C", str(ROOT), "test"], check=False,
                   env={**os.environ, **(env or {}), "PYTEST_ADDOPTS": addopts})
    wall = time.monotonic() - start
    if not junit.exists():
        sys.exit("make test wrote no JUnit report: its output above says why")
    return wall


def report(junit: Path, wall: float | None, top: int) -> None:
    per_file: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    tests = []
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("classname", "").rsplit(".", 1)[-1]
        seconds = float(case.get("time", 0))
        per_file[name] += seconds
        count[name] += 1
        tests.append((seconds, f"{name}::{case.get('name')}"))
    busy = sum(per_file.values())
    line = f"{len(tests)} tests, {busy:.0f} s of test time"
    if wall is not None:
        line += (f"; wall {wall:.0f} s on {WORKERS} workers (at best {busy / WORKERS:.0f} s: "
                 f"{wall / (busy / WORKERS):.2f}x of that)")
    print(line)
    print("\nper file (seconds, tests, share):")
    for name, seconds in per_file.most_common():
        print(f"{seconds:8.1f} {count[name]:5d} {seconds / busy:6.1%}  {name}")
    print(f"\nthe {top} slowest tests (seconds):")
    for seconds, name in sorted(tests, reverse=True)[:top]:
        print(f"{seconds:8.1f}  {name}")


def cpu_busy() -> tuple[int, int] | None:
    """(all, idle) jiffies of the whole machine so far, or None where /proc/stat is not."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[3] + fields[4]


def kind(argv: str) -> str:
    """A process's kind from its argv: this package's module, or a command and its verb."""
    words = argv.split()
    if not words:
        return "?"
    if "/mnist_mlops/" in words[0]:
        return words[0].split("/mnist_mlops/", 1)[1]
    name = Path(words[0]).name
    verb = next((w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w)), "")  # not a value
    return f"{name} {verb}" if name in ("dvc", "mnist-mlops", "mlflow") else name


def report_processes(log: Path, wall: float, busy_share: float | None, top: int) -> None:
    rows = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    per: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for cpu, tensorflow, argv in rows:
        entry = per[kind(argv) + (" [TensorFlow]" if tensorflow == "True" else "")]
        entry[0] += 1
        entry[1] += float(cpu)
    total = sum(v[1] for v in per.values())
    cores = os.cpu_count() or 1
    line = (f"\n{len(rows)} Python processes recorded {total:.0f} CPU s; the machine had "
            f"{wall * cores:.0f} core-seconds in the run")
    if busy_share is not None:
        line += f", busy {busy_share:.0%} of them ({busy_share * wall * cores:.0f} s)"
    print(line)
    tf = [float(cpu) for cpu, tensorflow, _ in rows if tensorflow == "True"]
    print(f"{len(tf)} of them loaded TensorFlow: {sum(tf):.0f} CPU s")
    print("\nper kind of process (CPU s, processes, CPU s each, share of the recorded):")
    for name, (n, cpu) in sorted(per.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{cpu:8.1f} {int(n):5d} {cpu / n:7.2f} {cpu / max(total, 1e-9):6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="report this JUnit XML instead of running")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--processes", action="store_true",
                        help="also record every Python process's CPU time (see above)")
    args, pytest_args = parser.parse_known_args()
    if args.junit:
        report(args.junit, None, args.top)
        return
    with tempfile.TemporaryDirectory() as tmp:
        junit, log, env = Path(tmp) / "suite.xml", Path(tmp) / "processes.tsv", {}
        if args.processes:
            (Path(tmp) / "sitecustomize.py").write_text(RECORDER)
            env = {"SUITE_PROCESS_LOG": str(log), "PYTHONPATH": os.pathsep.join(
                filter(None, [tmp, os.environ.get("PYTHONPATH", "")]))}
        before = cpu_busy()
        wall = run_suite(junit, pytest_args, env)
        after = cpu_busy()
        report(junit, wall, args.top)
        if args.processes:
            share = (1 - (after[1] - before[1]) / max(1, after[0] - before[0])
                     if before and after else None)
            report_processes(log, wall, share, args.top)


if __name__ == "__main__":
    main()
