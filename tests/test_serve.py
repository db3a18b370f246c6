"""The drawing page: its HTTP API, then a real headless Chromium drawing a stroke."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.serving.serve import make_server

from .conftest import wait_for
from .drawing import draw_digit
from .needs import need, requires
from .served import Served, fetch
from .test_predict import save_untrained_model

pytestmark = pytest.mark.slow   # real training, processes or servers


@pytest.fixture(scope="module")
def page_url(model_file: Path) -> Iterator[str]:
    """`mnist-mlops serve` on the trained model, as a real process."""
    server = Served(model_file)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.kill()


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "predict", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def data_url(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return json.dumps({"image": "data:image/png;base64,"
                       + base64.b64encode(buf.getvalue()).decode()}).encode()


def test_api_predicts_a_drawing(page_url: str) -> None:
    code, out = post(page_url, data_url(draw_digit(7, size=280)))
    assert code == 200 and out["digit"] == 7
    seen = Image.open(io.BytesIO(base64.b64decode(out["input"].split(",", 1)[1])))
    assert seen.size == (28, 28) and max(seen.getdata()) == 255      # what the model saw
    assert out["model"]["architecture"] == "cnn_32_64_64" and out["latency_ms"] > 0
    assert len(out["probabilities"]) == 10 and abs(sum(out["probabilities"]) - 1) < 1e-3


def test_api_blank_and_bad_requests(page_url: str) -> None:
    code, out = post(page_url, data_url(Image.new("L", (280, 280), 255)))
    assert code == 200 and out["digit"] is None
    code, out = post(page_url, b'{"image": "data:image/png;base64,AAAA"}')
    assert code == 400 and "not a picture" in out["error"]
    code, out = post(page_url, b"not json")
    assert code == 400
    with urllib.request.urlopen(page_url, timeout=10) as resp:
        assert b"<canvas" in resp.read()
    with urllib.request.urlopen(page_url + "info", timeout=10) as resp:
        assert json.loads(resp.read())["architecture"] == "cnn_32_64_64"   # who answers


@pytest.fixture(scope="module")
def untrained_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page with an untrained model: for answers that never reach the model."""
    model = save_untrained_model(tmp_path_factory.mktemp("untrained") / "mlp.h5")
    server = Served(model)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.kill()


@pytest.mark.parametrize(("body", "says"), [
    (b'{"image": "data:image/png;base64,AAAA"}', '"image" holds 3 bytes that are not a picture'),
    (b'{"image": "data:image/png;base64,not base64!"}', '"image" is not base64 data'),
    (b'{"picture": "data:image/png;base64,AAAA"}', "expected JSON {\"image\": \"data:image"),
    (b'["image"]', "expected JSON {\"image\""),
    (b"not json", "expected JSON {\"image\""),
])
def test_a_bad_request_says_which_part_is_wrong(untrained_url: str, body: bytes,
                                                says: str) -> None:
    code, out = post(untrained_url, body)
    assert code == 400 and says in out["error"], out
    assert "<" not in out["error"] and "object at 0x" not in out["error"]


