"""The Makefile's own lines: what `make setup` says it installed. The recipe is planned with
`make -n` (nothing is installed) and its message line is run as make would run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, run, synthetic_project


def setup_message(*make_args: str) -> str:
    """What the setup recipe prints when it finishes, under these make arguments."""
    plan = subprocess.run(["make", "-n", "-B", ".venv/.installed", *make_args], cwd=ROOT,
                          text=True, capture_output=True, check=True).stdout
    (line,) = [x for x in plan.splitlines() if x.startswith("echo ") and "installed" in x]
    return subprocess.run(["sh", "-c", line], text=True, capture_output=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize(("gpu", "expected"), [
    ("", "installed .[dev]"),
    ("1", "installed .[dev,gpu]: NVIDIA GPU found, TensorFlow with CUDA"),
])
def test_setup_says_what_it_installed(gpu: str, expected: str) -> None:
    assert setup_message(f"GPU={gpu}") == expected


def make_quick(root: Path, env: dict[str, str]) -> str:
    """`make quick` in `root` (a project of this pipeline; its setup taken as done), on
    settings that fit the tiny synthetic data; stdout and stderr in order."""
    proc = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), "-o", ".venv/.installed", "quick",
         "QUICK=-S preprocess.folds=2 -S train.max_epochs=1"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_make_quick_prints_no_dvc_warnings(tmp_path: Path) -> None:
    """On a fresh clone (no dvc.lock) and again after it, `make quick` shows the stages'
    output and DVC's own lines, but no warnings: not one "No file hash info found for ...
    It won't be created." per output, nor untracked .gitignore files left behind."""
    root, env = synthetic_project(tmp_path / "project")
    params = (root / "params.yaml").read_text()
    for attempt in ("fresh clone", "again"):
        out = make_quick(root, env)
        warnings = [line for line in out.splitlines() if "WARNING" in line]
        assert not warnings, f"{attempt}:\n" + "\n".join(warnings[:10])
        assert "Running stage 'register'" in out, out[-3000:]
        assert (root / "params.yaml").read_text() == params
    exps = run(["dvc", "exp", "list", "--name-only"], root, env).stdout.split()
    assert len(exps) == 2, exps
