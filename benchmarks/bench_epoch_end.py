"""Each epoch's seconds through the pipeline's feed, as shipped (tf.data autotuning off)
and with tf.data's autotuning on (its default, and the feed's before it turned it off),
side by side: how long the cores sit idle as Keras drops an epoch's iterator.

    python benchmarks/bench_epoch_end.py [--model cnn_32_64_64] [--images 60000]
                                         [--epochs 6] [--rounds 1]

Each side is its own process (alternating, `--rounds` times): the recipe's model, its
batch size and the loop's steps per execution, random pixels (the speed does not depend
on them), one `fit` call of `--epochs` epochs with each epoch's order set as it begins, as
training/fit.py trains. Printed per side: every epoch's seconds, their sum, and how busy
the cores it may run on were over the fit (the process's CPU seconds over wall seconds
times those cores): the autotuned side's slow epochs are idle time, not slower steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import ROOT, header, machine

ONE_SIDE = """
import json, resource, sys, time
import numpy as np
import keras
import tensorflow as tf
from mnist_mlops.core.config import load_params
from mnist_mlops.core.runtime import cores
from mnist_mlops.training.feed import Feed
from mnist_mlops.training.models import build_model, compile_model, targets
model, n, epochs, autotune = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if autotune == "on":              # tf.data's default, as the feed ran before it set it off
    shipped = tf.data.Dataset.with_options
    def with_options(self, options, name=None):
        options.autotune.enabled = True
        return shipped(self, options, name)
    tf.data.Dataset.with_options = with_options
params = load_params(PARAMS)
p = params.models[model]
keras.utils.set_random_seed(0)
m = compile_model(build_model(p), p, jit_compile=False, total_steps=10**6,
                  steps_per_execution=params.train.steps_per_execution)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (n, 28, 28, 1)).astype("float32")
feed = Feed(x, targets(rng.integers(0, 10, n), p), p.batch_size)
seconds, started = [], [0.0]
def begin(e, logs=None):
    feed.epoch(rng.permutation(n))
    started[0] = time.perf_counter()
def end(e, logs=None):
    seconds.append(time.perf_counter() - started[0])
cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
m.fit(feed.batches, epochs=epochs, shuffle=False, verbose=0,
      callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)])
wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
print(json.dumps({"epochs": seconds, "wall": wall, "busy": cpu / wall / cores()}))
"""


def one_side(model: str, images: int, epochs: int, autotune: str) -> dict:
    code = ONE_SIDE.replace("PARAMS", repr(str(ROOT / "params.yaml")))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code, model, str(images), str(epochs),
                           autotune], capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"the {autotune} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn_32_64_64")
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    header(f"epoch ends, {args.model}: {args.images} images x {args.epochs} epochs, "
           f"{machine()}")
    print("| round | tf.data autotuning | each epoch (s) | sum (s) | cores busy |")
    print("| ---: | --- | --- | ---: | ---: |")
    for r in range(1, args.rounds + 1):
        sides = ("off", "on") if r % 2 else ("on", "off")
        for side in sides:
            out = one_side(args.model, args.images, args.epochs, side)
            label = "off (as shipped)" if side == "off" else "on (tf.data's default)"
            epochs = " ".join(f"{s:.2f}" for s in out["epochs"])
            print(f"| {r} | {label} | {epochs} | {sum(out['epochs']):.1f} | "
                  f"{out['busy']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
