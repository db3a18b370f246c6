"""What a request carries, parsed and checked: a drawing as a PNG data URL (/predict) or
28x28 arrays in MLflow's scoring protocol (/invocations). Each error is a `BadRequest` whose
message says which part is wrong (no Python internals) and which HTTP status it earns."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

from mnist_mlops.data.digits import MAX_PIXELS, to_mnist

MAX_BODY = 5 * 2**20
# A drawing is 28-280 px a side: a 1000x1000 cap keeps one request's decoded image at 1 MB
# (the header is read first, so a "PNG bomb" is refused before it is decoded).
PAGE_MAX_PIXELS = 1_000_000
MAX_IMAGES = 256           # images in one /invocations request
EXPECTED = '{"image": "data:image/png;base64,..."}'
EXPECTED_MLFLOW = '{"inputs": [[[0..255]*28]*28, ...]} or {"instances": ...}'
EXPECTED_WHAT = f"a PNG drawing as JSON {EXPECTED}"               # what each endpoint takes
EXPECTED_MLFLOW_WHAT = f"a scoring request as JSON {EXPECTED_MLFLOW}"


class BadRequest(ValueError):
    """A request the server cannot answer; `status` is 400 (malformed) or 413 (too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def drawing(body: bytes) -> Image.Image:
    """The picture in a /predict body, decoded (CPU work: run it off the event loop)."""
    try:
        data = orjson.loads(body)["image"].split(",", 1)[-1]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadRequest(f"expected JSON {EXPECTED}") from None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"\"image\" is not base64 data: expected {EXPECTED}") from None
    try:
        img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as exc:
        raise BadRequest(f"image too large: {exc}", 413) from None
    except (UnidentifiedImageError, OSError):
        raise BadRequest(f"\"image\" holds {len(raw)} bytes that are not a picture "
                         "(PNG, JPEG, ...)") from None
    if img.width * img.height > min(PAGE_MAX_PIXELS, MAX_PIXELS):
        raise BadRequest(f"image too large: {img.width}x{img.height} pixels; a drawing "
                         f"needs at most {PAGE_MAX_PIXELS:,}", 413)
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise BadRequest(f"image too large: {exc}", 413) from None
    except (OSError, ValueError) as exc:
        raise BadRequest(f"\"image\" is a damaged {img.format} picture: {exc}") from None
    return img


def drawing_to_mnist(body: bytes) -> np.ndarray | None:
    """The 28x28 uint8 picture the model sees for a /predict body; None: no digit drawn."""
    return to_mnist(drawing(body))


def png_data_url(arr: np.ndarray) -> str:
    """A 28x28 picture as a PNG data URL (white ink on black, as the model sees it)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def scoring_images(body: bytes) -> np.ndarray:
    """The images of an MLflow scoring request: (n, 28, 28) uint8."""
    try:
        payload: Any = orjson.loads(body)
    except ValueError:
        raise BadRequest(f"expected JSON {EXPECTED_MLFLOW}") from None
    if not isinstance(payload, dict) or not ({"inputs", "instances"} & payload.keys()):
        raise BadRequest(f"expected JSON {EXPECTED_MLFLOW} (dataframe formats are not "
                         "accepted: images are tensors)")
    data = payload.get("inputs", payload.get("instances"))
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest("\"inputs\" must be nested lists of numbers shaped (n, 28, 28) or "
                         "(n, 28, 28, 1)") from None
    if arr.shape == (28, 28):
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.shape[1:] != (28, 28) or len(arr) == 0:
        raise BadRequest(f"\"inputs\" has shape {arr.shape}: expected (n, 28, 28) or "
                         "(n, 28, 28, 1) with n >= 1")
    if len(arr) > MAX_IMAGES:
        raise BadRequest(f"{len(arr)} images in one request: send at most {MAX_IMAGES}", 413)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise BadRequest("pixel values must be numbers from 0 to 255 (uint8, as MNIST)")
    if 0 < arr.max() <= 1:       # x / 255: would round to a blank picture, answered anyway
        raise BadRequest(f"pixel values are 0-255 (raw, as MNIST stores them), but the "
                         f"largest sent is {arr.max():g}: values scaled to 0-1 look blank to "
                         "the model; multiply them by 255")
    return np.rint(arr).astype(np.uint8)
