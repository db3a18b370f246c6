"""Tracking overhead: the pipeline's training loop vs a plain `model.fit`, side by side.

Same model (mlp_512x2 recipe), same data, batch, epochs and validation set; runs are
interleaved (plain, tracked, plain, tracked, ...) and the median epoch time after the
first (tracing) epoch is compared. Target: ratio <= 1.05.
"""

from __future__ import annotations

import os
import tempfile
import time

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


def main(n_train: int = 12000, epochs: int = 4, rounds: int = 2) -> dict[str, float]:
    import keras
    import mlflow

    from mnist_mlops import tracking
    from mnist_mlops.config import MlflowParams, TrainParams, load_params
    from mnist_mlops.models import build_model, compile_model
    from mnist_mlops.train import fit, targets

    header("tracking overhead (pipeline fit vs plain model.fit)")
    data = mnist()
    x = data["x_train"][:n_train, ..., None].astype("float32")
    y = data["y_train"][:n_train]
    xv = data["x_train"][n_train:n_train + 3000, ..., None].astype("float32")
    yv = data["y_train"][n_train:n_train + 3000]
    p = load_params().models["mlp_512x2"]
    tp = TrainParams(max_epochs=epochs, verbose=0)
    store = tempfile.mkdtemp()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    tracking.setup(MlflowParams())
    plain, tracked = [], []
    for _ in range(rounds):
        keras.utils.set_random_seed(0)
        model = compile_model(build_model(p), p)
        t = EpochTimer()
        model.fit(x, targets(y, p), batch_size=p.batch_size, epochs=epochs, verbose=0,
                  validation_data=(xv, targets(yv, p)), callbacks=[t.callback])
        plain += t.times[1:]
        keras.utils.set_random_seed(0)
        with tracking.run_scope(run_name="bench") as run:
            fit(p, tp, x, y, run.info.run_id, val=(xv, yv))
            hist = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id,
                                                                     "epoch_time_s")
        tracked += [m.value for m in sorted(hist, key=lambda m: m.step)][1:]
    a, b = median(plain), median(tracked)
    print(f"mlp_512x2, {n_train} images, batch {p.batch_size}, {epochs} epochs x {rounds} rounds")
    print(f"plain model.fit : {a:.3f} s/epoch (median of {len(plain)})")
    print(f"pipeline fit    : {b:.3f} s/epoch (median of {len(tracked)}), MLflow on SQLite")
    print(f"ratio           : {b / a:.3f}  (target <= 1.05)")
    return {"plain_s_per_epoch": a, "tracked_s_per_epoch": b, "ratio": b / a}


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
