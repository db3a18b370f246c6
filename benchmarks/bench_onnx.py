"""ONNX beside Keras: what the ONNX file changes for the people who predict, and what it
costs the pipeline that makes it.

1. `mnist-mlops predict` on one PNG, whole process (start to exit), median of 5: on the
   ONNX file, on the MLflow model folder register leaves (ONNX flavour), and on the .h5
   with `--runtime keras` (the path before ONNX), cnn_32_64_64.
2. Per architecture of params.yaml (untrained: time does not depend on the weights): the
   Keras predictions on the 10,000 test digits that evaluate makes anyway, the ONNX export,
   the parity check (ONNX Runtime on the same digits, compared), and what register adds to
   the version (the ONNX flavour logged into the MLflow model) beside registering it.

    python benchmarks/bench_onnx.py [--runs 5] [--models cnn_32_64_64,...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, header, machine, mnist

BIN = Path(sys.executable).parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def whole_process(cmd: list[str], cwd: Path, runs: int) -> list[float]:
    """Seconds from start to exit of `cmd`, `runs` times (after one untimed run that warms
    the file cache, as a user's second call finds it)."""
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def predict_process(tmp: Path, x: np.ndarray, runs: int) -> None:
    import mlflow
    from PIL import Image

    from mnist_mlops.core.config import load_params
    from mnist_mlops.inference.onnx_export import export
    from mnist_mlops.tracking.logged_model import add_onnx, log_keras_model
    from mnist_mlops.training.models import build_model

    header(f"`mnist-mlops predict` on one PNG, whole process, median of {runs} ({machine()})")
    model = build_model(load_params(ROOT / "params.yaml").models["cnn_32_64_64"])
    model.save(tmp / "m.h5")
    export(model, tmp / "m.onnx", {"architecture": model.name})
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    np.save(tmp / "example.npy", x[:1, ..., None])
    with mlflow.start_run() as run:
        pass
    uri = log_keras_model(run.info.run_id, tmp / "m.h5", tmp / "example.npy")
    add_onnx(uri, tmp / "m.onnx")
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp / "exported")))
    Image.fromarray(255 - x[0]).resize((280, 280)).save(tmp / "digit.png")
    cli = [str(BIN / "mnist-mlops"), "predict", "digit.png", "--model"]
    rows = [("ONNX file (m.onnx)", [*cli, "m.onnx"]),
            ("MLflow model folder (ONNX flavour)", [*cli, str(folder)]),
            ("--runtime keras on the .h5 (before ONNX)", [*cli, "m.h5", "--runtime", "keras"])]
    medians = {}
    for label, cmd in rows:
        times = whole_process(cmd, tmp, runs)
        medians[label] = statistics.median(times)
        print(f"{label:<42} median {medians[label]:5.2f} s   "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    ref = medians[rows[-1][0]]
    for label, _ in rows[:-1]:
        print(f"{label:<42} {ref / medians[label]:4.1f}x faster than the Keras path")


def export_costs(tmp: Path, data: dict[str, np.ndarray], names: list[str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from mnist_mlops.core.config import load_params
    from mnist_mlops.inference.keras_model import compiled_call
    from mnist_mlops.inference.onnx_export import answers_of, export_checked
    from mnist_mlops.tracking.logged_model import add_onnx, log_keras_model
    from mnist_mlops.training.models import build_model, ensemble

    header("ONNX export and parity per model (10,000 test digits) and what register adds")
    print("| model | Keras on 10k (evaluate, already) s | export s | parity (ORT 10k + "
          "compare) s | max diff | register: add ONNX s | register: version s |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    params = load_params(ROOT / "params.yaml")
    x = data["x_test"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/reg.db")
    client = MlflowClient()
    for name in names:
        p = params.models[name]
        model = build_model(p)
        if p.final == "ensemble":
            model = ensemble([build_model(p) for _ in range(params.preprocess.folds)], name)
        t0 = time.perf_counter()
        proba = np.asarray(compiled_call(model, x.reshape(-1, 28, 28, 1).astype("float32")))
        keras_s = time.perf_counter() - t0
        model.save(tmp / f"{name}.h5")
        report = export_checked(model, tmp / "onnx" / name, answers_of(x), proba,
                                {"architecture": model.name, "model": name}, tmp / f"{name}.h5")
        np.save(tmp / "example.npy", x[:1, ..., None])
        with mlflow.start_run() as run:
            pass
        uri = log_keras_model(run.info.run_id, tmp / f"{name}.h5", tmp / "example.npy")
        t0 = time.perf_counter()
        add_onnx(uri, tmp / "onnx" / name / "model.onnx")
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mv = mlflow.register_model(uri, "bench")
        client.set_model_version_tag("bench", mv.version, "onnx", "true")
        version_s = time.perf_counter() - t0
        print(f"| {name} | {keras_s:.2f} | {report['export_s']:.2f} | {report['parity_s']:.2f} "
              f"| {report['max_diff']:.1e} | {add_s:.2f} | {version_s:.2f} |", flush=True)


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()
               ) / 2**20


def install_sizes(tmp: Path) -> None:
    header("the serving install beside the training install, on disk")
    pkg = tmp / "pkg"
    shutil.copytree(ROOT / "src", pkg / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(ROOT / name, pkg / name)
    venv = tmp / "serve-venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "-c", str(pkg / "requirements.lock"), f"{pkg}[serve]"], check=True)
    took = time.perf_counter() - t0
    here = Path(sys.prefix)
    serve, full = du_mb(venv), du_mb(here)
    print(f"pip install '.[serve]' (fresh venv)       {serve:7.0f} MB  (built in {took:.0f} s)")
    print(f"this environment ({here.name}: '.[dev]')  {full:7.0f} MB  "
          f"({full / serve:.1f}x the serving install)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", help="comma-separated (default: every model of params.yaml)")
    ap.add_argument("--install", action="store_true", help="also build the serving install "
                    "and compare its size (needs the package index or pip's cache)")
    args, _ = ap.parse_known_args()
    from mnist_mlops.core.config import load_params

    data = mnist()
    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        predict_process(tmp, data["x_test"], args.runs)
        names = (args.models.split(",") if args.models
                 else list(load_params(ROOT / "params.yaml").models))
        export_costs(tmp, data, names)
        if args.install:
            install_sizes(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
