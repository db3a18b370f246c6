"""What a sweep costs beyond training, and how many trials an hour one and two workers run.

On the quick data (`make quick`'s profile: a 3,000-image stratified subset, 2 folds, 2
epochs), the cnn_28_dense128 recipe with a space that leaves the work per trial the same
(learning rate and dropout; no pruner), so that trials compare:

1. per trial, in one worker in this process: wall time, training (the fit loop: building
   the model and its epochs), the storage's calls on the worker's thread (Optuna: ask,
   report, should_prune, tell, the budget counts) and MLflow's (the trial's nested run,
   its params and per-epoch metrics) against the embedded SQLite files and, when
   PostgreSQL's binaries are here, a throwaway PostgreSQL study. Target: storage +
   tracking <= 5% of training.
2. trials per hour: `mnist-mlops sweep` as one worker, then two workers sharing one study
   (PostgreSQL when available, else the SQLite file), from process start to the last
   trial, and in steady state (first trial started to last finished).

    MNIST_MIRROR=... python benchmarks/bench_sweep.py [--trials 6]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import yaml
from common import ROOT, header, machine, mnist

sys.path.insert(0, str(ROOT))
MODEL = "cnn_28_dense128"
SPACE = {"sampler": "tpe", "pruner": "none", "n_trials": 6, "space": {
    "learning_rate": {"low": 0.0003, "high": 0.003, "log": True},
    "dropout": {"low": 0.1, "high": 0.4}}}
CLI = str(Path(sys.executable).parent / "mnist-mlops")


def quick_project(root: Path) -> Path:
    """The quick profile's parse and preprocess outputs, and params, in `root`."""
    from mnist_mlops.core.config import PreprocessParams
    from mnist_mlops.data.dataset import folds_csv, save_dataset
    from mnist_mlops.data.preprocess import make_folds

    data = mnist()
    save_dataset(data, root / "data" / "interim" / "mnist.npz")
    pp = PreprocessParams(folds=2, subset=3000)
    idx, folds = make_folds(data["y_train"], pp)
    (root / "data" / "processed").mkdir(parents=True)
    (root / "data" / "processed" / "folds.csv").write_text(
        folds_csv(idx, data["y_train"][idx], folds))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preprocess"].update(subset=3000, folds=2)
    raw["train"].update(max_epochs=2, verbose=0)
    raw["sweep"] = {MODEL: SPACE}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


class Timers:
    """Seconds spent in wrapped calls on the worker's own thread (not the heartbeats')."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.thread = threading.get_ident()

    def wrap(self, owner: object, name: str, kind: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: object, **kwargs: object) -> object:
            if threading.get_ident() != self.thread:
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[kind] += time.perf_counter() - t0
        setattr(owner, name, timed)


@contextlib.contextmanager
def timed_worker(timers: Timers) -> Iterator[None]:
    """Count storage, tracking and training time inside one in-process worker."""
    import optuna

    from mnist_mlops.sweep import study as study_mod
    from mnist_mlops.sweep import tracking

    saved = {(o, n): getattr(o, n) for o, n in [
        (optuna.storages.RDBStorage, m) for m in dir(optuna.storages.RDBStorage)
        if not m.startswith("_") and callable(getattr(optuna.storages.RDBStorage, m))]
        + [(tracking.Tracker, m) for m in ("start_trial", "epoch", "end_trial")]
        + [(study_mod, "fit")]}
    for (owner, name) in saved:
        kind = ("storage" if owner is optuna.storages.RDBStorage else
                "tracking" if owner is tracking.Tracker else "training")
        timers.wrap(owner, name, kind)
    try:
        yield
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


def overhead(root: Path, storage: str, label: str, n: int) -> None:
    from mnist_mlops.core.config import load_params
    from mnist_mlops.sweep.study import Sweep, run_worker

    params = load_params(root / "params.yaml")
    timers = Timers()
    cwd = Path.cwd()
    os.chdir(root)
    try:
        run_worker(Sweep(params, MODEL, f"overhead-{label}", storage, n_trials=1))  # warm-up
        timers.seconds.clear()
        with timed_worker(timers):
            t0 = time.perf_counter()
            run_worker(Sweep(params, MODEL, f"overhead-{label}", storage, n_trials=n + 1))
            wall = (time.perf_counter() - t0) / n
    finally:
        os.chdir(cwd)
    per = {k: v / n for k, v in timers.seconds.items()}
    share = (per["storage"] + per["tracking"]) / per["training"]
    other = wall - sum(per.values())   # the last graph cleared, gc, seeding, sampling
    print(f"{label:>10}: per trial {wall:6.2f} s wall, training {per['training']:6.2f} s, "
          f"storage {per['storage'] * 1000:6.0f} ms, tracking {per['tracking'] * 1000:6.0f} "
          f"ms: {share:.1%} of training (target <= 5%); the rest {other:5.2f} s", flush=True)


def throughput(root: Path, storage: str, workers: int, n: int, label: str) -> None:
    import optuna

    from mnist_mlops.sweep.study import storage_url

    study = f"throughput-{workers}-{label}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.time()
    procs = [subprocess.Popen([CLI, "sweep", MODEL, "--study", study, "--storage", storage,
                               "--n-trials", str(n)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    codes = [p.wait() for p in procs]
    total = time.time() - t0
    trials = optuna.load_study(study_name=study, storage=storage_url(storage)).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    start = min(t.datetime_start for t in trials).timestamp()
    end = max(t.datetime_complete for t in trials).timestamp()
    print(f"{workers} worker(s), {label:>10}: {len(trials)} trials in {total:5.0f} s from "
          f"start = {3600 * len(trials) / total:5.0f} trials/h; steady state "
          f"{3600 * len(trials) / (end - start):5.0f} trials/h (exit codes {codes})", flush=True)


def main(n: int = 6) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    header(f"sweep overhead and throughput ({MODEL}, quick data: 3,000 images, 2 folds "
           f"-> 1,500 train / 1,500 validate, 2 epochs; {machine()}; load "
           f"{os.getloadavg()[0]:.1f})")
    with contextlib.ExitStack() as stack:
        root = quick_project(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        stores = {"sqlite": f"sqlite:///{root}/optuna.db"}
        try:
            from tests.postgres import cluster, requires_postgres

            if not requires_postgres.args[0]:
                stores["postgresql"] = stack.enter_context(cluster(db="optuna"))
        except ImportError:   # tests/ needs pytest (the dev extra)
            pass
        for label, storage in stores.items():
            overhead(root, storage, label, n)
        shared = stores.get("postgresql", stores["sqlite"])
        label = "postgresql" if "postgresql" in stores else "sqlite"
        throughput(root, shared, 1, n, label)
        throughput(root, shared, 2, n, label)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    main(ap.parse_args().trials)
