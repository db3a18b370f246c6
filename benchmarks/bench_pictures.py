"""Preprocessing (`digits.to_mnist`) against a plain resize, kind of picture by kind.

The same n held-out MNIST test digits rendered as each kind of the real-world set
(data/realworld.py `RENDERERS`, each kind's own seeded stream at seed 7, as the
`realworld` stage draws them):

- **photo**: a digit with paper around it, uneven light, grain, grey or tinted paper,
  chalk on a board;
- **scan**: a tight, thick-stroked, low-resolution scan, dark on white; the digit touches
  the edges, its strokes are wide; **inverted**: the same scans light on dark (chalk
  photographed edge to edge; not a kind of the set);
- **marker**: a thick felt pen, cropped to the digit; **thin**: a fine pen on a large
  picture; **slant**: rotated or slanted by up to 15 degrees; **drawn**: the drawing page's
  280x280 canvas, black strokes 18 pixels wide.

Each is answered by one small convnet (cnn_32_64_64, 2 epochs on 20,000 MNIST images,
seed 0) after today's `to_mnist`, after `to_mnist` as it was at a reference commit (git
show, default HEAD), and after the plain resize (realworld.py `plain_resize`: gray, ink
made bright, 20x20, padded to 28x28, told which way round the ink is); the accuracies,
how many pictures `to_mnist` found no digit in, and its median time per picture are
printed side by side.

    python benchmarks/bench_pictures.py [--n 1000] [--reference COMMIT] [--kinds photo,scan]
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

INVERTED = "inverted"       # the scans light on dark: not a kind of the set


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


def rendered(x: np.ndarray, kind: str) -> list:
    """The digits as `kind` (realworld.Picture: the image and which way round its ink is)."""
    from mnist_mlops.core.config import RealworldParams
    from mnist_mlops.data.realworld import RENDERERS, Picture, kind_rng

    if kind == INVERTED:
        return [Picture(ImageOps.invert(p.image), False) for p in rendered(x, "scan")]
    rng = kind_rng(RealworldParams(seed=7), kind)
    return [RENDERERS[kind](d, rng) for d in x]


def prepared(pictures: list[Image.Image], prepare: Callable
             ) -> tuple[list[np.ndarray], float, int]:
    """Each picture prepared (a blank for "no digit"), the median ms per picture, and how
    many had no digit."""
    times, arrs, blank = [], [], 0
    for img in pictures:
        t0 = time.perf_counter()
        arr = prepare(img)
        times.append(time.perf_counter() - t0)
        blank += arr is None
        arrs.append(np.zeros((28, 28), np.uint8) if arr is None else arr)
    return arrs, 1000 * median(times), blank


def main(n: int = 1000, reference: str = "HEAD", kinds: list[str] | None = None
         ) -> dict[str, float]:
    from mnist_mlops.data.digits import to_mnist
    from mnist_mlops.data.realworld import RENDERERS, plain_resize

    kinds = kinds or [*RENDERERS][:2] + [INVERTED] + [*RENDERERS][2:]   # inverted by scan
    header(f"pictures: to_mnist here and at {reference} vs a plain resize, {n} of each kind")
    data = mnist()
    net = model(data)
    x, y = data["x_test"][:n], data["y_test"][:n]
    before = digits_at(reference)
    out = {}
    print(f"{'kind':<10}{'to_mnist':>10}{'at ' + reference:>14}{'plain resize':>14}"
          f"{'no digit':>10}{'ms/picture':>12}{'at ' + reference:>14}")
    for kind in kinds:
        pictures = rendered(x, kind)
        ours, ms, blank = prepared([p.image for p in pictures], to_mnist)
        theirs, ms_ref, _ = prepared([p.image for p in pictures], before)
        plain = [plain_resize(p.image, p.dark_ink) for p in pictures]
        acc = {}
        for name, arrs in (("to_mnist", ours), ("reference", theirs), ("plain", plain)):
            batch = np.stack(arrs)[..., None].astype("float32")
            acc[name] = out[f"{kind}/{name}"] = float(
                (net.predict(batch, verbose=0).argmax(1) == y).mean())
        print(f"{kind:<10}{acc['to_mnist']:>10.3f}{acc['reference']:>14.3f}"
              f"{acc['plain']:>14.3f}{blank:>10}{ms:>12.2f}{ms_ref:>14.2f}", flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reference", default="HEAD", help="the commit whose to_mnist runs beside")
    ap.add_argument("--kinds", help="comma-separated kinds (default: all, and inverted scans)")
    a = ap.parse_args()
    main(a.n, a.reference, a.kinds.split(",") if a.kinds else None)
