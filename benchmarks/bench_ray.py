"""One `train@<model>` stage, its 2 folds and refit on Ray against the local executor.

The real stage process (`python -m mnist_mlops.training.train`), on MNIST images, three
ways in alternating rounds: `train.executor: local` (the fits one after another, each on
both cores), `ray` on a cluster of two one-CPU nodes on this host (Ray's own helper for
several nodes, started before the stage; its start-up printed apart), and `ray` with no
RAY_ADDRESS (a Ray started by the stage itself). Printed side by side: each stage's wall
time, the fits' own seconds, and whether the final model's weights equal the local one's.

    python benchmarks/bench_ray.py [--model cnn_32_64_64] [--images 6000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from common import ROOT, header, machine, median, mnist

FIT_SECONDS = re.compile(r"CV val accuracy [\d.]+ ± [\d.]+, ([\d.]+) s")


def make_project(root: Path, model: str, images: int, epochs: int) -> None:
    """params.yaml with 2 folds and capped epochs, the dataset and its folds."""
    from mnist_mlops.core.config import load_params
    from mnist_mlops.core.fsio import write_text_atomic
    from mnist_mlops.data.dataset import folds_csv, save_dataset
    from mnist_mlops.data.preprocess import make_folds

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preprocess"].update({"folds": 2, "subset": images})
    raw["train"].update({"max_epochs": epochs, "verbose": 2})
    raw["models"] = {model: raw["models"][model]}
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = load_params(root / "params.yaml")
    data = mnist()
    save_dataset({k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")},
                 root / p.paths.dataset)
    idx, folds = make_folds(data["y_train"], p.preprocess)
    write_text_atomic(root / p.paths.folds, folds_csv(idx, data["y_train"][idx], folds))


def run_stage(root: Path, model: str, executor: str, address: str | None) -> tuple[float, float]:
    """The stage from scratch: its wall seconds and the fits' own seconds (its last line)."""
    for out in ("models", ".checkpoints", "reports", "mlflow.db", "mlruns"):
        path = root / out
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"]["executor"] = executor
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mnist_mlops.training.train", model],
                          cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{executor} stage failed:\n{proc.stderr[-3000:]}")
    fits = FIT_SECONDS.search(proc.stderr)
    return wall, float(fits.group(1)) if fits else float("nan")


def final_weights(root: Path, model: str) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(root / "models" / f"{model}.h5", compile=False).get_weights()


def main(model: str = "cnn_32_64_64", images: int = 6000, epochs: int = 3,
         rounds: int = 2) -> dict[str, float]:
    from ray.cluster_utils import Cluster

    header(f"train@{model} on Ray vs local: {images} images, 2 folds + refit, "
           f"{epochs} epochs; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        make_project(root, model, images, epochs)
        t0 = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cluster_start = time.perf_counter() - t0
        variants = {"local executor": ("local", None),
                    "ray, 2 one-CPU nodes": ("ray", cluster.address),
                    "ray started by the stage": ("ray", None)}
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        same: dict[str, bool] = {}
        reference: list[np.ndarray] | None = None
        try:
            for r in range(rounds):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    times[name].append(run_stage(root, model, *variants[name]))
                    print(f"round {r + 1} {name}: {times[name][-1][0]:.1f} s", flush=True)
                    weights = final_weights(root, model)
                    if name == "local executor":
                        reference = weights
                    same[name] = same.get(name, True) and (reference is None or all(
                        np.array_equal(a, b) for a, b in zip(weights, reference, strict=True)))
        finally:
            cluster.shutdown()
    print(f"\ntwo-node cluster start-up (before the stage, once): {cluster_start:.1f} s")
    print(f"{'variant':<28}{'stage wall s':>14}{'fits s':>10}{'vs local':>10}  same model")
    base = median([w for w, _ in times["local executor"]])
    out = {}
    for name, ts in times.items():
        wall, fits = median([w for w, _ in ts]), median([f for _, f in ts])
        out[name] = wall
        print(f"{name:<28}{wall:>14.1f}{fits:>10.1f}{wall / base:>9.2f}x  "
              f"{'yes' if same[name] else 'NO'}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn_32_64_64")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    main(a.model, a.images, a.epochs, a.rounds)
