"""The server under load: ONNX Runtime (the default) beside the Keras path, and both beside
`mlflow models serve` on the same model.

Servers: ours (`--runtime onnx`, and `--runtime keras` as the reference) on /invocations
(one 28x28 uint8 image per request, MLflow's JSON) and /predict (280x280 PNG drawings);
`mlflow models serve --env-manager local` on /invocations, once on the .h5 logged as the
train stage logs it (python-function model, Keras) and once after register has added the
ONNX file (MLflow's onnx flavour), in a temporary SQLite store. For 1, 8, 64 and 256
concurrent clients (keep-alive connections) a fixed number of requests: p50 and p99
latency, the answers 200, the 503s and whether each carried Retry-After, requests/s, the
mean batch size (ours: from /metrics) and the server's peak resident memory. First,
`digits.to_mnist` on 280x280 drawings (the preprocessing /predict runs), and the model
call the server makes (Keras's compiled predict step, ONNX Runtime) beside an eager Keras
call, for 1 and 32 images.

    python benchmarks/bench_serve.py [--levels 1,8,64,256] [--requests 400] [--no-mlflow]
        [--runtimes onnx,keras] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT, header, machine, mnist

sys.path.insert(0, str(ROOT))
from tests.drawing import draw_digit  # noqa: E402

BIN = Path(sys.executable).parent
# mlflow models serve runs `uvicorn` by name: the virtualenv's bin on PATH
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{BIN}:{os.environ['PATH']}"}


def model_file(folder: Path) -> Path:
    """cnn_32_64_64, untrained: inference time does not depend on the weights."""
    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.models import build_model

    path = folder / "cnn_32_64_64.h5"
    build_model(load_params(ROOT / "params.yaml").models["cnn_32_64_64"]).save(path)
    return path


def onnx_file(h5: Path) -> Path:
    """The .h5 exported as evaluate exports it (inference/onnx_export.py)."""
    from mnist_mlops.inference.keras_model import load_keras_model
    from mnist_mlops.inference.onnx_export import export

    model = load_keras_model(h5)
    path = h5.with_suffix(".onnx")
    export(model, path, {"architecture": model.name})
    return path


def mlflow_model(folder: Path, h5: Path, x: np.ndarray) -> str:
    """The .h5 logged as this project's MLflow model in a SQLite store; its URI."""
    import mlflow

    from mnist_mlops.tracking.logged_model import log_keras_model

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    os.environ["MLFLOW_TRACKING_URI"] = ENV["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    np.save(folder / "example.npy", x[:1, ..., None])
    with mlflow.start_run() as run:
        pass
    return log_keras_model(run.info.run_id, h5, folder / "example.npy")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of `pid` and its children (mlflow serves from a child)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout.split()
    peak = 0.0
    for p in [pid, *map(int, out)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) / 1024
        except OSError:
            pass
    return peak


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` answers 200 twenty times in a row: with --workers N each worker loads
    its own model, and any one of them may take a new connection."""
    end, ok = time.monotonic() + timeout, 0
    while time.monotonic() < end and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            ok = ok + 1 if conn.getresponse().status == 200 else 0
            conn.close()
            if ok >= 20:
                return
        except OSError:
            ok = 0
        time.sleep(0.05 if ok else 0.5)
    raise SystemExit(f"server on port {port} never answered {path}")


def load(port: int, path: str, bodies: list[bytes], clients: int, n: int
         ) -> tuple[list[float], list[int], float]:
    """n requests from `clients` threads, each on its own keep-alive connection. A 503
    without Retry-After is counted as code 0 (it should not happen)."""
    per = [n // clients + (i < n % clients) for i in range(clients)]

    def client(i: int) -> list[tuple[int, float]]:
        conn, out = None, []
        for k in range(per[i]):
            t0 = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", path, bodies[(i + k) % len(bodies)],
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                code = resp.status
                if code == 503 and resp.getheader("retry-after") is None:
                    code = 0
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except OSError:
                code, conn = -1, None       # reset, refused, timed out
            out.append((code, time.perf_counter() - t0))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    return [t for _, t in results], [c for c, _ in results], wall


def batches(port: int) -> tuple[float, float]:
    """(sum, count) of our batch-size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    got = {s.name: s.value for f in text_string_to_metric_families(conn.getresponse().read(
        ).decode()) for s in f.samples if s.name.startswith("mnist_batch_size_")}
    return got.get("mnist_batch_size_sum", 0.0), got.get("mnist_batch_size_count", 0.0)


def time_to_mnist(drawings: list[bytes]) -> None:
    from PIL import Image

    from mnist_mlops.data.digits import to_mnist

    imgs = [Image.open(io.BytesIO(d)).convert("L") for d in drawings]
    for im in imgs[:5]:
        to_mnist(im)
    t0 = time.perf_counter()
    for im in imgs:
        to_mnist(im)
    print(f"digits.to_mnist on a 280x280 drawing: "
          f"{(time.perf_counter() - t0) / len(imgs) * 1000:.1f} ms (mean of {len(imgs)})")


def time_model_call(h5: Path, onnx: Path) -> None:
    """The server's model call (ONNX Runtime; Keras's compiled predict step) beside an eager
    call of the model, for 1 and 32 images: what batching and each runtime save."""
    from mnist_mlops.inference.keras_model import load_keras_model
    from mnist_mlops.inference.onnx_model import OnnxModel

    model = load_keras_model(h5)
    ort = OnnxModel(onnx, "")
    for n in (1, 32):
        x = np.zeros((n, 28, 28, 1), np.float32)
        for name, call in (("ONNX Runtime", lambda x=x: ort.run(x.astype(np.uint8))),
                           ("compiled predict step", lambda x=x: model.predict_on_batch(x)),
                           ("eager call", lambda x=x: np.asarray(model(x, training=False)))):
            for _ in range(5):
                call()
            t0 = time.perf_counter()
            for _ in range(50):
                call()
            print(f"model call on {n:2d} image(s), {name:<21}: "
                  f"{(time.perf_counter() - t0) / 50 * 1000:.2f} ms (mean of 50)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,8,64,256")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--workers", default="1", help="ours: uvicorn worker processes, each "
                    "count measured in turn")
    ap.add_argument("--runtimes", default="onnx,keras", help="ours: --runtime values, each "
                    "measured in turn (keras: the path before ONNX, for comparison)")
    args, _ = ap.parse_known_args()    # run_all.py calls main() with its own argv
    levels = [int(x) for x in args.levels.split(",")]
    header(f"serving under load ({machine()})")
    data = mnist()
    x = data["x_test"][:200]
    pngs = []
    for i in range(50):
        buf = io.BytesIO()
        draw_digit(i % 10, size=280).save(buf, "PNG")
        pngs.append(buf.getvalue())
    time_to_mnist(pngs)
    # (1, 28, 28, 1): the shape the MLflow model's signature enforces; ours takes both
    scoring = [json.dumps({"inputs": im[None, ..., None].tolist()}).encode() for im in x]
    drawings = [json.dumps({"image": "data:image/png;base64," + base64.b64encode(p).decode()}
                           ).encode() for p in pngs]
    with tempfile.TemporaryDirectory() as tmp:
        h5 = model_file(Path(tmp))
        onnx = onnx_file(h5)
        time_model_call(h5, onnx)
        servers = {f"ours {rt} x{w}": ([str(BIN / "mnist-mlops"), "serve", "--model",
                                        str(onnx if rt == "onnx" else h5), "--runtime", rt,
                                        "--port", "8765", "--workers", w], 8765, "/ready")
                   for rt in args.runtimes.split(",") for w in args.workers.split(",")}
        if not args.no_mlflow:
            from mnist_mlops.tracking.logged_model import add_onnx

            uri = mlflow_model(Path(tmp), h5, x)
            servers["mlflow pyfunc .h5"] = (
                [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                 "--port", "8766", "--host", "127.0.0.1"], 8766, "/ping")
            with_onnx = mlflow_model(Path(tmp), h5, x)
            add_onnx(with_onnx, onnx)
            servers["mlflow onnx flavour"] = (
                [str(BIN / "mlflow"), "models", "serve", "-m", with_onnx, "--env-manager",
                 "local", "--port", "8767", "--host", "127.0.0.1"], 8767, "/ping")
        rows = []
        for name, (cmd, port, ready) in servers.items():
            proc = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                wait_http(port, ready, proc)
                runs = [("/invocations", scoring)] + ([("/predict", drawings)]
                                                      if name.startswith("ours") else [])
                for path, bodies in runs:
                    for clients in levels:
                        before = batches(port) if name.startswith("ours") else (0, 0)
                        lat, codes, wall = load(port, path, bodies, clients,
                                                max(args.requests, clients))
                        after = batches(port) if name.startswith("ours") else (0, 0)
                        batch = ((after[0] - before[0]) / (after[1] - before[1])
                                 if after[1] > before[1] else 1.0)
                        rows.append(row(f"| {name} | {path} | {clients} |", lat, codes, wall,
                                        batch, peak_rss_mb(proc.pid)))
                        print(rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        header("table")
        print("| server | endpoint | clients | p50 ms | p99 ms | 200s | 503s (all with "
              "Retry-After) | req/s | mean batch | peak RSS MB |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(r)


def row(label: str, lat: list[float], codes: list[int], wall: float, batch: float,
        rss: float) -> str:
    ok, busy, bare = codes.count(200), codes.count(503), codes.count(0)
    lat_ms = np.asarray(lat) * 1000
    return (f"{label} {np.percentile(lat_ms, 50):.0f} | "
            f"{np.percentile(lat_ms, 99):.0f} | {ok}/{len(codes)} | "
            f"{busy}{f' ({bare} without!)' if bare else ''} | {len(codes) / wall:.0f} | "
            f"{batch:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
