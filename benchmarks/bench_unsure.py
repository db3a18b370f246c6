"""What the unsure line gives up and catches, for several `train.unsure_give_up` values:
calibrated on held-out training images as the train stage calibrates on out-of-fold
answers, then asked about the test digits and 30 pictures that hold no single digit
(tests/drawing.py `not_one_digit`: letters, scribbles, pairs).

    python benchmarks/bench_unsure.py MODEL.h5 [--held-out 50000:55000]

MODEL.h5 must not have trained on the held-out images (the default suits a model trained
on the first 50,000 or fewer, as tests/conftest.py's `model_file`; models/<name>.h5 of the
pipeline trained on all 60,000: pass its own out-of-fold figures instead, from
reports/train/<name>/calibration.json).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, header, mnist

sys.path.insert(0, str(ROOT))
from tests.drawing import not_one_digit  # noqa: E402

GIVE_UPS = (0.02, 0.05, 0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--held-out", default="50000:55000")
    args = ap.parse_args()
    from PIL import Image

    from mnist_mlops.core.calibration import Calibration, calibrate, effect
    from mnist_mlops.inference.predictor import Predictor
    from mnist_mlops.serving.predict import predict_files

    data = mnist()
    lo, hi = (int(v) for v in args.held_out.split(":"))
    predictor = Predictor(str(args.model))
    held = predictor.predict_proba(data["x_train"][lo:hi])
    test = predictor.predict_proba(data["x_test"])
    y_test = data["y_test"].astype(np.int64)
    files = not_one_digit(Path(tempfile.mkdtemp()),
                          [Image.fromarray(d) for d in data["x_test"][2000:2020]])
    header(f"unsure answers of {args.model}: calibrated on training images {lo}-{hi}")
    print("| give_up | T | line | test ECE before | after | test unsure | right given up "
          "| wrong caught | letters | scribbles | pairs |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for give_up in GIVE_UPS:
        cal, _ = calibrate(held, data["y_train"][lo:hi], give_up)
        found = effect(cal, test, y_test)
        predictor.calibration = Calibration(cal.temperature, cal.unsure_below)
        flagged: dict[str, int] = {}
        for r in predict_files(predictor, files):
            kind = Path(r.file).stem.split("-")[0]
            flagged[kind] = flagged.get(kind, 0) + (r.unsure is not False)  # or no digit
        print(f"| {give_up} | {cal.temperature:.2f} | {cal.unsure_below:.3f} | "
              f"{found['ece_before']:.4f} | {found['ece_after']:.4f} | "
              f"{found['unsure_rate']:.3f} | {found['unsure_right_given_up']:.3f} | "
              f"{found['unsure_wrong_caught']:.3f} | {flagged.get('letter', 0)}/10 | "
              f"{flagged.get('scribble', 0)}/10 | {flagged.get('pair', 0)}/10 |")


if __name__ == "__main__":
    main()
