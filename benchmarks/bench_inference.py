"""Inference on CPU per architecture: batch images/s, one-image latency, and the time from
starting `mnist-mlops predict` to its first answer."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import header, mnist


def main() -> dict[str, dict[str, float]]:
    from PIL import Image

    from mnist_mlops.core.config import load_params
    from mnist_mlops.inference.predictor import Predictor
    from mnist_mlops.inference.timing import throughput
    from mnist_mlops.training.models import build_model

    header("inference on CPU (batch 256 over the 10,000 test images; one image)")
    x = mnist()["x_test"]
    params = load_params()
    tmp = Path(tempfile.mkdtemp())
    results = {}
    for name, p in params.models.items():
        model = build_model(p)  # speed does not depend on the weights' values
        _, r = throughput(Predictor.of_keras(model, name), x)
        results[name] = r
        print(f"{name:<17} {r['images_per_s']:9.0f} images/s   one image (compiled step): "
              f"p50 {r['step_latency_ms_p50']:6.2f} ms, p95 {r['step_latency_ms_p95']:6.2f} ms")
        if name == "cnn_32_64_64":
            model.save(tmp / "m.h5")
    Image.fromarray(255 - x[0]).resize((280, 280)).save(tmp / "digit.png")
    cli = Path(sys.executable).parent / "mnist-mlops"
    t0 = time.perf_counter()
    subprocess.run([str(cli), "predict", str(tmp / "digit.png"), "--model", str(tmp / "m.h5")],
                   check=True, capture_output=True)
    first = time.perf_counter() - t0
    print(f"`mnist-mlops predict` start to first answer (cnn_32_64_64 .h5, one PNG): "
          f"{first:.2f} s")
    results["predict_cli_first_answer_s"] = {"seconds": first}
    results["serve_predict_ms"] = {"p50": serve_latency(tmp / "m.h5", tmp / "digit.png")}
    return results


def serve_latency(model: Path, png: Path, n: int = 30) -> float:
    """Median round trip of the drawing page's POST /predict (PNG in, answer out)."""
    import base64
    import json
    import threading
    import urllib.request

    from mnist_mlops.inference.predictor import Predictor
    from mnist_mlops.serving.serve import make_server

    server = make_server(Predictor(str(model)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    body = json.dumps({"image": "data:image/png;base64,"
                       + base64.b64encode(png.read_bytes()).decode()}).encode()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
        times.append(time.perf_counter() - t0)
    server.shutdown()
    p50 = 1000 * sorted(times)[n // 2]
    print(f"`mnist-mlops serve` POST /predict (280x280 PNG): p50 {p50:.1f} ms over {n} requests")
    return p50


if __name__ == "__main__":
    main()
