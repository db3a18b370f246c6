"""Where the test suite's time goes: seconds per test file and the slowest tests.

    python benchmarks/suite_profile.py                 # runs `make test`, with a JUnit report
    python benchmarks/suite_profile.py -m "not slow"   # extra arguments go to pytest
    python benchmarks/suite_profile.py --junit FILE    # reads a JUnit XML of an earlier run

Each file's figure is the sum of its tests' setup, call and teardown (module fixtures land
on the file's first test), so the files add up to the workers' busy time; divided by the
worker count it is the least wall time the suite could take on that many workers, printed
beside the wall time the run took. tests/conftest.py's LONGEST_FIRST should follow the
"per file" ranking.
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = int(os.environ.get("TEST_WORKERS", "2"))    # the Makefile's default, or yours


def run_suite(junit: Path, pytest_args: list[str]) -> float:
    """`make test` itself (the suite as CI runs it), its pytest given a JUnit report through
    PYTEST_ADDOPTS; returns the wall seconds. Failed tests still leave their timings."""
    addopts = " ".join(filter(None, [os.environ.get("PYTEST_ADDOPTS", ""),
                                     f"--junitxml={junit}", *map(shlex.quote, pytest_args)]))
    start = time.monotonic()
    subprocess.run(["make", "-C", str(ROOT), "test"], env={**os.environ, "PYTEST_ADDOPTS":
                                                           addopts}, check=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="report this JUnit XML instead of running")
    parser.add_argument("--top", type=int, default=30)
    args, pytest_args = parser.parse_known_args()
    if args.junit:
        report(args.junit, None, args.top)
        return
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "suite.xml"
        wall = run_suite(junit, pytest_args)
        report(junit, wall, args.top)


if __name__ == "__main__":
    main()
