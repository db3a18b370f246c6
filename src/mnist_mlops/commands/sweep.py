"""`mnist-mlops sweep <model>`: one worker of a model's study, then the best trial's recipe
as a DVC experiment of the whole pipeline (printed, or run with `--apply`).

A trial never ships: the winner is trained, evaluated, registered and judged by the
promotion gate like every other model, by `dvc exp run -S models.<model>.<key>=<value>`.
Start the same command on several machines against one `--storage` database and they share
the study (docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess

from mnist_mlops.commands.base import POSITIVE, POSITIVE_INT, Commands, number, params
from mnist_mlops.core.runtime import UserError

# Cold start: Optuna, MLflow and the training code (TensorFlow alone: 7 s) are imported
# inside the command, so that `--help` and a usage error answer in 0.35 s.

STORAGE_ENV = "MNIST_MLOPS_SWEEP_STORAGE"


def cmd_sweep(args: argparse.Namespace) -> int:
    from mnist_mlops.sweep.space import experiment_command
    from mnist_mlops.sweep.study import Sweep, run_worker

    if args.queue and not args.apply:
        raise UserError("--queue goes with --apply")
    sweep = Sweep(params(args), args.model, args.study or f"sweep-{args.model}",
                  args.storage, args.n_trials, args.timeout, args.heartbeat)
    study = run_worker(sweep)
    cmd = experiment_command(study, args.model, sweep.spec, args.queue)
    if cmd is None:
        raise UserError(f"study {sweep.study} has no completed trial yet: nothing to apply")
    best = study.best_trial
    print(f"study {sweep.study}: best trial {best.number}, val accuracy {best.value:.4f}, "
          f"params {best.params}")
    if not args.apply:
        print(f"train it through the pipeline: {shlex.join(cmd)}")
        return 0
    print(f"running: {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd, check=False).returncode


def add(commands: Commands) -> None:
    p = commands.add("sweep", "search a model's recipe as an Optuna study (params.yaml "
                     "sweep:), every trial in MLflow; the best trial through the pipeline "
                     "with --apply", cmd_sweep)
    p.add_argument("model", help="a model with a search under sweep: in params.yaml")
    p.add_argument("--study", help="study name (default: sweep-<model>); workers with the "
                   "same study and storage share its trials")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV, "sqlite:///optuna.db"),
                   help=f"Optuna storage: sqlite:///optuna.db in the project (default, one "
                   f"machine), or a database shared by workers on several machines, e.g. "
                   f"postgresql://user:pw@host/optuna (also ${STORAGE_ENV})")
    p.add_argument("--n-trials", type=number(int, 0), help="finished trials the study needs, all "
                   "workers together (default: sweep.<model>.n_trials, a grid's size); "
                   "0 runs none (with --apply: apply the best so far)")
    p.add_argument("--timeout", type=POSITIVE, help="seconds after which this worker starts "
                   "no new trial (default: sweep.<model>.timeout_s)")
    p.add_argument("--heartbeat", type=POSITIVE_INT, default=60, help="seconds between a running "
                   "trial's heartbeats; a trial silent for twice as long, at least 10 s (its "
                   "worker died), fails and is retried by another worker (default: 60)")
    p.add_argument("--apply", action="store_true", help="run the best trial's recipe as a "
                   "DVC experiment of the pipeline (dvc exp run -S ...)")
    p.add_argument("--queue", action="store_true", help="with --apply: queue the experiment "
                   "instead (`dvc queue start` runs it)")
