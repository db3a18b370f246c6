"""Float32 against mixed precision: the same fits, their minutes and their test accuracy.

For each recipe: the pipeline's own fit (training/fit.py: its seeded epoch orders, its
steps per execution, deterministic ops) on the first N real training images for E epochs,
once in float32 and once under `train.mixed_precision` P, from the same initial weights;
then the model as it ships (float32, models.in_float32) answers the 10,000 test digits.
Prints both fits' seconds, the ratio, both accuracies and their difference in percentage
points. A fit's seconds include its first epoch's tracing, the same for both.

    MNIST_MIRROR=... python benchmarks/bench_precision.py --models cnn_deep_dropout \
        --images 60000 --epochs 3 [--precision bfloat16]

A difference of a few hundredths of a point is a handful of the 10,000 digits: compare it
with what another seed moves (--seed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import header, machine, mnist

PRECISIONS = {"auto": "auto", "true": True, "float16": "float16", "bfloat16": "bfloat16"}


def fit_and_score(p, tp, data: dict[str, np.ndarray], n: int  # noqa: ANN001
                  ) -> tuple[float, float]:
    """Seconds of one fit on the first `n` training images, and the shipped model's test
    accuracy."""
    from mnist_mlops.training.fit import FitContext, FitJob, configure, fit
    from mnist_mlops.training.models import in_float32

    configure(tp)
    x = data["x_train"][:n, ..., None].astype("float32")
    t0 = time.perf_counter()
    r = fit(FitContext(p, tp), FitJob("final", 0, "bench"), (x, data["y_train"][:n]))
    seconds = time.perf_counter() - t0
    shipped = in_float32(r.model)
    proba = shipped.predict(data["x_test"][..., None].astype("float32"), batch_size=1000,
                            verbose=0)
    return seconds, float((proba.argmax(axis=1) == data["y_test"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*",
                    default=["cnn_deep_dropout", "cnn_bn_aug", "lenet_28_50"])
    ap.add_argument("--images", type=int, default=60000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precision", choices=PRECISIONS, default="bfloat16",
                    help="train.mixed_precision of the contender")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rounds", type=int, default=1,
                    help="pairs per recipe, the order swapped every round (a row each)")
    args = ap.parse_args()

    import keras

    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.backend import precision_policy

    params = load_params()
    float32 = params.train.model_copy(update={
        "max_epochs": args.epochs, "verbose": 0, "seed": args.seed, "mixed_precision": False})
    mixed = float32.model_copy(update={"mixed_precision": PRECISIONS[args.precision]})
    data = mnist()
    header(f"float32 vs {precision_policy(mixed.mixed_precision)} ({machine()}, Keras "
           f"{keras.__version__} on {keras.backend.backend()}); {args.images} images x "
           f"{args.epochs} epochs, seed {args.seed}, test accuracy on 10,000 digits")
    print("| model | first | float32 s | mixed s | ratio | float32 accuracy | mixed accuracy "
          "| difference (pp) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        p = params.model(name)
        for r in range(args.rounds):
            order = (float32, mixed) if r % 2 == 0 else (mixed, float32)
            got = {tp.mixed_precision: fit_and_score(p, tp, data, args.images) for tp in order}
            keras.mixed_precision.set_global_policy("float32")
            (s32, a32), (smx, amx) = got[False], got[mixed.mixed_precision]
            print(f"| {name} | {'float32' if r % 2 == 0 else 'mixed'} | {s32:.1f} | {smx:.1f} "
                  f"| {smx / s32:.2f}x | {a32:.2%} | {amx:.2%} | {100 * (amx - a32):+.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
