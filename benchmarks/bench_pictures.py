"""Preprocessing (`digits.to_mnist`) against a plain resize, on three kinds of picture.

- **scans** (data/realworld.py `scan`): MNIST test digits as a tight, thick-stroked,
  low-resolution scan, dark on white; the digit touches the edges, its strokes are wide.
- **inverted**: the same scans light on dark (chalk photographed edge to edge).
- **photos** (data/realworld.py `photograph`, the real-world set's renders): a digit with
  paper around it, uneven light, grain, grey or tinted paper, chalk on a board.

Both are answered by one small convnet (cnn_32_64_64, 2 epochs on 20,000 MNIST images,
seed 0) after today's `to_mnist`, after `to_mnist` as it was at a reference commit (git
show, default HEAD), and after the plain resize (realworld.py `plain_resize`: gray, ink
made bright, 20x20, padded to 28x28, told which way round the ink is); the accuracies and
`to_mnist`'s median time per picture are printed side by side.

    python benchmarks/bench_pictures.py [--n 1000] [--reference COMMIT]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import time
from collections.abc import Callable

import numpy as np
from common import ROOT, header, median, mnist
from PIL import Image, ImageOps


def model(data: dict[str, np.ndarray]):    # noqa: ANN201 (keras.Model)
    import keras

    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.models import build_model, compile_model

    keras.utils.set_random_seed(0)
    p = load_params(ROOT / "params.yaml").models["cnn_32_64_64"]
    net = compile_model(build_model(p), p)
    x = data["x_train"][:20000, ..., None].astype("float32")
    net.fit(x, keras.utils.to_categorical(data["y_train"][:20000], 10), batch_size=64,
            epochs=2, verbose=0)
    return net


def digits_at(commit: str) -> Callable[[Image.Image], np.ndarray | None]:
    """`to_mnist` as data/digits.py was at `commit` (git show), to run beside today's."""
    text = subprocess.run(["git", "show", f"{commit}:src/mnist_mlops/data/digits.py"],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_loader(f"digits_at_{commit}", loader=None))
    exec(compile(text, f"digits.py@{commit}", "exec"), module.__dict__)   # noqa: S102
    return module.to_mnist


def dark_ink(kind: str, img: Image.Image) -> bool:
    """The truth the plain resize is told: scans are dark on white, inverted scans light on
    dark, and a photo's border is its paper (the ink is the far side from it)."""
    if kind != "photos":
        return kind == "scans"
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    paper = np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
    return bool(paper - gray.min() >= gray.max() - paper)


def prepared(pictures: list[Image.Image], prepare: Callable) -> tuple[list[np.ndarray], float]:
    """Each picture prepared (a blank for "no digit") and the median ms per picture."""
    times, arrs = [], []
    for img in pictures:
        t0 = time.perf_counter()
        arr = prepare(img)
        times.append(time.perf_counter() - t0)
        arrs.append(np.zeros((28, 28), np.uint8) if arr is None else arr)
    return arrs, 1000 * median(times)


def main(n: int = 1000, reference: str = "HEAD") -> dict[str, float]:
    from mnist_mlops.data.digits import to_mnist
    from mnist_mlops.data.realworld import photograph, plain_resize, scan

    header(f"pictures: to_mnist here and at {reference} vs a plain resize, {n} of each kind")
    data = mnist()
    net = model(data)
    x, y = data["x_test"][:n], data["y_test"][:n]
    rng = np.random.default_rng(7)
    scans = [scan(d) for d in x]
    kinds = {"scans": scans, "inverted": [ImageOps.invert(s) for s in scans],
             "photos": [photograph(d, rng) for d in x]}
    before = digits_at(reference)
    out = {}
    print(f"{'kind':<8}{'to_mnist':>10}{'at ' + reference:>14}{'plain resize':>14}"
          f"{'ms/picture':>12}{'at ' + reference:>14}")
    for kind, pictures in kinds.items():
        ours, ms = prepared(pictures, to_mnist)
        theirs, ms_ref = prepared(pictures, before)
        plain = [plain_resize(img, dark_ink(kind, img)) for img in pictures]
        acc = {}
        for name, arrs in (("to_mnist", ours), ("reference", theirs), ("plain", plain)):
            batch = np.stack(arrs)[..., None].astype("float32")
            acc[name] = out[f"{kind}/{name}"] = float(
                (net.predict(batch, verbose=0).argmax(1) == y).mean())
        print(f"{kind:<8}{acc['to_mnist']:>10.3f}{acc['reference']:>14.3f}"
              f"{acc['plain']:>14.3f}{ms:>12.2f}{ms_ref:>14.2f}", flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reference", default="HEAD", help="the commit whose to_mnist runs beside")
    a = ap.parse_args()
    main(a.n, a.reference)
