"""What every command shares: its parser's shape, the params it reads, its exit status.

Every `mnist-mlops` command is added with `command()`, so each `--help` has the same
parts: what it does, its arguments, and the exit status it may end with.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from mnist_mlops.core.config import Params, load_params
from mnist_mlops.core.fsio import sqlite_file

log = logging.getLogger(__name__)
# Cold start: tracking/store.py (it loads MLflow: 2.4 s) is imported where a SQLite store is
# checked, so that `--help` and a usage error answer in 0.35 s.

Handler = Callable[[argparse.Namespace], int]
EXIT_STATUS = ("exit status: 0 ok, 1 failure (it ran and could not do it), 2 bad input or "
               "usage (the message says what to change), 130 interrupted")
TRUST_HELP = ("also load an MLflow model that is neither one this pipeline logged (a "
              "python-function model carrying its .h5, loaded as Keras without running its "
              "code) nor a TensorFlow-flavour one: loading such a model runs its own Python "
              "code")


class Commands:
    """The subcommands of one parser: `add` gives each the same --help shape."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self._sub = sub

    def add(self, name: str, help: str, run: Handler,  # noqa: A002
            status: str = EXIT_STATUS) -> argparse.ArgumentParser:
        """A subcommand whose `--help` says `help`, its arguments and `status`."""
        p = self._sub.add_parser(name, help=help, description=help, epilog=status)
        p.set_defaults(run=run)
        return p


def number(kind: Callable[[str], float], low: float | None = None,
           high: float | None = None, *, low_open: bool = False, high_open: bool = False
           ) -> Callable[[str], float]:
    """An argparse type: `kind` (int or float) within [low, high] (an open end excluded), so
    that a value out of range is a usage error naming the option, exit 2, before any work."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be "
                                             f"{' and '.join(x for x in (lo, hi) if x)}")
        return value
    parse.__name__ = kind.__name__       # argparse names the type in its messages
    return parse


POSITIVE_INT = number(int, 1)
POSITIVE = number(float, 0, low_open=True)
NON_NEGATIVE = number(float, 0)
PORT = number(int, 0, 65535)
FRACTION = number(float, 0, 1, low_open=True, high_open=True)


def params(args: argparse.Namespace, store_moved_warning: bool = True) -> Params:
    """params.yaml (or --params), validated: what most commands read. A project folder
    copied with its SQLite store still points at the old folder's artifacts: warned."""
    p = load_params(args.params)
    uri = p.mlflow.resolved_tracking_uri()
    db = sqlite_file(uri)
    if store_moved_warning and db is not None:
        from mnist_mlops.tracking.store import foreign_roots

        if roots := foreign_roots(db):
            log.warning("the tracking store %s keeps its artifacts under %s, outside this "
                        "project (a copied folder?): run `mnist-mlops relocate-store`",
                        db, ", ".join(roots))
    return p


def params_unless_model_file(args: argparse.Namespace) -> Params | None:
    """`predict`/`serve --model` with a model file, folder or URI and no params file here:
    the model is all they need (a serving machine has no project; a URI's store is
    $MLFLOW_TRACKING_URI), and a missing file is named as such, not as a missing
    params.yaml."""
    model = args.model
    if model and (Path(model).suffix in (".onnx", ".h5", ".keras") or Path(model).exists()
                  or model.startswith(("models:/", "runs:/"))) and not args.params.is_file():
        return None
    return params(args)
