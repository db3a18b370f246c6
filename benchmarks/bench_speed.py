"""Training speed per model against the hardware's limit, on whatever device Keras uses.

For each recipe (params.yaml `models:`): steady-epoch images/s of a plain `model.fit`
(one call per epoch, Keras's own shuffling and defaults) and of the pipeline's loop
(train.fit's epochs in their seeded orders, `train.steps_per_execution`; timed as one
`fit` call per epoch so that the contenders' epochs can alternate, where the stage makes
one call per fit: the loop's figure is the slower of the two), the
training FLOPs per image from the layer shapes (3x the forward pass), the fraction of the
device's measured peak, and the projected training time of a full `dvc repro` (K folds of
the recipe's epochs, with validation, plus the refit unless the recipe ships an ensemble).

Needs only Keras, NumPy, PyYAML and a backend (no MLflow, DVC or TensorFlow), so it runs
on an accelerator host as well:

    python benchmarks/bench_speed.py                          # TensorFlow (default backend)
    KERAS_BACKEND=jax python benchmarks/bench_speed.py        # JAX: CPU, or the GPU if any
    python benchmarks/bench_speed.py --models lenet_28_50 --images 6000 --epochs 3
    python benchmarks/bench_speed.py --steps-per-execution 16
    python benchmarks/bench_speed.py --versus-steps-per-execution 32   # paired comparison
    python benchmarks/bench_speed.py --mixed-precision false --versus-mixed-precision bfloat16

Random pixels stand in for MNIST (speed does not depend on the values). The loop computes
in the type its recipe's precision takes here (train.mixed_precision or the recipe's own;
auto: bfloat16 on a CPU made for it), and its share is of a matmul's peak in that type;
the plain fit keeps Keras's default, float32.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))           # the package, installed or not


PRECISIONS = {"auto": "auto", "false": False, "true": True, "float16": "float16",
              "bfloat16": "bfloat16"}


def layer_flops(model) -> float:  # noqa: ANN001 (a Keras model)
    """Forward-pass FLOPs per image: 2 x multiply-adds of every Conv2D and Dense layer."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):                 # an ensemble's members
            total += layer_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            total += 2.0 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def peak_flops(dtype: str = "float32", seconds: float = 4.0, window: float = 0.25
               ) -> tuple[float, str]:
    """The device's matrix-multiply rate (FLOP/s) in `dtype`, the type the loop computes in:
    the best of short windows, so a moment of other load on a shared machine does not lower
    the limit."""
    import keras
    from keras import ops

    n = 2048
    a = ops.cast(np.random.default_rng(0).random((n, n), dtype=np.float32), dtype)
    ops.convert_to_numpy(ops.cast(ops.matmul(a, a), "float32"))   # warm-up / compile
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < window:
            c = ops.matmul(a, a)
            reps += 1
            ops.convert_to_numpy(ops.cast(c[0, 0], "float32"))   # wait for it (async)
        best = max(best, 2.0 * n ** 3 * reps / (time.perf_counter() - t0))
    return best, f"{keras.backend.backend()} {dtype} matmul {n}x{n}, best 0.25 s"


def device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        d = jax.devices()[0]
        if d.platform != "cpu":
            return f"{d.platform}:{getattr(d, 'device_kind', d)} x{len(jax.devices())}"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return "gpu:" + tf.config.experimental.get_device_details(gpus[0]).get(
                "device_name", gpus[0].name)
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return f"gpu:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"


def steady(times: list[float]) -> float:
    """Median of the epochs after the first (which compiles)."""
    rest = sorted(times[1:]) or times
    return rest[len(rest) // 2]


def measure(p, tp, n: int, epochs: int, versus=None  # noqa: ANN001
            ) -> dict[str, float]:
    """Images/s of each contender, their epochs alternating so that a change in the
    machine's load hits all of them: the plain fit, the pipeline's loop, and with `versus`
    (other train params) the loop under those."""
    from mnist_mlops.training.backend import configure
    from mnist_mlops.training.models import (
        build_model,
        compile_model,
        epoch_order,
        new_model,
        targets,
    )

    def setup(train_params=None) -> None:  # noqa: ANN001
        """Keras's defaults for the plain fit (None); the stage's settings (deterministic
        ops under TensorFlow, precision) for a loop."""
        configure(seed=0, deterministic=bool(train_params and train_params.deterministic),
                  mixed_precision=train_params.mixed_precision if train_params else False)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 28, 28, 1)).astype("float32")
    y = targets(rng.integers(0, 10, n), p)

    setup()
    plain = compile_model(build_model(p), p, total_steps=math.ceil(n / p.batch_size) * epochs)

    def plain_epoch(e: int) -> None:
        setup()
        plain.fit(x, y, batch_size=p.batch_size, epochs=1, shuffle=True, verbose=0)

    def loop(train_params) -> Callable[[int], None]:  # noqa: ANN001
        setup(train_params)
        model = new_model(p, train_params, 0, n)

        def epoch(e: int) -> None:   # train.fit's call on NumPy arrays, without validation
            # (the stage feeds a tf.data pipeline, training/feed.py: TensorFlow's, which
            # this benchmark does without, so that it runs where only Keras and JAX are)
            setup(train_params)
            order = epoch_order(tp.seed, 0, e, n)
            model.fit(x[order], y[order], batch_size=p.batch_size, epochs=e + 1,
                      initial_epoch=e, shuffle=False, verbose=0)
        return epoch

    contenders = {"plain": plain_epoch, "loop": loop(tp)}
    if versus is not None:
        contenders["versus"] = loop(versus)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for e in range(epochs):
        for k, run_epoch in contenders.items():
            t0 = time.perf_counter()
            run_epoch(e)
            times[k].append(time.perf_counter() - t0)
    return {**{k: n / steady(t) for k, t in times.items()},
            "flops": 3.0 * layer_flops(plain)}


