"""The Makefile's own lines: what `make setup` says it installed. The recipe is planned with
`make -n` (nothing is installed) and its message line is run as make would run it."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import ROOT


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
