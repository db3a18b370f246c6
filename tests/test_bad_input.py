"""Bad input that used to get through, each met for real: a chunked client past the body
cap, pixels scaled to 0-1, a busy port, a file that is not a model, a closed pipe, missing
pictures. Every one gets a clear answer and a status that says what went wrong."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.serving.inputs import MAX_BODY
from mnist_mlops.serving.serve import make_server

from .conftest import ROOT, tool_env, wait_for
from .test_predict import save_untrained_model

pytestmark = pytest.mark.slow   # real servers and processes

CLI = str(Path(sys.executable).parent / "mnist-mlops")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("model") / "mlp.h5")


@pytest.fixture(scope="module")
def port(model: Path) -> Iterator[int]:
    """The app on uvicorn, in this process, on a free port of 127.0.0.1."""
    server = make_server(Predictor(str(model)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wait_for(lambda: server.service.ready, 120, "the model's warm-up")
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def chunked_post(port: int, path: str, chunks: Iterator[bytes]) -> tuple[int, dict, int]:
    """POST with Transfer-Encoding: chunked (no Content-Length); (status, JSON answer,
    bytes sent before the answer came)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    sent = 0
    try:
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass                                  # the server answered and closed: expected
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    return resp.status, answer, sent


def endless(size: int = 256 * 1024, total: int = 64 * 2**20) -> Iterator[bytes]:
    """Up to `total` bytes of a JSON body that never ends (a client that keeps sending)."""
    yield b'{"inputs": ['
    for _ in range(total // size):
        yield b"0," * (size // 2)


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_a_chunked_body_past_the_cap_gets_413_while_it_is_sent(port: int, path: str) -> None:
    status, answer, sent = chunked_post(port, path, endless())
    assert status == 413, answer
    assert "5 MiB" in answer["message"] and answer["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert sent < 16 * 2**20, f"{sent} bytes went in before the 413"


def test_a_chunked_body_under_the_cap_is_answered(port: int) -> None:
    body = json.dumps({"inputs": np.zeros((2, 28, 28), int).tolist()}).encode()
    status, answer, _ = chunked_post(port, "/invocations", iter([body[:1000], body[1000:]]))
    assert status == 200 and len(answer["predictions"]) == 2
    assert len(body) < MAX_BODY


def post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def test_pixels_scaled_to_0_1_are_refused_saying_the_scale(port: int) -> None:
    digit = np.zeros((28, 28))
    digit[6:22, 12:16] = 0.9                          # a "1", as x / 255 would send it
    status, answer = post(port, "/invocations", json.dumps({"inputs": [digit.tolist()]})
                          .encode())
    assert status == 400 and answer["error_code"] == "BAD_REQUEST"
    assert "0-255" in answer["message"] and "255" in answer["message"]
    status, answer = post(port, "/invocations", json.dumps(
        {"inputs": [(digit * 255).round().tolist()]}).encode())
    assert status == 200, answer                       # the same digit, in MNIST's scale
    blank = json.dumps({"inputs": [np.zeros((28, 28)).tolist()]}).encode()
    assert post(port, "/invocations", blank)[0] == 200   # a blank picture is 0-255 too


@pytest.mark.parametrize(("path", "body", "says"), [
    ("/invocations", b"", "empty request"),
    ("/invocations", b"{", "expected JSON"),
    ("/predict", b"", "empty request"),
])
def test_every_error_has_mlflows_shape(port: int, path: str, body: bytes, says: str) -> None:
    status, answer = post(port, path, body)
    assert status == 400
    assert answer["error_code"] == "BAD_REQUEST" and says in answer["message"]
    assert answer["error"] == answer["message"]


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, env=tool_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_serve_on_a_busy_port_says_so_at_once(model: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        t0 = time.monotonic()
        proc = run_cli(["serve", "--model", str(model), "--port", str(taken)], tmp_path)
        took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert f"port {taken}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr and "serving on" not in proc.stdout
    assert took < 10, f"{took:.1f} s: the port must be checked before the model loads"


def test_predict_with_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    fake = tmp_path / "fake.h5"
    fake.write_text("not an HDF5 file")
    picture = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(picture)
    proc = run_cli(["predict", str(picture), "--model", str(fake)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "fake.h5" in proc.stderr and "not a Keras model" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_predict_with_no_picture_fails_before_loading_a_model(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = run_cli(["--params", str(ROOT / "params.yaml"), "predict", "nosuch.png"],
                   tmp_path)
    assert proc.returncode == 2 and "nosuch.png" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 5, "a missing picture is said before the model loads"


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """`mnist-mlops params --schema | head -1`: the reader is gone before the command
    writes (here: closed before it starts, so the write meets a closed pipe for sure)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([CLI, "params", "--schema"], cwd=tmp_path, env=tool_env(),
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr   # as a Unix tool that SIGPIPE ended
    assert proc.stderr == "", proc.stderr


def test_serve_with_a_missing_model_file_says_so_before_serving(tmp_path: Path) -> None:
    proc = run_cli(["serve", "--model", str(tmp_path / "gone.h5"), "--port", "0"], tmp_path)
    assert proc.returncode == 2 and "gone.h5 not found" in proc.stderr, proc.stderr
    assert "serving on" not in proc.stdout
