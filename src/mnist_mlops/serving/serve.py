"""A drawing page served on 127.0.0.1: draw a digit, see the model's answer live.

GET / is the page, POST /predict takes {"image": "data:image/png;base64,..."} and returns
{"digit": d | null, "probabilities": [...]}. The same preprocessing as `predict` is used.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from PIL import Image, UnidentifiedImageError

from mnist_mlops.data.digits import MAX_PIXELS, to_mnist
from mnist_mlops.serving.predict import NO_DIGIT, Predictor

log = logging.getLogger(__name__)
MAX_BODY = 5 * 2**20
# A drawing is 28-280 px a side: a 1000x1000 cap keeps one request's decoded image at 1 MB
# (the header is read first, so a "PNG bomb" is refused before it is decoded).
PAGE_MAX_PIXELS = 1_000_000
MAX_PENDING = 16          # requests waiting for the model; more get 503, not a reset
BACKLOG = 128             # connections the kernel queues before accept()
EXPECTED = '{"image": "data:image/png;base64,..."}'


class _Server(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True

    def __init__(self, address: tuple[str, int], predictor: Predictor,
                 max_pending: int) -> None:
        super().__init__(address, _Handler)
        self.predictor = predictor
        self.page = resources.files("mnist_mlops.serving").joinpath("web/index.html"
                                                                    ).read_bytes()
        self.lock = threading.Lock()  # one prediction at a time: Keras models are not thread-safe
        self.pending = threading.BoundedSemaphore(max_pending)


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                max_pending: int = MAX_PENDING) -> ThreadingHTTPServer:
    return _Server((host, port), predictor, max_pending)


class _TooLarge(ValueError):
    """A request whose picture is larger than the page accepts (HTTP 413)."""


class _BadRequest(ValueError):
    """A request that is not JSON with a picture as data URL (HTTP 400); the message says
    which part is wrong, without Python internals."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug(fmt, *args)

    def _send(self, code: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, data: object, **headers: str) -> None:
        self._send(code, json.dumps(data).encode(), "application/json", **headers)

    def do_GET(self) -> None:  # noqa: N802
        predictor = self.server.predictor
        if self.path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif self.path == "/info":
            self._json(200, {"model": predictor.source, **predictor.about})
        else:
            self._json(404, {"error": f"no page {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/predict":
            self._json(404, {"error": f"no endpoint {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self._json(400, {"error": "Content-Length must be a number of bytes"})
            return
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._json(413 if length > 0 else 400,
                       {"error": "send a PNG of at most 5 MiB (Content-Length)"})
            return
        try:
            img = self._read_image(length)
        except (_TooLarge, _BadRequest) as exc:
            self._json(413 if isinstance(exc, _TooLarge) else 400, {"error": str(exc)})
            return
        if not self.server.pending.acquire(blocking=False):
            self._json(503, {"error": "busy: too many drawings waiting; retry"},
                       Retry_After="1")
            return
        self._json(200, self._answer(img))

    def _answer(self, img: Image.Image) -> dict[str, object]:
        """The model's answer to one drawing (its pending slot released here)."""
        predictor = self.server.predictor
        try:
            arr = to_mnist(img)
            if arr is None:
                return {"digit": None, "probabilities": [], "message": NO_DIGIT,
                        "model": predictor.about}
            with self.server.lock:
                proba = predictor.predict_proba(arr[None])[0]
        finally:
            self.server.pending.release()
        return {"digit": int(proba.argmax()),
                "probabilities": [round(float(p), 5) for p in proba], "model": predictor.about}

    def _read_image(self, length: int) -> Image.Image:
        """The request's picture; _BadRequest says which part of the request is wrong."""
        try:
            payload = json.loads(self.rfile.read(length))
            data = payload["image"].split(",", 1)[-1]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _BadRequest(f"expected JSON {EXPECTED}") from None
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _BadRequest(f"\"image\" is not base64 data: expected {EXPECTED}") from None
        try:
            img = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as exc:
            raise _TooLarge(f"image too large: {exc}") from None
        except (UnidentifiedImageError, OSError):
            raise _BadRequest(f"\"image\" holds {len(raw)} bytes that are not a picture "
                              "(PNG, JPEG, ...)") from None
        if img.width * img.height > min(PAGE_MAX_PIXELS, MAX_PIXELS):
            raise _TooLarge(f"image too large: {img.width}x{img.height} pixels; a drawing "
                            f"needs at most {PAGE_MAX_PIXELS:,}")
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise _TooLarge(f"image too large: {exc}") from None
        except (OSError, ValueError) as exc:
            raise _BadRequest(f"\"image\" is a damaged {img.format} picture: {exc}") from None
        return img
