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

from mnist_mlops.digits import MAX_PIXELS, to_mnist
from mnist_mlops.predict import Predictor

log = logging.getLogger(__name__)
MAX_BODY = 5 * 2**20


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000
                ) -> ThreadingHTTPServer:
    page = resources.files("mnist_mlops").joinpath("web/index.html").read_bytes()
    lock = threading.Lock()  # one prediction at a time: Keras models are not thread-safe

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            log.debug(fmt, *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: object) -> None:
            self._send(code, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802
            if self.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif self.path == "/info":
                self._json(200, {"model": predictor.source})
            else:
                self._json(404, {"error": f"no page {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                self._json(404, {"error": f"no endpoint {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._json(413 if length else 400, {"error": "send a PNG of at most 5 MiB"})
                return
            try:
                payload = json.loads(self.rfile.read(length))
                data = payload["image"].split(",", 1)[-1]
                img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
                if img.width * img.height > MAX_PIXELS:
                    raise ValueError("image too large")
                img.load()
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error,
                    UnidentifiedImageError, OSError) as exc:
                self._json(400, {"error": f"expected JSON {{\"image\": data-URL of a PNG}}: {exc}"})
                return
            arr = to_mnist(img)
            if arr is None:
                self._json(200, {"digit": None, "probabilities": []})
                return
            with lock:
                proba = predictor.predict_proba(arr[None])[0]
            self._json(200, {"digit": int(proba.argmax()),
                             "probabilities": [round(float(p), 5) for p in proba]})

    return ThreadingHTTPServer((host, port), Handler)
