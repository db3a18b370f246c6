"""`mnist-mlops serve` as a production service, one real uvicorn process for the module:
readiness, MLflow's scoring protocol, batching, metrics, and slow clients cut off."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .conftest import wait_for
from .drawing import draw_digit
from .served import Served, fetch
from .test_serve import data_url

pytestmark = pytest.mark.slow   # a real server process
TIMEOUT_S = 2                   # the server's header and body deadlines here


@pytest.fixture(scope="module")
def served(model_file: Path) -> Iterator[tuple[Served, int]]:
    """The server, and what /ready answered as soon as the server listened."""
    server = Served(model_file, "--body-timeout", str(TIMEOUT_S), "--header-timeout",
                    str(TIMEOUT_S), "--max-wait-ms", "20")
    try:
        wait_for(lambda: server.status("health") == 200 or server.proc.poll() is not None,
                 120, "/health")
        first_ready = server.status("ready")
        server.wait_ready()
        yield server, first_ready
    finally:
        server.kill()


def invoke(server: Served, images: np.ndarray, key: str = "inputs") -> np.ndarray:
    code, out = server.json("invocations", json.dumps({key: images.tolist()}).encode())
    assert code == 200, out
    return np.asarray(out["predictions"])


def test_ready_only_once_the_model_answers(served: tuple[Served, int]) -> None:
    server, first_ready = served
    assert first_ready == 503                      # listening, model not loaded yet
    assert server.json("ready") == (200, {"ready": True})
    code, info = server.json("info")
    assert code == 200 and info["architecture"] == "cnn_32_64_64"


def test_invocations_speaks_mlflow_json(served: tuple[Served, int],
                                        mnist: dict[str, np.ndarray]) -> None:
    from mlflow.deployments import PredictionsResponse
    from mlflow.models import convert_input_example_to_serving_input

    server, _ = served
    images = mnist["x_test"][:5]
    body = convert_input_example_to_serving_input(images).encode()   # MLflow's client JSON
    code, _, raw = fetch(server.url + "invocations", body)
    assert code == 200, raw
    proba = PredictionsResponse.from_json(raw.decode()).get_predictions(
        predictions_format="ndarray")
    assert proba.shape == (5, 10) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert (proba.argmax(axis=1) == mnist["y_test"][:5]).mean() >= 0.8
    as_instances = invoke(server, images[..., None], key="instances")     # (n, 28, 28, 1)
    assert np.allclose(as_instances, proba, atol=1e-6)
    code, out = server.json("invocations", b'{"inputs": [[1, 2, 3]]}')
    assert code == 400 and "shape" in out["message"], out


def test_batched_answers_equal_single_answers(served: tuple[Served, int],
                                              mnist: dict[str, np.ndarray]) -> None:
    server, _ = served
    images = mnist["x_test"][:48]
    single = np.concatenate([invoke(server, images[i:i + 1]) for i in range(len(images))])
    with ThreadPoolExecutor(48) as pool:
        together = np.concatenate(list(pool.map(lambda i: invoke(server, images[i:i + 1]),
                                                range(len(images)))))
    assert np.abs(together - single).max() <= 1e-6
    batches = metric(server, "mnist_batch_size")
    assert batches["sum"] / batches["count"] > 1.2, batches    # requests did coalesce


def metric(server: Served, name: str, **labels: str) -> dict[str, float]:
    """Samples of one metric family (by suffix: total, count, sum) matching `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    code, _, raw = fetch(server.url + "metrics")
    assert code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            if s.name.startswith(name) and labels.items() <= s.labels.items():
                suffix = s.name[len(name):].lstrip("_") or "value"
                if suffix != "bucket":
                    out[suffix] = out.get(suffix, 0) + s.value
    return out


def test_metrics_count_what_was_sent(served: tuple[Served, int],
                                     mnist: dict[str, np.ndarray]) -> None:
    server, _ = served
    sent = (("/invocations", "200"), ("/predict", "200"), ("/predict", "400"))
    before = [metric(server, "mnist_http_requests", endpoint=k, status=s).get("total", 0)
              for k, s in sent]
    answers = metric(server, "mnist_predictions").get("total", 0)
    for _ in range(3):
        invoke(server, mnist["x_test"][:4])
    assert server.json("predict", data_url(draw_digit(7, size=280)))[0] == 200
    assert server.json("predict", b"not json")[0] == 400
    after = [metric(server, "mnist_http_requests", endpoint=k, status=s).get("total", 0)
             for k, s in sent]
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 1, 1]
    assert metric(server, "mnist_predictions")["total"] - answers == 13   # 12 + 1 images
    assert metric(server, "mnist_http_request_duration_seconds", endpoint="/predict")["count"]
    assert metric(server, "mnist_model_info")["value"] == 1     # version, architecture
    assert metric(server, "mnist_ready")["value"] == 1


def stall(port: int, head_only: bool) -> socket.socket:
    """A client that sends part of a request and then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if head_only:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Le")
    else:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                     b"json\r\nContent-Length: 5000\r\n\r\n{\"inputs\": [[")
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (after any answer it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except (TimeoutError, OSError):
        return False


def test_stalled_clients_are_cut_off_while_others_are_answered(
        served: tuple[Served, int], mnist: dict[str, np.ndarray]) -> None:
    server, _ = served
    stalled = [stall(server.port, head_only=i % 5 == 0) for i in range(100)]
    try:
        times = []
        for i in range(10):
            t0 = time.perf_counter()
            invoke(server, mnist["x_test"][i:i + 1])
            times.append(time.perf_counter() - t0)
        assert max(times) < 1.0, times
        t0 = time.perf_counter()
        assert all(closed_within(s, TIMEOUT_S + 5 - (time.perf_counter() - t0))
                   for s in stalled)
        assert time.perf_counter() - t0 < TIMEOUT_S + 5
    finally:
        for s in stalled:
            s.close()
    assert server.json("ready")[0] == 200           # still serving


def test_a_model_that_cannot_load_ends_serve_with_one_line(tmp_path: Path) -> None:
    server = Served(tmp_path / "missing.h5")
    assert server.wait(timeout=120) != 0
    errors = [line for line in server.lines if "error" in line.lower()]
    assert len(errors) == 1 and "missing.h5 not found" in errors[0], server.output
    assert "Traceback" not in server.output
