"""`mnist-mlops monitor`: is the served model still seeing digits like those it learnt?
(monitoring/monitor.py does the check; docs/monitoring.md explains it.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_mlops.commands.base import POSITIVE_INT, TRUST_HELP, Commands, params
from mnist_mlops.core.model_files import RUNTIMES
from mnist_mlops.core.runtime import EXIT_FAILURE

# Cold start: the model code, MLflow and Evidently (TensorFlow alone: 7 s) are imported
# inside the command, so that `--help` and a usage error answer in 0.35 s.


def cmd_monitor(args: argparse.Namespace) -> int:
    from mnist_mlops.monitoring.monitor import check, logged, start_retrain, verdict
    from mnist_mlops.monitoring.settings import monitor_params
    from mnist_mlops.serving.predict import load_predictor

    p = params(args)
    mp = monitor_params(p)
    records = logged(p, args.window)
    predictor = load_predictor(args.model, p, args.trust_model, args.runtime)
    summary = check(p, predictor, records, args.window, args.out, to_mlflow=not args.no_mlflow)
    print(verdict(summary))
    print(f"report: {summary['files'][0]}  summary: {summary['files'][1]}")
    if not summary["drift"]:
        return 0
    if args.retrain:
        print(f"retrain command exited with {start_retrain(mp.retrain)}")
    return EXIT_FAILURE


def add(commands: Commands) -> None:
    p = commands.add("monitor", "compare the served model's recent inputs and answers (the "
                     "prediction log) with its training data; exit 1 on drift", cmd_monitor,
                     status="exit status: 0 no drift, 1 drift (after starting monitor.retrain "
                     "with --retrain), 2 bad input or usage, 130 interrupted")
    p.add_argument("--model", help="the model whose answers to check (an ONNX or .h5 file, "
                   "or an MLflow model); default: the champion, as for serve")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    p.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="describe the "
                   "training images with ONNX Runtime (default) or Keras, as serve answers")
    p.add_argument("--window", type=POSITIVE_INT, help="latest answers compared (default: "
                   "monitor.window in params)")
    p.add_argument("--out", type=Path, help="folder for report.html and summary.json "
                   "(default: paths.monitor_reports)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the check to MLflow")
    p.add_argument("--retrain", action="store_true",
                   help="on drift, run the retrain command of params (monitor.retrain)")
