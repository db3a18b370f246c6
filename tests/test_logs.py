"""What a process writes to its log: the project's own lines by default, the libraries'
lines (TensorFlow's C++ start-up lines among them) with `mnist-mlops -v` or
MNIST_MLOPS_VERBOSE=1."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mnist_mlops.core.config import load_params

from .conftest import ROOT, run, tool_env
from .drawing import draw_digit

# TensorFlow's C++ lines (runtime.NATIVE_NOISE), written to fd 2 at start-up
NATIVE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuInit|cudart_stub", re.M)
CLI = str(Path(sys.executable).parent / "mnist-mlops")


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained mlp_512x2 as .h5: enough for a command that loads a model."""
    from mnist_mlops.training.models import build_model, compile_model

    p = load_params(ROOT / "params.yaml").models["mlp_512x2"]
    path = tmp_path_factory.mktemp("model") / "mlp.h5"
    compile_model(build_model(p), p).save(path)
    return path


def test_cli_verbose_brings_library_lines_back(untrained_model: Path, tmp_path: Path) -> None:
    draw_digit(3).save(tmp_path / "three.png")
    cmd = ["--params", str(ROOT / "params.yaml"), "predict", str(tmp_path / "three.png"),
           "--model", str(untrained_model)]
    quiet = run([CLI, *cmd], tmp_path, tool_env())
    assert not NATIVE.search(quiet.stderr), quiet.stderr[-2000:]
    assert "DEBUG" not in quiet.stderr

    loud = run([CLI, "-v", *cmd], tmp_path, tool_env())
    assert loud.stdout == quiet.stdout                        # the same answer
    assert NATIVE.search(loud.stderr), loud.stderr[-2000:]    # native stderr unfiltered
    assert re.search(r" DEBUG (?!mnist_mlops)", loud.stderr), loud.stderr[-2000:]
    env_loud = run([CLI, *cmd], tmp_path, tool_env(MNIST_MLOPS_VERBOSE="1"))
    assert NATIVE.search(env_loud.stderr), env_loud.stderr[-2000:]
