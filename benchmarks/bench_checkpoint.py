"""What resumable training costs and what a kill costs.

0. Durability: what fsync (file and folder) adds to one epoch checkpoint and to one journal
   append, against the same writes left in the page cache.
1. Overhead: the train stage's epoch loop with and without the per-epoch checkpoint
   (every model and optimizer variable, the best weights and the history, written
   atomically), interleaved epoch by epoch in the same run, on 12,000 real MNIST images.
2. Work lost to a kill: `python -m mnist_mlops.training.train` SIGKILLed at seeded random moments,
   then run again; counts the epochs the second process trains beyond what was left, and
   the seconds of training since the last checkpoint (all a kill can lose).

    python benchmarks/bench_checkpoint.py
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from common import ROOT, header, median, mnist


def overhead(model_name: str, n_train: int = 12000, epochs: int = 9) -> dict[str, float]:
    from mnist_mlops.core.config import TrainParams, load_params
    from mnist_mlops.training.checkpoint import Checkpoint, FitProgress
    from mnist_mlops.training.models import epoch_order, new_model, targets

    data = mnist()
    x = data["x_train"][:n_train, ..., None].astype("float32")
    y = data["y_train"][:n_train]
    p = load_params(ROOT / "params.yaml").models[model_name]
    model = new_model(p, TrainParams(), 0, n_train)
    yt = targets(y, p)
    plain, saved, saves, fits = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, Checkpoint(Path(tmp), model_name, "bench") as ck:
        prog = FitProgress()
        for e in range(epochs):
            order = epoch_order(0, 0, e, len(x))
            t0 = time.perf_counter()
            h = model.fit(x[order], yt[order], batch_size=p.batch_size, epochs=e + 1,
                          initial_epoch=e, shuffle=False, verbose=0)
            fit_s = time.perf_counter() - t0
            prog.history = {k: [float(v[-1])] for k, v in h.history.items()}
            prog.best_weights = model.get_weights()
            if e == 0:
                continue                      # tracing epoch
            fits.append(fit_s)
            if e % 2:
                t1 = time.perf_counter()
                ck.save_progress("bench", model, prog)
                saves.append(time.perf_counter() - t1)
                saved.append(time.perf_counter() - t0)
            else:
                plain.append(fit_s)
        size = (ck.dir / "fit-bench.npz").stat().st_size
    a, b = median(plain), median(saved)
    share = median(saves) / median(fits)
    print(f"{model_name:16s} {p.batch_size:5d} {a:9.3f} {b:9.3f} {b / a:6.3f} "
          f"{1000 * median(saves):8.1f} {100 * share:7.2f}% {size / 1e6:6.1f}")
    return {"plain_s": a, "checkpointed_s": b, "ratio": b / a, "save_ms": 1000 * median(saves),
            "save_share": share}


def _project(tmp: Path, model: str, epochs: int, n: int) -> Path:
    from mnist_mlops.core.config import load_params
    from mnist_mlops.core.fsio import write_text_atomic
    from mnist_mlops.data.dataset import folds_csv, save_dataset
    from mnist_mlops.data.preprocess import make_folds

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preprocess"].update(folds=2, subset=n)
    raw["train"].update(verbose=2)
    raw["models"][model]["epochs"] = epochs
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp / "params.yaml")
    data = mnist()
    save_dataset(data, tmp / params.paths.dataset)
    idx, folds = make_folds(data["y_train"], params.preprocess)
    write_text_atomic(tmp / params.paths.folds, folds_csv(idx, data["y_train"][idx], folds))
    return tmp


def lost_to_kill(model: str = "cnn_32_64_64", epochs: int = 4, n: int = 6000,
                 kills: int = 4, seed: int = 0) -> None:
    """Kill at random moments during training; resume; count what was redone."""
    rng = random.Random(seed)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    epoch_line = re.compile(r"(fold \d+/\d+|final refit) epoch (\d+)/")
    total_epochs = 3 * epochs                 # 2 folds + the refit
    print(f"{model}, {n} images, 2 folds + refit, {epochs} epochs each; SIGKILL, then rerun")
    print(f"{'kill at':>8s} {'epochs done':>11s} {'retrained':>9s} {'lost s':>7s}")
    for _ in range(kills):
        with tempfile.TemporaryDirectory() as tmp:
            root = _project(Path(tmp), model, epochs, n)
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
            cmd = [sys.executable, "-m", "mnist_mlops.training.train", model]
            first = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            stamps: list[float] = []

            def read(proc: subprocess.Popen[str] = first, stamps: list[float] = stamps) -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if epoch_line.search(line):
                        stamps.append(time.monotonic())

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            k = rng.randint(1, total_epochs - 1)      # after k epochs and a bit of the next
            while len(stamps) < max(k, 2) and first.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 1) * (stamps[-1] - stamps[-2]))
            if first.poll() is not None:
                print("  (finished before the kill; skipped)")
                continue
            first.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            first.wait()
            reader.join(timeout=10)
            second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            assert second.returncode == 0, second.stderr[-2000:]
            redone = len(epoch_line.findall(second.stdout + second.stderr))
            retrained = redone - (total_epochs - len(stamps))
            print(f"{killed_at - stamps[0]:7.1f}s {len(stamps):11d} {retrained:9d} "
                  f"{killed_at - stamps[-1]:7.1f}")


def durability(model_name: str, rounds: int = 7) -> dict[str, float]:
    """One epoch checkpoint (the same arrays `Checkpoint.save_progress` writes) and one
    journal append, each written with and without fsync, interleaved (medians)."""
    import json

    from mnist_mlops.core.config import TrainParams, load_params
    from mnist_mlops.core.fsio import atomic_path
    from mnist_mlops.training.models import new_model

    p = load_params(ROOT / "params.yaml").models[model_name]
    model = new_model(p, TrainParams(), 0, 1000)
    arrays = {f"v{i}": np.asarray(v) for i, v in
              enumerate([*model.variables, *model.optimizer.variables])}
    arrays.update({f"b{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
    line = json.dumps({"op": "metrics", "key": "fold-0", "step": 1,
                       "metrics": {"loss": 0.1, "accuracy": 0.9}}) + "\n"
    times: dict[str, list[float]] = {"ckpt": [], "ckpt+fsync": [], "line": [],
                                     "line+fsync": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:   # the disk the project lives on
        for _ in range(rounds):
            for durable in (False, True):
                t0 = time.perf_counter()
                with atomic_path(Path(tmp) / "fit.npz", suffix=".tmp.npz",
                                 durable=durable) as f:
                    np.savez(f, **arrays)
                times["ckpt+fsync" if durable else "ckpt"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with open(Path(tmp) / "journal.jsonl", "a", encoding="utf-8") as j:
                    j.write(line)
                    j.flush()
                    if durable:
                        os.fsync(j.fileno())
                times["line+fsync" if durable else "line"].append(time.perf_counter() - t0)
    ms = {k: 1000 * median(v) for k, v in times.items()}
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    print(f"{model_name:16s} {mb:6.1f} {ms['ckpt']:9.1f} {ms['ckpt+fsync']:9.1f} "
          f"{ms['line']:9.3f} {ms['line+fsync']:9.3f}")
    return ms


def main() -> None:
    header("durable writes: fsync's cost per epoch checkpoint and per journal append")
    print("medians of interleaved writes on the project's disk; an epoch writes one "
          "checkpoint and\na few journal lines (metrics of the fit, then of the epoch)")
    print(f"{'model':16s} {'MB':>6s} {'ckpt ms':>9s} {'+fsync ms':>9s} {'line ms':>9s} "
          f"{'+fsync ms':>9s}")
    for m in ("mlp_512x2", "lenet_28_50", "cnn_deep_dropout"):
        durability(m)
    header("checkpoint overhead (same run, epochs with and without a checkpoint)")
    print("epoch time without / with the checkpoint (medians of alternate epochs; epoch-to-"
          "epoch noise\nis larger than the save), and the save itself against the median "
          "epoch")
    print(f"{'model':16s} {'batch':>5s} {'plain s':>9s} {'+ckpt s':>9s} {'ratio':>6s} "
          f"{'save ms':>8s} {'share':>8s} {'MB':>6s}")
    for m in ("mlp_512x2", "lenet_28_50", "cnn_deep_dropout"):
        overhead(m)
    header("work lost to a kill")
    lost_to_kill()


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
