from __future__ import annotations

import contextlib
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_mlops.data.idx import DTYPES, IDXError, encode_idx, parse_idx, read_idx, write_idx


@pytest.mark.parametrize("dtype", [d.newbyteorder("=") for d in DTYPES.values()])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (1, 2, 1, 3)])
def test_round_trip_all_types_and_ranks(tmp_path: Path, dtype: np.dtype, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, arr)
        back = read_idx(tmp_path / name)
        assert back.dtype == dtype and back.shape == shape
        np.testing.assert_array_equal(back, arr)


def test_big_endian_on_disk() -> None:
    data = encode_idx(np.array([1, 256], dtype=np.int16))
    assert data == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 0])


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "too short"),
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x00", "unknown dtype code 0x0A"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "payload is 2 bytes but shape 3"),
    (b"\x00\x00\x0c\x01\x00\x00\x00\x01\x01\x02\x03", "needs 4"),
])
def test_malformed_inputs_name_source_and_problem(data: bytes, needle: str) -> None:
    with pytest.raises(IDXError) as err:
        parse_idx(data, "x.idx")
    assert str(err.value).startswith("x.idx: ")
    assert needle in str(err.value)


def test_corrupt_gzip_and_missing_file(tmp_path: Path) -> None:
    good = gzip.compress(encode_idx(np.zeros((10, 4), np.uint8)))
    (tmp_path / "t.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(IDXError, match="corrupt gzip"):
        read_idx(tmp_path / "t.gz")
    with pytest.raises(IDXError, match="cannot read file"):
        read_idx(tmp_path / "absent.idx")


def assert_parsed_as_declared(data: bytes, arr: np.ndarray) -> None:
    """What parse_idx returned is what the header declares, decoded independently (struct),
    and encodes back to the very same bytes."""
    code, ndim = data[2], data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = DTYPES[code]
    assert arr.shape == dims
    assert arr.dtype == dtype.newbyteorder("=") and arr.dtype.isnative
    payload = data[4 + 4 * ndim:]
    values = [v for (v,) in struct.iter_unpack(f">{STRUCT_CODES[code]}", payload)]
    np.testing.assert_array_equal(arr.ravel(), np.array(values, dtype=arr.dtype))
    assert encode_idx(arr) == data


STRUCT_CODES = {0x08: "B", 0x09: "b", 0x0B: "h", 0x0C: "i", 0x0D: "f", 0x0E: "d"}


@st.composite
def idx_like(draw: st.DrawFn) -> bytes:
    """Bytes that are often a valid IDX file and otherwise one step from it: a known or
    unknown dtype code, 0-3 small dimensions, a payload of the right length or one off."""
    code = draw(st.sampled_from([*DTYPES, 0x0A]))
    dims = draw(st.lists(st.integers(0, 4), max_size=3))
    itemsize = DTYPES[code].itemsize if code in DTYPES else 1
    size = max(0, math.prod(dims) * itemsize + draw(st.sampled_from([0, 0, 0, -1, 1])))
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + draw(st.binary(min_size=size, max_size=size))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), idx_like()))
def test_random_bytes_parse_as_declared_or_raise_idx_error(data: bytes) -> None:
    try:
        arr = parse_idx(data)
    except IDXError:
        return
    assert_parsed_as_declared(data, arr)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_files_parse_as_declared_or_raise_idx_error(data: st.DataObject) -> None:
    raw = bytearray(encode_idx(np.arange(24, dtype=np.int32).reshape(2, 3, 4)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        arr = parse_idx(bytes(raw))
    except IDXError:
        return
    assert_parsed_as_declared(bytes(raw), arr)


def test_the_fuzz_inputs_do_parse() -> None:
    """The checks above see valid files, not only errors: a third of idx_like's draws and a
    flipped payload byte of the mutated file parse."""
    parsed = []

    @settings(max_examples=200, deadline=None, database=None)
    @given(idx_like())
    def count(data: bytes) -> None:
        with contextlib.suppress(IDXError):
            parsed.append(parse_idx(data))

    count()
    assert len(parsed) >= 40, len(parsed)
    raw = bytearray(encode_idx(np.arange(24, dtype=np.int32).reshape(2, 3, 4)))
    raw[-1] ^= 0xFF
    assert_parsed_as_declared(bytes(raw), parse_idx(bytes(raw)))
