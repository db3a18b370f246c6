"""The figures behind `monitor:`'s thresholds (docs/monitoring.md): what `mnist-mlops
monitor` measures for windows that should pass (MNIST test digits, unseen training digits)
and windows that should not (rotated, inverted, photographed digits).

    MNIST_MIRROR=... .venv/bin/python benchmarks/drift_thresholds.py [--model M.h5]

Without --model it trains cnn_32_64_64 briefly (20,000 images, 2 epochs, as the tests'
model). Each row: the window, its drifted-feature share, the embedding classifier's AUC,
the fall of mean confidence, the class-mix distance, and the verdict with params' defaults.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, header, machine, mnist


def small_model(data: dict[str, np.ndarray]) -> object:
    import keras

    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.models import build_model, compile_model

    keras.utils.set_random_seed(0)
    p = load_params(ROOT / "params.yaml").models["cnn_32_64_64"]
    model = compile_model(build_model(p), p)
    model.fit(data["x_train"][:20000, ..., None].astype("float32"),
              keras.utils.to_categorical(data["y_train"][:20000], 10),
              batch_size=64, epochs=2, verbose=0)
    return model


def photos(x: np.ndarray, seed: int) -> np.ndarray:
    """Test digits photographed as the real-world set makes them, then preprocessed as
    serve does (to_mnist); pictures where no digit is found are left out."""
    from mnist_mlops.data.digits import to_mnist
    from mnist_mlops.data.realworld import photograph

    rng = np.random.default_rng(seed)
    out = [to_mnist(photograph(d, rng)) for d in x]
    return np.stack([a for a in out if a is not None])


def windows(data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    from scipy.ndimage import rotate

    rng = np.random.default_rng(1)
    test = data["x_test"]
    pick = [rng.choice(len(test), n, replace=False) for _ in range(3)]
    unseen = rng.choice(np.arange(40000, 60000), n, replace=False)
    base = test[pick[0]]
    return {
        "MNIST test, sample 1": base,
        "MNIST test, sample 2": test[pick[1]],
        "MNIST test, sample 3": test[pick[2]],
        "MNIST training (unseen)": data["x_train"][unseen],
        "MNIST test, first 500": test[:n],
        "rotated 20 degrees": rotate(base, 20, axes=(1, 2), reshape=False, order=1),
        "rotated 90 degrees": np.rot90(base, 1, axes=(1, 2)).copy(),
        "inverted": 255 - base,
        "real-world photos": photos(test[pick[1]], 7),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="a .h5 model (default: train a small one)")
    ap.add_argument("--window", type=int, default=500)
    args = ap.parse_args()

    from mnist_mlops.inference.keras_model import call_two_outputs, load_keras_model, two_outputs
    from mnist_mlops.monitoring import drift
    from mnist_mlops.monitoring.features import describe
    from mnist_mlops.monitoring.predlog import as_logged
    from mnist_mlops.monitoring.settings import MonitorParams

    header(f"drift figures per window ({machine()})")
    data = mnist()
    model = load_keras_model(args.model) if args.model else small_model(data)
    both = two_outputs(model)
    mp = MonitorParams()

    def side(x: np.ndarray) -> drift.Described:
        proba, emb = call_two_outputs(both, x)         # as the log keeps it: float16
        return drift.from_predictions(describe(x), proba, as_logged(emb).astype(np.float32))

    pick = np.random.default_rng(mp.seed).choice(60000, mp.reference_size, replace=False)
    ref = side(data["x_train"][np.sort(pick)])
    print(f"reference: {len(ref)} training images; defaults: drift_share {mp.drift_share}, "
          f"{mp.stattest} at {mp.stattest_threshold}, embedding AUC {mp.embedding_auc}, "
          f"confidence drop {mp.confidence_drop}")
    print(f"{'window':<26} {'n':>4} {'features':>9} {'emb AUC':>8} {'conf drop':>10} "
          f"{'class mix':>10}  verdict  drifted features")
    tmp = Path(tempfile.mkdtemp())
    for name, x in windows(data, args.window).items():
        t0 = time.perf_counter()
        snapshot, s = drift.compare(ref, side(x), mp)
        snapshot.save_html(str(tmp / "report.html"))
        print(f"{name:<26} {s['window']:>4} {s['drift_share']:>9.2f} "
              f"{s['embedding']['auc']:>8.3f} {s['confidence']['drop']:>10.3f} "
              f"{s['class_mix']['score']:>10.3f}  {'DRIFT' if s['drift'] else 'ok':<7}  "
              f"{', '.join(s['drifted_features']) or '-'}  ({time.perf_counter() - t0:.1f} s)",
              flush=True)


if __name__ == "__main__":
    main()
