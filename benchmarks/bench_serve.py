"""The drawing page under load: 1, 8 and 64 concurrent clients posting 280x280 drawings.

Starts `mnist-mlops serve` as its own process (a cnn_32_64_64 .h5: inference time does not
depend on the weights), sends a fixed number of requests per level, and prints latency
p50/p99, errors (anything but 200 or a 503 "busy" answer is an error; 503s are counted
apart) and the server's peak resident memory.

    python benchmarks/bench_serve.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT, header

sys.path.insert(0, str(ROOT))
from tests.drawing import draw_digit  # noqa: E402

LEVELS = (1, 8, 64)
REQUESTS = 200


def model_file(folder: Path) -> Path:
    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.models import build_model

    path = folder / "cnn_32_64_64.h5"
    build_model(load_params(ROOT / "params.yaml").models["cnn_32_64_64"]).save(path)
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            code = resp.status
    except urllib.error.HTTPError as err:
        code = err.code
    except OSError:
        code = -1            # reset, refused, timed out
    return code, time.perf_counter() - t0


def main() -> None:
    header("drawing page under load (POST /predict, 280x280 PNG)")
    buf = io.BytesIO()
    draw_digit(7, size=280).save(buf, "PNG")
    body = json.dumps({"image": "data:image/png;base64,"
                       + base64.b64encode(buf.getvalue()).decode()}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_file(Path(tmp))
        port = 8765
        cli = str(Path(sys.executable).parent / "mnist-mlops")
        server = subprocess.Popen([cli, "serve", "--model", str(model), "--port", str(port)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, text=True)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            assert server.stdout is not None
            server.stdout.readline()                 # "serving ... on http://..."
            post(url, body)                          # warm-up (tracing)
            print(f"{REQUESTS} requests per level; server peak RSS after warm-up "
                  f"{peak_rss_mb(server.pid):.0f} MB")
            print(f"{'clients':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'503':>5s} {'errors':>6s} "
                  f"{'req/s':>7s} {'peak RSS MB':>11s}")
            for n in LEVELS:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    res = list(pool.map(lambda _: post(url, body), range(REQUESTS)))
                wall = time.perf_counter() - t0
                ok = [s for c, s in res if c == 200]
                busy = sum(c == 503 for c, _ in res)
                errors = sum(c not in (200, 503) for c, _ in res)
                p50, p99 = (1000 * np.percentile(ok, q) for q in (50, 99))
                print(f"{n:7d} {p50:8.1f} {p99:8.1f} {busy:5d} {errors:6d} "
                      f"{REQUESTS / wall:7.1f} {peak_rss_mb(server.pid):11.0f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
