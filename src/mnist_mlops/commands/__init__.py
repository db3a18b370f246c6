"""`mnist-mlops`: the commands people run by hand around the DVC pipeline.

    pipeline   params [--schema]                      check params.yaml / print its schema
               compare [--markdown FILE] [--all]      table of runs from MLflow
               retrain [--profile quick] [--push]     pull, reproduce, push, commit, report
    registry   champion                               show the registry's aliases
               promote --version N [--force]          make version N the champion
               rollback                               return to the previous champion
    serving    predict IMAGE... [--model M] [--json]  recognise digits in pictures
               serve [--port P] [--model M]           drawing page and API on 127.0.0.1
    sweep      sweep MODEL [--storage URL] [--apply]  Optuna study of a recipe; best as DVC exp
    monitor    monitor [--retrain]                    drift of served inputs vs training data
    store      relocate-store                         make a copied mlflow.db + mlruns/ open
               copy-store --to URI                    publish runs + registry to a server
    team       team user URL NAME ROLE                a user of the team server, with a role

Exit status, of every command and every pipeline stage: 0 ok, 1 failure (it ran and could
not do it; monitor: drift found), 2 bad input or usage (the message says what to change),
130 interrupted; 141 quietly when the reader of its output has gone (`... | head`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from mnist_mlops.commands import monitor, pipeline, registry, serving, store, sweep, team
from mnist_mlops.commands.base import Commands
from mnist_mlops.core.runtime import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    UserError,
    configure_logging,
    exit_without_teardown,
    missing_install,
)

log = logging.getLogger("mnist_mlops")
GROUPS = (pipeline, registry, serving, sweep, monitor, store, team)


def _version() -> str:
    try:
        return version("mnist-mlops")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mnist-mlops", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file (default: ./params.yaml)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="debug logging, library lines included")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = Commands(ap.add_subparsers(dest="command", required=True))
    for group in GROUPS:
        group.add(commands)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)     # usage errors: argparse exits 2
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING,
                      libraries=args.verbose)
    logging.getLogger("mnist_mlops").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        try:
            return args.run(args)
        except ModuleNotFoundError as exc:     # a serving install asked to train: say so
            raise missing_install(exc) or exc from None
    except UserError as exc:
        print(f"mnist-mlops {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:      # `mnist-mlops ... | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())     # so that the exit's flush writes nowhere
        return EXIT_BROKEN_PIPE
    except Exception as exc:   # the tracking server refused these credentials: one line
        from mnist_mlops.tracking.refusals import refusal, refusal_status

        if refusal_status(exc) is None:
            raise
        error = refusal(exc)
        print(f"mnist-mlops {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code


def console() -> NoReturn:
    """The `mnist-mlops` console script: main()'s exit status, without the interpreter's
    teardown (a second of freeing MLflow's modules after each command, see
    runtime.exit_without_teardown)."""
    exit_without_teardown(main())
