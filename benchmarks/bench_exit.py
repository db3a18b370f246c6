"""How long a process takes to end once its work is done: Python's own exit (every module
and object freed) beside `runtime.exit_without_teardown` (Python's thread shutdown and
exit handlers, then `os._exit`), which every stage and `mnist-mlops` command now uses.

Each case is a child process that loads what a kind of process loads, does a little of its
work, prints a mark and exits one way or the other; the figure is the time from the mark to
the process's end, the median of --runs runs, both ways alternating.

    python benchmarks/bench_exit.py [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from common import header, machine, median

# What each kind of process holds when it ends (its imports and a little of its work)
CASES = {
    "train stage (Keras trained, MLflow, ONNX Runtime)": """
import numpy as np, keras, mlflow, onnxruntime
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
x = np.random.default_rng(0).random((256, 28, 28, 1), dtype=np.float32)
model.fit(x, np.arange(256) % 10, epochs=1, verbose=0)
model.predict(x, verbose=0)
""",
    "evaluate stage on ONNX Runtime (MLflow, scikit-learn, matplotlib)": """
import mlflow, onnxruntime, sklearn.metrics, matplotlib.pyplot
""",
    "mnist-mlops command (MLflow client on a SQLite store)": """
import tempfile
from mlflow.tracking import MlflowClient
MlflowClient(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db").search_experiments()
""",
}
EXITS = {
    "Python's exit": "import sys; sys.exit(0)",
    "exit_without_teardown": ("from mnist_mlops.core.runtime import exit_without_teardown; "
                              "exit_without_teardown(0)"),
}


def exit_seconds(setup: str, how: str) -> float:
    """Seconds from the child's mark (its work done) to its end."""
    code = f"{setup}\nprint('ready', flush=True)\n{how}\n"
    with tempfile.TemporaryFile() as err:   # TensorFlow's start-up lines, kept for a failure
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=err, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        t0 = time.perf_counter()
        proc.wait()
        seconds = time.perf_counter() - t0
        if line.strip() != "ready" or proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"the child failed (exit {proc.returncode}):\n"
                             f"{err.read().decode()[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    header(f"process exit after the work is done ({machine()}; median of {args.runs})")
    print(f"{'process':<66} {'Python':>8} {'ours':>8} {'saved':>8}")
    for name, setup in CASES.items():
        times: dict[str, list[float]] = {how: [] for how in EXITS}
        for _ in range(args.runs):
            for how, code in EXITS.items():
                times[how].append(exit_seconds(setup, code))
        python, ours = (median(times[how]) for how in EXITS)
        print(f"{name:<66} {python:7.2f}s {ours:7.2f}s {python - ours:7.2f}s", flush=True)


if __name__ == "__main__":
    main()
