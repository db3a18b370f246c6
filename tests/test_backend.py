"""GPU detection: `make setup` and the train stage's warning, on a machine whose
`nvidia-smi` lists a GPU. No GPU exists here, so a stand-in `nvidia-smi` script prints
what the real one prints; everything else is real (make, the Python functions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_mlops.training import backend

from .conftest import ROOT

LISTING = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f1c2b9e-0000-0000-0000-000000000000)"


@pytest.fixture
def gpu_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] && echo '{LISTING}'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    return tool.parent


def test_make_setup_installs_the_gpu_extra_when_a_gpu_is_listed(gpu_machine: Path) -> None:
    def planned(*args: str) -> str:
        out = subprocess.run(["make", "-n", "-B", "setup", *args], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout
        return next(line for line in out.splitlines() if "-c requirements.lock" in line)

    assert "'.[dev,gpu]'" in planned()
    assert "'.[dev]'" in planned("GPU=")                       # opting out


def test_without_a_gpu_make_setup_installs_dev_only(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}                # no nvidia-smi
    out = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, env=env, text=True,
                         capture_output=True, check=True).stdout
    assert "'.[dev]'" in out and "gpu" not in out.split("-c requirements.lock")[1]


def test_a_gpu_the_framework_cannot_use_is_a_warning_with_the_fix(gpu_machine: Path) -> None:
    assert backend.nvidia_gpus() == ["NVIDIA H100 80GB HBM3"]
    warning = backend.unused_gpu_warning({"device": "cpu:x86_64", "backend": "tensorflow"})
    assert warning is not None and "NVIDIA H100 80GB HBM3" in warning
    assert "pip install -e '.[gpu]'" in warning and "nvidia-smi" in warning
    assert "jax[cuda12]" in backend.unused_gpu_warning({"device": "cpu", "backend": "jax"})
    assert backend.unused_gpu_warning({"device": "gpu:H100", "backend": "tensorflow"}) is None


def test_no_gpu_no_warning() -> None:
    if backend.nvidia_gpus():
        pytest.skip("this machine has a GPU")
    assert backend.unused_gpu_warning({"device": "cpu", "backend": "tensorflow"}) is None


JIT_AUTO = "from mnist_mlops.training import backend; print(backend.jit_compile('auto'))"


@pytest.mark.slow
@pytest.mark.parametrize(("keras_backend", "compiled"), [("jax", "True"),
                                                         ("tensorflow", "False")])
def test_xla_auto_compiles_the_train_step_under_jax_only(keras_backend: str,
                                                         compiled: str) -> None:
    """Uncompiled, a JAX train step runs op by op from Python (several times slower); the
    TensorFlow default stays the tested graph mode."""
    if keras_backend == "jax":
        pytest.importorskip("jax")
    from .conftest import tool_env

    out = subprocess.run([sys.executable, "-c", JIT_AUTO], capture_output=True, text=True,
                         env=tool_env(KERAS_BACKEND=keras_backend), timeout=120, check=True)
    assert out.stdout.strip() == compiled
    assert backend.jit_compile(True) is True and backend.jit_compile(False) is False


@pytest.mark.slow
@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_quick_pipeline_under_another_backend_registers_a_champion_pyfunc_serves(
        tmp_path: Path, keras_backend: str) -> None:
    """The whole pipeline with KERAS_BACKEND=jax (and torch where PyTorch is installed; not
    in CI): train, MLflow model, evaluate (with the ONNX export, made from the .h5 by a
    TensorFlow-backend process and checked against this backend's answers), register, then
    `mlflow.pyfunc` (the ONNX flavour) and `predict` serve it."""
    pytest.importorskip(keras_backend)
    import json

    import mlflow
    import numpy as np

    from mnist_mlops.data.dataset import load_dataset

    from .conftest import run, synthetic_project

    root, env = synthetic_project(tmp_path / "project", models=("cnn_32_64_64",))
    env = {**env, "KERAS_BACKEND": keras_backend}
    out = run(["dvc", "repro"], root, env, timeout=900)
    step = "compiled" if keras_backend == "jax" else "uncompiled"
    # auto keeps float32 under another backend: bfloat16 was measured faster under TensorFlow
    assert f"(Keras backend {keras_backend}, {step} train step, float32)" in \
        out.stdout + out.stderr
    record = json.loads((root / "reports" / "registry.json").read_text())
    assert record["promoted"] is True and record["champion"] == "1"

    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("mnist-digits", "champion")
    run_tags = client.get_run(version.run_id).data.tags
    assert run_tags["backend"] == keras_backend
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/mnist-digits@champion")
    finally:
        mlflow.set_tracking_uri(None)
    data = load_dataset(root / "data" / "interim" / "mnist.npz")
    x = data["x_test"][:20][..., None]
    parity = json.loads((root / "models" / "onnx" / "cnn_32_64_64" / "parity.json").read_text())
    assert parity["ok"] and parity["images"] == len(data["x_test"])
    served = np.asarray(model.predict(x)["probabilities"])
    assert served.shape == (20, 10) and np.allclose(served.sum(axis=1), 1, atol=1e-4)
    metrics = json.loads((root / "metrics" / "cnn_32_64_64.json").read_text())
    assert (served.argmax(axis=1) == data["y_test"][:20]).mean() >= min(
        1.0, metrics["test_accuracy"]) - 0.35               # the model evaluate scored

    from PIL import Image

    Image.fromarray(255 - data["x_test"][0]).resize((140, 140)).save(root / "digit.png")
    cli = str(Path(sys.executable).parent / "mnist-mlops")
    answer = json.loads(run([cli, "predict", "digit.png", "--json"], root,
                            {**env, "MLFLOW_TRACKING_URI": uri}).stdout)
    assert answer[0]["error"] is None and answer[0]["digit"] in range(10)
    assert answer[0]["model"]["version"] == "1"          # the champion, read as Keras


@pytest.mark.parametrize(("n", "batch", "devices", "kept"), [
    (45000, 64, 1, 45000),    # one device: everything, as always
    (45000, 64, 2, 45000),    # last batch of 8 splits over 2
    (45001, 64, 2, 45000),    # last batch of 9 does not: one image sits out this epoch
    (15000, 32, 8, 15000),
    (15003, 32, 8, 15000),
])
def test_evenly_split_leaves_out_fewer_images_than_devices(n: int, batch: int, devices: int,
                                                            kept: int) -> None:
    assert backend.evenly_split(n, batch, devices) == kept
    assert n - kept < devices and (kept % batch) % devices == 0


DATA_PARALLEL_FIT = """
import json, sys
import numpy as np
from mnist_mlops.training import backend
from mnist_mlops.core.config import load_params
from mnist_mlops.training.fit import FitContext, FitJob, fit
params = load_params(sys.argv[1])
p, tp = params.models["cnn_28_dense128"], params.train
backend.configure(seed=tp.seed, deterministic=tp.deterministic, mixed_precision=False)
devices = backend.data_parallel(p.batch_size)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (121, 28, 28, 1)).astype("float32")   # 121 % 32 = 25: uneven
y = (np.arange(121) % 10).astype("uint8")
r = fit(FitContext(p, tp), FitJob("fold-0", 0, "fold"), (x, y), (x[:61], y[:61]))
print(json.dumps({"devices": devices, "replicas": backend.replicas(),
                  "epochs": len(r.history["loss"]),
                  "finite": bool(all(np.isfinite(w).all() for w in r.model.get_weights()))}))
