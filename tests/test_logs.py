"""What a process writes to its log: the project's own lines by default, the libraries'
lines (TensorFlow's C++ start-up lines among them) with `mnist-mlops -v` or
MNIST_MLOPS_VERBOSE=1."""

from __future__ import annotations

import re
import subprocess
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


@pytest.mark.slow   # three CLI processes, each importing TensorFlow
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


def test_stage_modules_load_no_framework_at_import() -> None:
    """A stage imports Keras (and with it TensorFlow, JAX or PyTorch) only once run_main has
    started filtering stderr: importing a stage's module loads none of them."""
    stages = sorted(set(re.findall(r"python -m (mnist_mlops\.[\w.]+)",
                                   (ROOT / "dvc.yaml").read_text())))
    assert "mnist_mlops.evaluation.evaluate" in stages
    # One process imports them in turn and prints, after each, the frameworks loaded so
    # far: the first module that loads one is named (one interpreter start, not seven).
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    importlib.import_module(m)\n"
            "    print(m, *sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))")
    out = run([sys.executable, "-c", code, *stages], ROOT, tool_env()).stdout
    loaded = dict((line.split(" ", 1) + [""])[:2] for line in out.splitlines())
    assert loaded == dict.fromkeys(stages, ""), loaded


def stage_logs(output: str) -> dict[str, str]:
    """`dvc repro`'s output cut into what each stage printed, by stage name."""
    parts = re.split(r"^Running stage '([^']+)':\n", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny real pipeline run by `dvc repro`: the project, and the output by stage."""
    from .conftest import synthetic_project

    root, env = synthetic_project(tmp_path_factory.mktemp("logs") / "project")
    proc = subprocess.run(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1200)  # in order
    assert proc.returncode == 0, proc.stdout[-4000:]
    logs = stage_logs(proc.stdout)
    assert {"train@mlp_512x2", "evaluate@mlp_512x2", "register"} <= set(logs), list(logs)
    return root, logs


@pytest.fixture(scope="module")
def pipeline_logs(pipeline: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return pipeline[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train@mlp_512x2", "evaluate@mlp_512x2", "register"])
def test_stage_logs_have_no_native_lines(pipeline_logs: dict[str, str], stage: str) -> None:
    """TensorFlow's C++ start-up lines are dropped in every stage that loads a model, not
    only in training (a stage that imports Keras before run_main filters stderr shows them)."""
    log = pipeline_logs[stage]
    assert not NATIVE.search(log), f"{stage}:\n{log[-3000:]}"
    assert log.strip(), stage


@pytest.mark.slow
def test_train_and_register_end_with_the_runs_page(pipeline: tuple[Path, dict[str, str]]
                                                   ) -> None:
    """The train stage's closing line and the register stage's last line say how to see
    the runs: `mlflow ui` on the project's store, then the experiment's runs page."""
    from mlflow.tracking import MlflowClient

    root, logs = pipeline
    uri = f"sqlite:///{root}/mlflow.db"
    exp = MlflowClient(uri).get_experiment_by_name("mnist-mlops")
    page = (f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/"
            f"{exp.experiment_id}/runs?workflowType=machine_learning")
    for stage, closing in (("train@mlp_512x2", "CV val accuracy"), ("register", "")):
        last = [line for line in logs[stage].splitlines() if " INFO " in line][-1]
        assert closing in last and last.endswith(page), f"{stage}: {last}"
