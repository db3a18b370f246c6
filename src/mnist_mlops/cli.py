"""`mnist-mlops`: the commands people run by hand around the DVC pipeline.

    mnist-mlops predict IMAGE... [--model M] [--json]   recognise digits in pictures
    mnist-mlops compare [--markdown FILE] [--all]       table of runs from MLflow
    mnist-mlops champion                                show the registry's aliases
    mnist-mlops promote --version N [--force]           make version N the champion
    mnist-mlops rollback                                return to the previous champion
    mnist-mlops serve [--port P] [--model M]            drawing page on 127.0.0.1
    mnist-mlops retrain [--profile quick] [--push]      pull, reproduce, push, commit, report
    mnist-mlops relocate-store                          make a copied mlflow.db + mlruns/ open
    mnist-mlops copy-store --to URI                     publish runs + registry to a server
    mnist-mlops params [--schema]                       check params.yaml / print its schema
    mnist-mlops sweep MODEL [--storage URL] [--apply]   Optuna study of a recipe; best as DVC exp
    mnist-mlops monitor [--retrain]                     drift of served inputs vs training data
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mnist_mlops.core.config import Params, load_params
from mnist_mlops.core.runtime import UserError, configure_logging
from mnist_mlops.monitoring.monitor import add_command as add_monitor_command
from mnist_mlops.sweep.cli import add_sweep_command

log = logging.getLogger("mnist_mlops")


def _client(params: Params):  # -> MlflowClient (import kept lazy for fast --help)
    from mlflow.tracking import MlflowClient

    from mnist_mlops.tracking import mlflow_io

    mlflow_io.setup(params.mlflow)
    return MlflowClient()


def cmd_predict(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.serving.predict import expand_inputs, load_predictor, predict_files

    files = expand_inputs(args.images)
    if not files:
        raise UserError("no image files found in the given folder(s)")
    from mnist_mlops.monitoring.predlog import logged_call

    predictor = load_predictor(args.model, params, args.trust_model)
    results = predict_files(predictor, files, args.threshold, logged_call(params, predictor))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(r.line())
    return 1 if any(r.error for r in results) else 0


def cmd_compare(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.evaluation.compare import fetch_table, render_markdown, render_text

    header, body = fetch_table(_client(params), args.experiment or params.mlflow.experiment,
                               all_runs=args.all, model=args.model)
    print(render_text(header, body), end="")
    if args.markdown:
        from mnist_mlops.core.fsio import write_text_atomic

        write_text_atomic(args.markdown, render_markdown(header, body))
        log.info("wrote %s", args.markdown)
    return 0


def cmd_champion(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.registry import aliases

    client, name = _client(params), params.mlflow.registered_model
    for alias in (aliases.CHAMPION, aliases.CHALLENGER):
        v = aliases.alias_version(client, name, alias)
        if v is None:
            print(f"{name}@{alias}: none")
        else:
            c = aliases.candidate(client, name, v)
            print(f"{name}@{alias}: v{v} ({c.model}, test accuracy {c.test_accuracy:.4f})")
    return 0


def cmd_promote(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.registry.register import promote

    rec = promote(params, str(args.version), force=args.force)
    print(f"{rec['registered_model']}@champion: v{rec['previous_champion'] or '-'} -> "
          f"v{rec['champion']}{' (forced)' if rec['forced'] else ''}: {rec['reason']}")
    return 0


def cmd_rollback(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.registry.register import rollback

    rec = rollback(params)
    print(f"{rec['registered_model']}@champion: v{rec['previous_champion']} -> "
          f"v{rec['champion']}")
    return 0


def cmd_serve(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.monitoring.predlog import options as log_options
    from mnist_mlops.serving.app import ServeOptions
    from mnist_mlops.serving.batcher import BatchOptions
    from mnist_mlops.serving.predict import load_predictor
    from mnist_mlops.serving.serve import Limits, Settings, run, run_workers

    opts = ServeOptions(BatchOptions(args.max_batch, args.max_wait_ms / 1000, args.max_queue,
                                     args.deadline_ms / 1000),
                        body_timeout_s=args.body_timeout, log=log_options(params))
    limits = Limits(args.header_timeout, args.limit_concurrency)
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C to stop; /ready once the "
          "model is loaded)", flush=True)
    if args.workers > 1:     # each worker loads the model the parent resolved
        predictor = load_predictor(args.model, params, args.trust_model)
        run_workers(Settings(predictor.source, args.trust_model, predictor.about["version"],
                             opts), args.host, args.port, args.workers, limits)
        return 0
    error = run(lambda: load_predictor(args.model, params, args.trust_model), args.host,
                args.port, opts, limits)
    if error:
        raise UserError(error)
    return 0


def cmd_retrain(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.jobs.retrain import Options, retrain

    opts = Options(profile=args.profile, remote=args.remote, branch=args.branch,
                   base=args.base, push=args.push, report=args.report)
    retrain(params, opts, args.params)
    return 0


def cmd_relocate_store(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.tracking.store import relocate

    uri = params.mlflow.resolved_tracking_uri()
    if not uri.startswith("sqlite:///"):
        raise UserError(f"the tracking store is {uri}: only the embedded SQLite store records "
                        "local artifact paths")
    n = relocate(Path(uri[len("sqlite:///"):]))
    print(f"{n} artifact locations updated")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnist-mlops")
    except PackageNotFoundError:
        return "unknown"


def cmd_copy_store(args: argparse.Namespace, params: Params) -> int:
    from mnist_mlops.tracking.store_copy import copy_store

    src = params.mlflow.resolved_tracking_uri()
    n = copy_store(src, args.to, params.mlflow.experiment, params.mlflow.registered_model)
    print(f"copied {n['runs']} runs and {n['versions']} registry versions to {args.to}")
    return 0


def cmd_params(args: argparse.Namespace, params: Params | None) -> int:
    from mnist_mlops.core.config import schema

    if args.schema:
        print(json.dumps(schema(), indent=2))
    else:
        assert params is not None
        print(params.model_dump_json(indent=2))
    return 0


TRUST_HELP = ("also load an MLflow model that is neither one this pipeline logged (a "
              "python-function model carrying its .h5, loaded as Keras without running its "
              "code) nor a TensorFlow-flavour one: loading such a model runs its own Python "
              "code")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mnist-mlops", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file (default: ./params.yaml)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="debug logging, library lines included")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002
        return sub.add_parser(name, help=help, description=help)  # `CMD --help` says it too

    p = command("predict", "recognise handwritten digits in image files")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", help="a .h5 file, or an MLflow model (URI or folder); "
                   "default: models:/<registered_model>@champion, or without a store that "
                   "serves it the champion recorded in reports/ (its models/*.h5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threshold", type=float, default=None,
                   help="binarise ink at this level (0-1); default keeps anti-aliasing")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_predict)

    p = command("compare", "table of the latest run of each model")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    p.add_argument("--all", action="store_true", help="every finished run, not one per model")
    p.add_argument("--model", help="only runs of this model (e.g. an ablation grid)")
    p.add_argument("--experiment", help="MLflow experiment (default: from params)")
    p.set_defaults(func=cmd_compare)

    p = command("champion", "show the champion and challenger versions")
    p.set_defaults(func=cmd_champion)

    p = command("promote", "make a registry version the champion, if the promotion gate "
                "agrees (floor, margin, McNemar test, real-world set)")
    p.add_argument("--version", required=True, type=int,
                   help="the registry version to promote (`mnist-mlops champion` and the "
                   "MLflow UI list them)")
    p.add_argument("--force", action="store_true",
                   help="promote even if the gate refuses (recorded on the version)")
    p.set_defaults(func=cmd_promote)

    p = command("rollback", "make the previous champion the champion again")
    p.set_defaults(func=cmd_rollback)

    p = command("serve", "drawing page with live predictions on 127.0.0.1")
    p.add_argument("--model", help="a .h5 file, or an MLflow model (URI or folder); "
                   "default: the champion, as for predict")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; the "
                   "page has no authentication)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port, each with its own model "
                   "(default: 1; about one per core)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="images per model call (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a request waits for others to batch with (default: 2)")
    p.add_argument("--max-queue", type=int, default=512,
                   help="images waiting for the model; more get 503 (default: 512)")
    p.add_argument("--deadline-ms", type=float, default=500.0,
                   help="a request not reaching the model by then gets 503 (default: 500)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds to receive a request body (default: 10)")
    p.add_argument("--header-timeout", type=float, default=5.0,
                   help="seconds to receive request headers; idle keep-alive (default: 5)")
    p.add_argument("--limit-concurrency", type=int, default=1024,
                   help="open connections at most; more get 503 (default: 1024)")
    p.set_defaults(func=cmd_serve)

    p = command("retrain", "the retrain loop: pull, reproduce, push, commit to a "
                       "branch, report (run in a clean clone)")
    p.add_argument("--profile", choices=["full", "quick"], default="full",
                   help="full recipes, or the quick profile to try the loop")
    p.add_argument("--remote", help="DVC remote URL to use (default: the configured one)")
    p.add_argument("--branch", help="branch to commit to (default: retrain/<profile>-<UTC>)")
    p.add_argument("--base", default="main", help="compare metrics against this branch")
    p.add_argument("--push", action="store_true", help="push the branch to origin")
    p.add_argument("--report", type=Path, default=Path("retrain-report.md"),
                   help="where to write the Markdown report")
    p.set_defaults(func=cmd_retrain)

    p = command("relocate-store", "after copying a project folder: point its "
                       "mlflow.db at the mlruns/ beside it")
    p.set_defaults(func=cmd_relocate_store)

    p = command("params", "check params.yaml and print it with every default filled in "
                "(JSON); --schema prints the JSON schema it is checked against")
    p.add_argument("--schema", action="store_true",
                   help="print the JSON schema of params.yaml (needs no params file)")
    p.set_defaults(func=cmd_params)

    p = command("copy-store", "copy this project's runs, models and registry to another "
                "tracking store (a team server)")
    p.add_argument("--to", required=True, help="destination tracking URI, e.g. http://host:5000")
    p.set_defaults(func=cmd_copy_store)
    add_sweep_command(command)
    add_monitor_command(command)
    return ap


def _model_file_only(args: argparse.Namespace) -> bool:
    """`predict`/`serve --model` with a model file or folder and no params.yaml here: the
    file is all they need (a missing one is named as such, not as a missing params.yaml)."""
    model = getattr(args, "model", None) if args.command in ("predict", "serve") else None
    return bool(model) and (Path(model).suffix in (".h5", ".keras") or Path(model).exists()
                            ) and not args.params.is_file()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING,
                      libraries=args.verbose)
    logging.getLogger("mnist_mlops").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        schema_only = args.command == "params" and args.schema
        return args.func(args, None if schema_only or _model_file_only(args)
                         else load_params(args.params))
    except UserError as exc:
        print(f"mnist-mlops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:   # the tracking server refused these credentials: one line
        from mnist_mlops.tracking.auth import refusal, refusal_status

        if refusal_status(exc) is None:
            raise
        print(f"mnist-mlops {args.command}: error: {refusal(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
