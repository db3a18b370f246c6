"""Strict reader and writer for the IDX format that MNIST ships in.

Format: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32
per dimension, then the payload in big-endian C order. Every malformed input raises
`IDXError` naming the file and the problem, never a numpy traceback.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from mnist_mlops.core.fsio import atomic_path

# IDX dtype codes (0x0A is unassigned in the format).
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """Malformed IDX data; the message names the source and what is wrong."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a native-endian array of the declared shape and dtype."""
    if len(data) < 4:
        raise IDXError(source, f"too short for an IDX header ({len(data)} bytes, need 4)")
    if data[0] != 0 or data[1] != 0:
        raise IDXError(source, f"bad magic number {data[:4].hex()}: the first two bytes must be 0")
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise IDXError(source, f"unknown dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXError(source, "declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(source, f"truncated header: {ndim} dimensions need {header} bytes, "
                               f"file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    payload = len(data) - header
    if payload != expected:
        shape = "x".join(map(str, dims))
        raise IDXError(source, f"payload is {payload} bytes but shape {shape} of "
                               f"{dtype.name} needs {expected}")
    try:   # an empty payload may still declare dimensions no array can have
        arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    except ValueError as exc:
        raise IDXError(source, f"shape {'x'.join(map(str, dims))} cannot be represented "
                               f"({exc})") from None
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (detected by content, not name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IDXError(str(path), f"cannot read file ({exc.strerror or exc})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXError(str(path), f"corrupt gzip data ({exc})") from None
    return parse_idx(raw, str(path))


def encode_idx(arr: np.ndarray) -> bytes:
    dtype = np.dtype(arr.dtype).newbyteorder("=")
    if dtype not in CODES:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}; use one of "
                         f"{', '.join(d.name for d in CODES)}")
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError("IDX stores arrays of 1 to 255 dimensions")
    code = CODES[dtype]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()


def write_idx(path: Path | str, arr: np.ndarray) -> None:
    """Write `arr` as IDX (gzip-compressed when the name ends in .gz), atomically."""
    data = encode_idx(arr)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