"""


@pytest.mark.slow
def test_data_parallel_training_on_two_virtual_cpu_devices(tmp_path: Path) -> None:
    """JAX with 2 host devices (XLA_FLAGS): the train loop splits each batch of the recipe
    over both (Keras DataParallel), with uneven last batches trimmed to split evenly."""
    pytest.importorskip("jax")
    import json

    from .conftest import tool_env
    from .test_train import write_tiny_project

    write_tiny_project(tmp_path)
    env = tool_env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    for _attempt in range(3):
        proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL_FIT,
                               str(tmp_path / "params.yaml")], env=env, capture_output=True,
                              text=True, timeout=600)
        # XLA's CPU collectives between *virtual* devices abort when one device thread is
        # not scheduled within 40 s (seen on a loaded 2-core machine): try again then.
        if "Termination timeout for `all reduce" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"devices": 2, "replicas": 2, "epochs": 2, "finite": True}


ONLY_KERAS = """
import runpy, sys
class Absent:   # an accelerator host: Keras and a backend, none of the pipeline's tools
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"mlflow", "dvc", "tensorflow", "torch", "sklearn", "PIL"}:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Absent())
sys.argv = ["bench_speed.py", "--models", "mlp_512x2", "--images", "512", "--epochs", "2",
            "--versus-mixed-precision", "bfloat16"]