def projected_s(p, tp, folds: int, images_per_s: float, n_train: int = 60000) -> float:  # noqa: ANN001
    """Training time of `dvc repro train@<model>` at this speed (evaluation ~1/3 of a step)."""
    from mnist_mlops.training.recipe import effective_epochs, final_kind

    epochs = effective_epochs(p, tp)
    per_fold = n_train * (folds - 1) / folds + n_train / folds / 3
    refit = 0 if final_kind(p, tp) == "ensemble" else n_train
    return epochs * (folds * per_fold + refit) / images_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="default: every model in params.yaml")
    ap.add_argument("--images", type=int, default=12000, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per measurement")
    ap.add_argument("--steps-per-execution", type=int,
                    help="override train.steps_per_execution for the pipeline's loop")
    ap.add_argument("--versus-steps-per-execution", type=int, metavar="N",
                    help="also time the loop at N steps per execution, epochs interleaved")
    ap.add_argument("--xla", choices=["auto", "true", "false"],
                    help="override train.xla (compile the train step) for the pipeline's loop")
    ap.add_argument("--mixed-precision", choices=PRECISIONS,
                    help="override train.mixed_precision for the pipeline's loop")
    ap.add_argument("--versus-mixed-precision", choices=PRECISIONS, metavar="P",
                    help="also time the loop under mixed precision P, epochs interleaved")
    args = ap.parse_args()

    import keras

    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.backend import jit_compile, precision_policy
    from mnist_mlops.training.recipe import effective_train

    params = load_params(ROOT / "params.yaml")
    tp = params.train
    if args.steps_per_execution:
        tp = tp.model_copy(update={"steps_per_execution": args.steps_per_execution})
    if args.xla:
        tp = tp.model_copy(
            update={"xla": args.xla if args.xla == "auto" else args.xla == "true"})
    if args.mixed_precision:
        tp = tp.model_copy(update={"mixed_precision": PRECISIONS[args.mixed_precision]})
    versus, label = None, ""
    if args.versus_steps_per_execution:
        versus = tp.model_copy(update={"steps_per_execution": args.versus_steps_per_execution})
        label = f"{args.versus_steps_per_execution} steps/execution"
    if args.versus_mixed_precision:
        versus = (versus or tp).model_copy(
            update={"mixed_precision": PRECISIONS[args.versus_mixed_precision]})
        label = " ".join([label, f"mixed_precision {args.versus_mixed_precision}"]).strip()
    names = args.models or list(params.models)
    # each recipe's own precision, as the stage trains it, unless the command line set one
    own = {n: tp if args.mixed_precision else effective_train(params.models[n], tp)
           for n in names}
    dtypes = {n: keras.mixed_precision.Policy(precision_policy(t.mixed_precision)).compute_dtype
              for n, t in own.items()}
    peaks = {d: peak_flops(d) for d in ["float32", *sorted(set(dtypes.values()) - {"float32"})]}
    print(f"device {device_name()}, Keras {keras.__version__} on {keras.backend.backend()}, "
          f"steps_per_execution {tp.steps_per_execution}, "
          f"mixed_precision {tp.mixed_precision} (or a recipe's own), "
          f"xla {tp.xla} ({'on' if jit_compile(tp.xla, tp.deterministic) else 'off'}, "
          "except where a model has a layer Keras cannot compile); peak "
          + ", ".join(f"{v / 1e9:.0f} GFLOP/s ({what})" for v, what in peaks.values())
          + f"; {args.images} images x {args.epochs} epochs, median of the steady ones")
    extra = f" pipeline img/s at {label} |" if versus else ""
    print("| model | batch | train MFLOP/image | plain fit img/s | pipeline img/s |" + extra
          + " pipeline GFLOP/s | of peak | projected `dvc repro` training |")
    print("|---|---:|---:|---:|---:|" + ("---:|" if versus else "") + "---:|---:|---:|")
    total = total_versus = 0.0
    for name in names:
        p, mtp, dtype = params.models[name], own[name], dtypes[name]
        mversus = versus if versus is None or args.versus_mixed_precision \
            or args.mixed_precision else effective_train(p, versus)
        r = measure(p, mtp, args.images, args.epochs, mversus)
        rate = r["loop"] * r["flops"]
        proj = projected_s(p, mtp, params.preprocess.folds, r["loop"])
        total += proj
        if mversus is not None:
            total_versus += projected_s(p, mversus, params.preprocess.folds, r["versus"])
        cell = f" {r['versus']:,.0f} ({r['versus'] / r['loop']:.2f}x) |" if versus else ""
        share = f"{rate / peaks[dtype][0]:.0%}" + ("" if dtype == "float32" else f" ({dtype})")
        print(f"| {name} | {p.batch_size} | {r['flops'] / 1e6:.1f} | {r['plain']:,.0f} | "
              f"{r['loop']:,.0f} |{cell} {rate / 1e9:.1f} | {share} | "
              f"{proj / 60:.1f} min |", flush=True)
    print(f"\nprojected training time of the whole `dvc repro`: {total / 60:.0f} min")
    if versus is not None:
        print(f"with {label}: {total_versus / 60:.0f} min ({total_versus / total:.2f}x)")


if __name__ == "__main__":
    main()
