"""Tests that drive a Debian program (tests/needs.py) skip without it and name the package.
With CI set they fail and name the fix, so a CI machine without the program cannot pass by
skipping. Each case is a real pytest run in a subprocess, with strace hidden by an empty PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .needs import requires

TRACED = '''
from tests.needs import requires


@requires("strace")
def test_traced():
    pass
'''


def run_without_strace(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on a test that requires strace, with an empty folder as PATH and CI as given
    (None: unset), as a bare run that loads tests/needs.py with `-p`."""
    (tmp_path / "test_traced.py").write_text(TRACED)
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env.update(PATH=str(tmp_path / "empty"), PYTHONPATH=str(ROOT),
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")      # faster: no hypothesis, xdist
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.needs", "-p", "no:cacheprovider",
         "--strict-markers", "-rs", "-q", "--rootdir", str(tmp_path), "test_traced.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_missing_program_fails_the_test_and_says_what_to_install(
        tmp_path: Path) -> None:
    proc = run_without_strace(tmp_path, "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 error" in out and "skipped" not in out, out
    assert "CI is set" in out and "`apt-get install strace`" in out and "as root" in out, out


@pytest.mark.parametrize("ci", [None, ""], ids=["unset", "empty"])
def test_outside_ci_a_missing_program_skips_the_test_naming_the_package(
        tmp_path: Path, ci: str | None) -> None:
    proc = run_without_strace(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 skipped" in out and "apt-get install strace" in out, out


def test_a_misspelled_program_is_an_error_not_a_skip() -> None:
    with pytest.raises(ValueError, match="unknown tool 'chromum'"):
        requires("chromum")
