"""Commands that answer with a model: `predict` and `serve`."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

from mnist_mlops.commands.base import (
    FRACTION,
    NON_NEGATIVE,
    PORT,
    POSITIVE,
    POSITIVE_INT,
    TRUST_HELP,
    Commands,
    params_unless_model_file,
)
from mnist_mlops.core.model_files import RUNTIMES
from mnist_mlops.core.runtime import EXIT_FAILURE, UserError

# Cold start: the model code (ONNX Runtime, or Keras with TensorFlow; MLflow for a URI) is
# imported inside the commands, so that `--help` and a usage error answer in 0.35 s.

MODEL_HELP = ("an ONNX or .h5 file, or an MLflow model (URI or folder); default: "
              "models:/<registered_model>@champion, or without a store that serves it the "
              "champion recorded in reports/ (its models/onnx/*/model.onnx or models/*.h5)")
RUNTIME_HELP = ("onnx (default): ONNX Runtime on the model's ONNX file, without TensorFlow; "
                "keras: the model's .h5 on Keras (a model without an ONNX file uses Keras "
                "either way, and says so)")


def port_free(host: str, port: int) -> None:
    """Refuse, before anything loads, a port that another server holds (uvicorn would
    say so only after the model has loaded, in its own words)."""
    try:
        with socket.create_server((host, port)):       # SO_REUSEADDR, as uvicorn binds
            pass
    except OSError as exc:
        raise UserError(f"cannot listen on {host} port {port}: {exc.strerror or exc} "
                        "(another server on it?); stop it, or pass --port with a free "
                        "port") from None


def pictures(images: list[str]) -> list[Path]:
    """The picture files to read, checked before any model loads: none at all, or none
    that exists, is bad input (one file among others that fails gets its own error)."""
    from mnist_mlops.serving.predict import expand_inputs

    files = expand_inputs(images)
    if not files:
        raise UserError("no image files found in the given folder(s)")
    if not any(f.is_file() for f in files):
        raise UserError(f"no such picture: {', '.join(str(f) for f in files)}")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    from mnist_mlops.monitoring.predlog import logged_call
    from mnist_mlops.serving.predict import load_predictor, predict_files

    files = pictures(args.images)
    p = params_unless_model_file(args)
    predictor = load_predictor(args.model, p, args.trust_model, args.runtime)
    results = predict_files(predictor, files, args.threshold, logged_call(p, predictor))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(r.line())
    return EXIT_FAILURE if any(r.error for r in results) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    port_free(args.host, args.port)
    from mnist_mlops.monitoring.predlog import options as log_options
    from mnist_mlops.serving.app import ServeOptions
    from mnist_mlops.serving.batcher import BatchOptions
    from mnist_mlops.serving.predict import load_predictor, require_model_file
    from mnist_mlops.serving.serve import Limits, Settings, run, run_workers

    p = params_unless_model_file(args)
    require_model_file(args.model, p)         # said before "serving on", not after it
    opts = ServeOptions(BatchOptions(args.max_batch, args.max_wait_ms / 1000, args.max_queue,
                                     args.deadline_ms / 1000),
                        body_timeout_s=args.body_timeout, log=log_options(p))
    limits = Limits(args.header_timeout, args.limit_concurrency)
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C to stop; /ready once the "
          "model is loaded)", flush=True)
    if args.workers > 1:     # each worker loads the model the parent resolved
        predictor = load_predictor(args.model, p, args.trust_model, args.runtime)
        run_workers(Settings(predictor.source, args.trust_model, predictor.about["version"],
                             opts, predictor.runtime), args.host, args.port, args.workers,
                    limits)
        return 0
    error = run(lambda: load_predictor(args.model, p, args.trust_model, args.runtime), args.host,
                args.port, opts, limits)
    if error:
        raise UserError(error)
    return 0


def add(commands: Commands) -> None:
    p = commands.add("predict", "recognise handwritten digits in image files", cmd_predict,
                     status="exit status: 0 every file answered, 1 a file could not be read "
                     "(the others are still answered), 2 bad input or usage, 130 interrupted")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threshold", type=FRACTION, default=None,
                   help="binarise ink at this level (0-1); default keeps anti-aliasing")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    p.add_argument("--runtime", choices=RUNTIMES, default="onnx", help=RUNTIME_HELP)

    p = commands.add("serve", "drawing page with live predictions on 127.0.0.1", cmd_serve)
    p.add_argument("--model", help="an ONNX or .h5 file, or an MLflow model (URI or "
                   "folder); default: the champion, as for predict")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    p.add_argument("--runtime", choices=RUNTIMES, default="onnx", help=RUNTIME_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; the "
                   "page has no authentication)")
    p.add_argument("--port", type=PORT, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--workers", type=POSITIVE_INT, default=1,
                   help="server processes sharing the port, each with its own model "
                   "(default: 1; about one per core)")
    p.add_argument("--max-batch", type=POSITIVE_INT, default=32,
                   help="images per model call (default: 32)")
    p.add_argument("--max-wait-ms", type=NON_NEGATIVE, default=2.0,
                   help="how long a request waits for others to batch with (default: 2)")
    p.add_argument("--max-queue", type=POSITIVE_INT, default=512,
                   help="images waiting for the model; more get 503 (default: 512)")
    p.add_argument("--deadline-ms", type=POSITIVE, default=500.0,
                   help="a request not reaching the model by then gets 503 (default: 500)")
    p.add_argument("--body-timeout", type=POSITIVE, default=10.0,
                   help="seconds to receive a request body (default: 10)")
    p.add_argument("--header-timeout", type=POSITIVE, default=5.0,
                   help="seconds to receive request headers; idle keep-alive (default: 5)")
    p.add_argument("--limit-concurrency", type=POSITIVE_INT, default=1024,
                   help="open connections at most; more get 503 (default: 1024)")