runpy.run_path(%r, run_name="__main__")
"""


@pytest.mark.slow
def test_speed_benchmark_runs_where_only_keras_and_jax_are_installed() -> None:
    """What a GPU host may have: the benchmark must not reach MLflow, DVC or TensorFlow."""
    pytest.importorskip("jax")
    from .conftest import ROOT, tool_env

    script = ONLY_KERAS % str(ROOT / "benchmarks" / "bench_speed.py")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=tool_env(KERAS_BACKEND="jax"), cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| mlp_512x2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "128" and float(cells[2]) == 4.0        # batch, MFLOP per image
    assert float(cells[3].replace(",", "")) > 0 and float(cells[4].replace(",", "")) > 0
    assert re.fullmatch(r"[\d,]+ \(\d+\.\d\dx\)", cells[5]), cells[5]   # vs bfloat16
    assert "on jax" in out.stdout and "with mixed_precision bfloat16: " in out.stdout


@pytest.mark.parametrize(("setting", "policy"), [
    (False, "float32"), ("float16", "mixed_float16"), ("bfloat16", "mixed_bfloat16")])
def test_mixed_precision_names_keras_policy(setting: object, policy: str) -> None:
    assert backend.precision_policy(setting) == policy


def test_true_is_bfloat16_on_a_cpu_and_a_slow_half_type_is_warned(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if backend._framework_gpus():
        pytest.skip("true is float16 where a GPU trains")
    assert backend.precision_policy(True) == "mixed_bfloat16"
    # a CPU without those instructions cannot be had here: its flags are
    monkeypatch.setattr(backend, "cpu_has", lambda kind: False)
    backend._warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert backend.precision_policy("bfloat16") == "mixed_bfloat16"
    assert "without bfloat16 instructions (avx512_bf16 or amx_bf16)" in caplog.text
    assert "slower than float32: set train.mixed_precision: false" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert backend.precision_policy("float16") == "mixed_float16"
    assert "set train.mixed_precision: bfloat16 or false" in caplog.text


@pytest.mark.parametrize(("keras_backend", "gpus", "has_bf16", "policy"), [
    ("tensorflow", [], True, "mixed_bfloat16"),       # AVX512-BF16 or AMX: measured faster
    ("tensorflow", [], False, "float32"),             # a CPU without them: float32
    ("tensorflow", [object()], True, "float32"),      # a GPU: float32, as before
    ("jax", [], True, "float32")])                    # XLA's CPU kernels: not measured faster
def test_auto_is_bfloat16_only_where_it_was_measured_faster(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, keras_backend: str,
        gpus: list, has_bf16: bool, policy: str) -> None:
    import keras

    # the device, its flags and the backend are stood in for: this machine has one of each
    monkeypatch.setattr(backend, "_framework_gpus", lambda: gpus)
    monkeypatch.setattr(backend, "cpu_has", lambda kind: has_bf16 and kind == "bfloat16")
    monkeypatch.setattr(keras.backend, "backend", lambda: keras_backend)
    backend._warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert backend.precision_policy("auto") == policy
    assert not caplog.text                           # auto never picks a slow type


@pytest.mark.parametrize(("devices", "policy"), [
    ([object()], "mixed_float16"),                                  # TensorFlow's GPU
    ([type("Device", (), {"platform": "tpu"})()], "mixed_bfloat16")])   # JAX's TPU
def test_true_is_the_accelerators_half_type_without_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        devices: list, policy: str) -> None:
    # no GPU or TPU here: the list the backend would give is stood in for
    monkeypatch.setattr(backend, "_framework_gpus", lambda: devices)
    monkeypatch.setattr(backend, "cpu_has", lambda kind: False)
    backend._warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert backend.precision_policy(True) == policy
    assert not caplog.text
