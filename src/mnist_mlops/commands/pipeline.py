"""Commands around the pipeline: `params`, `compare`, `repro`, `exp-run`, `retrain`."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path
from typing import Any

from mnist_mlops.commands.base import POSITIVE_INT, Commands, params
from mnist_mlops.core.config import Params
from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.core.overrides import dvc_args
from mnist_mlops.core.runtime import sigterm_as_interrupt
from mnist_mlops.jobs.profiles import profile
from mnist_mlops.monitoring.settings import MonitorParams, monitor_params
from mnist_mlops.sweep.settings import Sweeps, sweep_params

# Cold start: MLflow (2.4 s) and what compare and retrain run are imported inside
# those commands, so that `params`, `--help` and a usage error answer in 0.35 s.

log = logging.getLogger(__name__)
SHARE_CORES_HELP = ("each stage's TensorFlow on its share of the cores (cores / jobs threads) "
                    "instead of every core: faster for small stages side by side (make "
                    "quick), slower for long trainings, since a stage keeps its share when "
                    "it is left to run alone")


def whole_file_schema() -> dict[str, Any]:
    """The JSON schema of params.yaml, every concern's sections included (the pipeline's
    own schema holds `monitor:` and `sweep:` as mappings that their commands check)."""
    schema = Params.model_json_schema()
    for section, model in (("monitor", MonitorParams), ("sweep", Sweeps)):
        own = model.model_json_schema()
        schema.setdefault("$defs", {}).update(own.pop("$defs", {}))
        schema["properties"][section] = (own["properties"]["sweep"] if model is Sweeps
                                         else own)
    return schema


def cmd_params(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(whole_file_schema(), indent=2))
        return 0
    if args.overrides:
        print(shlex.join(dvc_args(profile(args.overrides))))
        return 0
    p = params(args, store_moved_warning=False)     # checks the file; reads no store
    whole = json.loads(p.model_dump_json())
    whole["monitor"] = monitor_params(p).model_dump(mode="json")
    whole["sweep"] = {k: v.model_dump(mode="json") for k, v in sweep_params(p).items()}
    print(json.dumps(whole, indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from mnist_mlops.evaluation.compare import fetch_tables, render
    from mnist_mlops.tracking import mlflow_io

    p = params(args)
    mlflow_io.setup(p.mlflow)
    tables = fetch_tables(MlflowClient(), args.experiment or p.mlflow.experiment,
                          all_runs=args.all, model=args.model)
    print(render(tables), end="")
    if args.markdown:
        write_text_atomic(args.markdown, render(tables, markdown=True))
        log.info("wrote %s", args.markdown)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from mnist_mlops.jobs.retrain import Options, retrain

    sigterm_as_interrupt()      # CI's cancel stops every running stage first
    opts = Options(profile=args.profile, remote=args.remote, branch=args.branch,
                   base=args.base, push=args.push, report=args.report, jobs=args.jobs)
    retrain(params(args), opts, args.params)
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    from mnist_mlops.jobs.repro import dvc_root, reproduce

    sigterm_as_interrupt()      # a stop stops every running stage first
    reproduce(dvc_root(Path.cwd()), args.jobs, args.targets, share_cores=args.share_cores)
    return 0


def cmd_exp_run(args: argparse.Namespace) -> int:
    from mnist_mlops.jobs.experiment import run_experiment
    from mnist_mlops.jobs.repro import dvc_root

    sigterm_as_interrupt()      # a stop stops every running stage, then removes the copy
    run_experiment(dvc_root(Path.cwd()), args.set_param, args.jobs, args.name,
                   share_cores=args.share_cores)
    return 0


def add(commands: Commands) -> None:
    p = commands.add("params", "check params.yaml, every section, and print it with every "
                     "default filled in (JSON); --schema prints the JSON schema it is "
                     "checked against", cmd_params)
    p.add_argument("--schema", action="store_true",
                   help="print the JSON schema of params.yaml (needs no params file)")
    p.add_argument("--overrides", metavar="PROFILE", help="print a named profile's "
                   "overrides as `dvc exp run` arguments (quick: what `make quick` runs)")

    p = commands.add("compare", "table of the latest run of each model", cmd_compare)
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    p.add_argument("--all", action="store_true", help="every finished run, not one per model")
    p.add_argument("--model", help="only runs of this model (e.g. an ablation grid)")
    p.add_argument("--experiment", help="MLflow experiment (default: from params)")

    p = commands.add("repro", "`dvc repro`, with stages that do not depend on each other "
                     "running side by side (each its own `dvc repro --single-item`)",
                     cmd_repro)
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="stages (or dvc.yaml files) to reproduce with what they need, as "
                   "`dvc repro` takes them (default: the whole pipeline)")
    p.add_argument("-j", "--jobs", type=POSITIVE_INT, default=2,
                   help="stages at a time (default: 2)")
    p.add_argument("--share-cores", action="store_true", help=SHARE_CORES_HELP)

    p = commands.add("exp-run", "a DVC experiment as `dvc exp run --temp` runs one (in a "
                     "temporary copy: the workspace and params.yaml stay as they are), with "
                     "stages side by side; saved with `dvc exp save`", cmd_exp_run)
    p.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                   help="set a param for the experiment, as `dvc exp run -S` does")
    p.add_argument("-n", "--name", help="the experiment's name (default: one DVC makes up)")
    p.add_argument("-j", "--jobs", type=POSITIVE_INT, default=2,
                   help="stages at a time (default: 2)")
    p.add_argument("--share-cores", action="store_true", help=SHARE_CORES_HELP)

    p = commands.add("retrain", "the retrain loop: pull, reproduce, push, commit to a "
                     "branch, report (run in a clean clone)", cmd_retrain)
    p.add_argument("--profile", choices=["full", "quick"], default="full",
                   help="full recipes, or the quick profile to try the loop")
    p.add_argument("--remote", help="DVC remote URL to use (default: the configured one)")
    p.add_argument("--branch", help="branch to commit to (default: retrain/<profile>-<UTC>)")
    p.add_argument("--base", default="main", help="compare metrics against this branch")
    p.add_argument("--push", action="store_true", help="push the branch to origin")
    p.add_argument("--report", type=Path, default=Path("retrain-report.md"),
                   help="where to write the Markdown report")
    p.add_argument("-j", "--jobs", type=POSITIVE_INT, default=2,
                   help="stages at a time (default: 2)")
