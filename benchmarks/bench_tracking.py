"""Tracking overhead: the pipeline's training loop vs a plain `model.fit`, side by side.

Same model (mlp_512x2 recipe, compiled as the train stage compiles it: its steps per
execution, its XLA setting), same data, batch, epochs and validation set; runs are
interleaved (plain, tracked, plain, tracked, ...) and the median epoch time after the
first (tracing) epoch is compared, overall and round by round (an epoch of about a second
varies by some 10% on a shared machine: the paired ratio of each round is the steadier
figure). The pipeline's loop is everything the train stage does
per epoch: its own shuffle (the fit's epochs in one `fit` call, each epoch's order set as it
begins), the epoch checkpoint (written behind the next epoch) and the MLflow journal
(delivered to SQLite in the background). Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import header, median, mnist


class EpochTimer:
    def __init__(self) -> None:
        import keras

        class _T(keras.callbacks.Callback):
            def on_epoch_begin(s, epoch, logs=None):  # noqa: N805
                s.t0 = time.perf_counter()

            def on_epoch_end(s, epoch, logs=None):  # noqa: N805
                self.times.append(time.perf_counter() - s.t0)

        self.times: list[float] = []
        self.callback = _T()


def main(n_train: int = 12000, epochs: int = 6, rounds: int = 3) -> dict[str, float]:
    from mnist_mlops.core.config import TrainParams, load_params
    from mnist_mlops.tracking.journal import Journal
    from mnist_mlops.training.checkpoint import Checkpoint
    from mnist_mlops.training.fit import FitContext, FitJob, configure, fit
    from mnist_mlops.training.models import new_model, targets
    from mnist_mlops.training.progress import Progress
    from mnist_mlops.training.train import TrackedHooks

    header("tracking overhead (pipeline fit vs plain model.fit)")
    data = mnist()
    x = data["x_train"][:n_train, ..., None].astype("float32")
    y = data["y_train"][:n_train]
    xv = data["x_train"][n_train:n_train + 3000, ..., None].astype("float32")
    yv = data["y_train"][n_train:n_train + 3000]
    p = load_params().models["mlp_512x2"]
    tp = TrainParams(max_epochs=epochs, verbose=0)
    store = Path(tempfile.mkdtemp())
    plain, tracked, paired = [], [], []
    configure(tp)
    for i in range(rounds):
        model = new_model(p, tp, 0, n_train)    # compiled as the pipeline compiles its own
        t = EpochTimer()
        model.fit(x, targets(y, p), batch_size=p.batch_size, epochs=epochs, verbose=0,
                  validation_data=(xv, targets(yv, p)), callbacks=[t.callback])
        plain += t.times[1:]
        round_plain = median(t.times[1:])
        with Checkpoint(store, "bench", str(i)) as ck:
            journal = Journal(ck.dir, f"sqlite:///{store}/mlflow.db", "bench", str(i))
            journal.start_run("parent", "bench", {})
            journal.start_delivery()
            hooks = TrackedHooks("bench", journal, Progress("bench", epochs, 0, 0), epochs)
            fit(FitContext(p, tp, ck, hooks), FitJob("fold-0", 0, "bench"), (x, y), (xv, yv))
            assert journal.flush(wait_s=60)
            # whole loop per epoch (fit, checkpoint, journal): time between epoch records
            ts = [op["ts"] for op in journal.ops if op["op"] == "metrics" and op["step"]]
            steps = [(b - a) / 1000 for a, b in zip(ts[1:], ts[2:], strict=False)]
            tracked += steps
            paired.append(median(steps) / round_plain)
    a, b = median(plain), median(tracked)
    print(f"mlp_512x2, {n_train} images, batch {p.batch_size}, {epochs} epochs x {rounds} rounds")
    print(f"plain model.fit : {a:.3f} s/epoch (median of {len(plain)})")
    print(f"pipeline fit    : {b:.3f} s/epoch (median of {len(tracked)}), checkpoint + "
          "MLflow journal on SQLite")
    print(f"ratio           : {b / a:.3f}  (target <= 1.05)")
    print(f"paired by round : {', '.join(f'{r:.3f}' for r in paired)}; median "
          f"{median(paired):.3f}")
    return {"plain_s_per_epoch": a, "tracked_s_per_epoch": b, "ratio": b / a,
            "paired_ratio": median(paired)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3,
                    help="plain/pipeline pairs (more: a steadier median; about 12 s each)")
    opts = ap.parse_args()
    if opts.rounds < 1:
        ap.error(f"--rounds must be 1 or more, not {opts.rounds}")
    np.set_printoptions(precision=3)
    main(rounds=opts.rounds)