def test_a_blank_drawing_says_no_digit_found(untrained_url: str) -> None:
    code, out = post(untrained_url, data_url(Image.new("L", (280, 280), 255)))
    assert code == 200 and out["digit"] is None and out["message"] == "no digit found"


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (a decompression bomb's shape)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    ihdr = raw[12:29]                                   # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


def test_a_calibrated_model_says_when_it_is_unsure(calibrated_h5: Path, model_file: Path,
                                                  mnist: dict, tmp_path: Path) -> None:
    """/predict: calibrated probabilities and `unsure` with what to do; /invocations: the
    model's own probabilities, as MLflow gives them, and one flag per image; /info: the
    calibration."""
    from mnist_mlops.core.calibration import read_h5

    from .drawing import not_one_digit

    server = Served(calibrated_h5)
    try:
        server.wait_ready()
        code, info = server.json("info")
        assert code == 200 and info["calibration"] == {
            "temperature": read_h5(calibrated_h5).temperature,
            "unsure_below": read_h5(calibrated_h5).unsure_below}
        code, out = post(server.url, data_url(draw_digit(7, size=280)))
        assert code == 200 and out["digit"] == 7 and out["unsure"] is False
        answers = [post(server.url, data_url(Image.open(f)))[1] for f in not_one_digit(
            tmp_path, [Image.fromarray(d) for d in mnist["x_test"][2000:2020]])]
        unsure = [a for a in answers if a["digit"] is not None and a["unsure"]]
        assert len(unsure) >= 10, answers
        assert all("draw or photograph it again" in a["message"] for a in unsure)
        x = mnist["x_test"][:200]
        code, out = server.json("invocations", json.dumps({"inputs": x.tolist()}).encode())
        own = Predictor(str(model_file)).predict_proba(x)
        assert code == 200 and len(out["unsure"]) == 200 and sum(out["unsure"]) <= 20
        assert max(abs(a - b) for p, q in zip(out["predictions"], own.tolist(), strict=True)
                   for a, b in zip(p, q, strict=True)) < 1e-5
    finally:
        server.kill()


def test_pictures_too_large_get_413_not_a_dropped_connection(page_url: str) -> None:
    for w, h in ((20000, 20000), (6000, 6000), (1001, 1001)):
        body = json.dumps({"image": "data:image/png;base64,"
                           + base64.b64encode(png_claiming(w, h)).decode()}).encode()
        code, out = post(page_url, body)
        assert code == 413 and "too large" in out["error"], (w, h, out)
    code, out = post(page_url, data_url(draw_digit(3, size=280)))
    assert code == 200 and out["digit"] is not None          # still serving


def raw_request(url: str, head: str) -> tuple[int, dict]:
    host, port = url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_bad_content_length_gets_400(page_url: str) -> None:
    for value in ("abc", "-5", "99999999999"):
        code, out = raw_request(page_url, f"POST /predict HTTP/1.1\r\nHost: x\r\n"
                                          f"Content-Length: {value}\r\n\r\n")
        assert code in (400, 413) and "Content-Length" in out["error"], (value, out)


class SlowPredictor(Predictor):
    """A model that takes 0.3 s per drawing: enough to fill the queue."""

    def predict_proba(self, x):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return super().predict_proba(x)


def test_overload_gets_503_instead_of_resets(model_file: Path) -> None:
    server = make_server(SlowPredictor(str(model_file)), "127.0.0.1", 0, max_pending=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    wait_for(lambda: server.service.ready, 60, "the model's warm-up")
    body = data_url(draw_digit(5, size=200))
    try:
        with ThreadPoolExecutor(16) as pool:     # a reset would raise here
            answers = list(pool.map(lambda _: fetch(url + "predict", body), range(16)))
    finally:
        server.shutdown()
        server.server_close()
    codes = [code for code, _, _ in answers]
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    assert all(h.get("retry-after") for code, h, _ in answers if code == 503)


@requires("chromium")   # skips without Chromium; fails when CI is set
def test_draw_in_a_real_browser(page_url: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=need("chromium"), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(page_url)
            box = page.locator("#pad").bounding_box()
            x0, y0 = box["x"], box["y"]
            # a "7": top bar, then the long diagonal
            points = [(70, 50), (210, 50), (120, 250)]
            page.mouse.move(x0 + points[0][0], y0 + points[0][1])
            page.mouse.down()
            for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
                for i in range(1, 16):
                    page.mouse.move(x0 + xa + (xb - xa) * i / 15, y0 + ya + (yb - ya) * i / 15)
            page.mouse.up()
            answer = page.get_by_test_id("answer")
            # wait for the answer to the finished drawing, not one made mid-stroke
            page.wait_for_function(
                "() => document.getElementById('answer').dataset.version === "
                "document.getElementById('pad').dataset.version", timeout=20000)
            assert answer.inner_text() == "7"
            assert answer.get_attribute("data-unsure") == "false"     # sure of a clear 7
            assert page.get_by_test_id("unsure").inner_text() == ""
            assert page.get_by_test_id("probs").locator(".bar").count() == 10
            # what the model saw: the 28x28 picture, and who answered in how long
            seen = page.get_by_test_id("seen")
            assert seen.evaluate("img => img.complete && img.naturalWidth") == 28
            assert "cnn_32_64_64" in page.get_by_test_id("seen-by").inner_text()
            assert " ms" in page.get_by_test_id("seen-by").inner_text()
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
