"""Accuracy of a model on the drawn-digit set the tests use (10 digits x 6 drawing styles),
plus `predict` latency per image once the model is loaded.

    python benchmarks/drawn_digits.py [--model models:/mnist-digits@champion | path.h5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, header

sys.path.insert(0, str(ROOT))
from tests.drawing import drawn_set  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    from mnist_mlops.core.config import load_params
    from mnist_mlops.serving.predict import load_predictor, predict_files

    predictor = load_predictor(args.model, load_params())
    header(f"drawn digits with {predictor.source}")
    tmp = Path(tempfile.mkdtemp())
    files, truth = drawn_set(tmp)
    t0 = time.perf_counter()
    results = predict_files(predictor, files)
    per_image = (time.perf_counter() - t0) / len(files)
    t0 = time.perf_counter()
    for f in files[:20]:
        predict_files(predictor, [f])
    one = (time.perf_counter() - t0) / 20
    by_style: dict[str, list[bool]] = {}
    for r, t, f in zip(results, truth, files, strict=True):
        by_style.setdefault(f.stem.rsplit("_", 1)[0], []).append(r.digit == t)
    total = sum(sum(v) for v in by_style.values())
    print(f"accuracy: {total}/{len(files)} = {total / len(files):.3f}")
    for style, hits in by_style.items():
        print(f"  {style:<17} {sum(hits)}/10")
    print(f"predict, 60 files in one call: {1000 * per_image:.1f} ms per image "
          f"(decode + preprocess + model)")
    print(f"predict, one file per call   : {1000 * one:.1f} ms per image")


if __name__ == "__main__":
    main()
