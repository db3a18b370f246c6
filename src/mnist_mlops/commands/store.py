"""Commands on the tracking store itself: `relocate-store`, `copy-store`."""

from __future__ import annotations

import argparse

from mnist_mlops.commands.base import Commands, params
from mnist_mlops.core.fsio import sqlite_file
from mnist_mlops.core.runtime import UserError

# Cold start: MLflow (2.4 s) is imported inside the commands, so that `--help` and a
# usage error answer in 0.35 s.


def cmd_relocate_store(args: argparse.Namespace) -> int:
    from mnist_mlops.tracking.store import relocate

    uri = params(args, store_moved_warning=False).mlflow.resolved_tracking_uri()
    db = sqlite_file(uri)
    if db is None:
        raise UserError(f"the tracking store is {uri}: only the embedded SQLite store records "
                        "local artifact paths")
    n = relocate(db)
    print(f"{n} artifact locations updated")
    return 0


def cmd_copy_store(args: argparse.Namespace) -> int:
    from mnist_mlops.tracking.store_copy import copy_store

    p = params(args)
    src = p.mlflow.resolved_tracking_uri()
    n = copy_store(src, args.to, p.mlflow.experiment, p.mlflow.registered_model)
    print(f"copied {n['runs']} runs and {n['versions']} registry versions to {args.to}")
    return 0


def add(commands: Commands) -> None:
    commands.add("relocate-store", "after copying a project folder: point its mlflow.db at "
                 "the mlruns/ beside it", cmd_relocate_store)
    p = commands.add("copy-store", "copy this project's runs, models and registry to another "
                     "tracking store (a team server)", cmd_copy_store)
    p.add_argument("--to", required=True, help="destination tracking URI, e.g. http://host:5000")
