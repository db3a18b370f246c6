"""Image preprocessing (digits.py) on pictures made here: no model involved."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mnist_mlops.data.digits import ImageInputError, open_image, prepare, to_mnist

from .drawing import draw_digit


def com(a: np.ndarray) -> tuple[float, float]:
    yy, xx = np.indices(a.shape)
    return (yy * a).sum() / a.sum(), (xx * a).sum() / a.sum()


@pytest.mark.parametrize("variant", ["dark_on_light", "light_on_dark", "rgba", "rgb", "16bit",
                                     "off_centre", "thin", "thick"])
def test_every_variant_becomes_mnist_like(variant: str) -> None:
    kw: dict = {}
    if variant == "light_on_dark":
        kw["dark_on_light"] = False
    if variant == "rgba":
        kw["mode"] = "RGBA"
    if variant == "rgb":
        kw["mode"] = "RGB"
    if variant == "off_centre":
        kw["box"] = (0.02, 0.5, 0.3, 0.98)
    if variant == "thin":
        kw["width"] = 4
    if variant == "thick":
        kw["width"] = 30
    img = draw_digit(7, **kw)
    if variant == "16bit":
        img = Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)
        assert img.mode == "I;16"
    out = to_mnist(img)
    assert out is not None and out.shape == (28, 28) and out.dtype == np.uint8
    # white on black, digit inside the central 20x20 box, centred by mass
    assert out[0].max() == 0 and out[:, 0].max() == 0
    assert out.max() >= 200
    rows = np.flatnonzero(out.max(axis=1) > 25)
    cols = np.flatnonzero(out.max(axis=0) > 25)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in range(17, 23)
    cy, cx = com(out.astype(float))
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    # anti-aliasing is kept: plenty of grey levels
    assert len(np.unique(out)) > 20


def photo_of(img: Image.Image, paper: float, ink: float, shade: float, grain: float,
             seed: int = 0) -> Image.Image:
    """A drawing (dark on white) as if on paper of brightness `paper` with ink `ink`, lit
    from one side (`shade`: how much darker the far side is) and with paper grain."""
    a = 1.0 - np.asarray(img, dtype=np.float64) / 255.0          # 1 = stroke
    h, w = a.shape
    light = 1.0 - shade * np.linspace(0, 1, w)[None, :]
    rng = np.random.default_rng(seed)
    gray = (paper * (1 - a) + ink * a) * light + rng.normal(0, grain, (h, w))
    return Image.fromarray(np.round(np.clip(gray, 0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize(("paper", "ink", "shade", "grain"), [
    (0.5, 0.15, 0.0, 0.0),     # grey paper: a dark digit, well visible
    (0.55, 0.25, 0.0, 0.03),   # grey, textured
    (0.95, 0.3, 0.6, 0.01),    # white paper, one side in shadow (darker than the ink's side)
    (0.7, 0.3, 0.4, 0.03),     # all of it
])
def test_dark_digit_on_grey_textured_unevenly_lit_paper(paper: float, ink: float,
                                                         shade: float, grain: float) -> None:
    clean = to_mnist(draw_digit(2))
    out = to_mnist(photo_of(draw_digit(2), paper, ink, shade, grain))
    assert out is not None and clean is not None
    assert out[0].max() == 0 and out[:, 0].max() == 0 and out.max() >= 200
    corr = max(np.corrcoef(np.roll(out, (dy, dx), (0, 1)).ravel().astype(float),
                           clean.ravel().astype(float))[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))   # centring may differ by a pixel
    assert corr > 0.9, corr


def test_grey_textured_paper_without_a_digit_has_none() -> None:
    blank = Image.new("L", (240, 240), 255)
    assert to_mnist(photo_of(blank, 0.6, 0.2, 0.4, 0.03)) is None


def test_threshold_binarises() -> None:
    out = to_mnist(draw_digit(3), threshold=0.5)
    assert out is not None and len(np.unique(out)) > 2  # resizing still anti-aliases edges


@pytest.mark.parametrize("fill", [0, 255, 128])
def test_blank_pictures_have_no_digit(fill: int) -> None:
    rng = np.random.default_rng(0)
    noise = np.clip(fill + rng.normal(0, 3, (100, 100)), 0, 255).astype(np.uint8)
    assert to_mnist(Image.fromarray(noise)) is None


def write_png(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png", draw_digit(1))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    cases = {
        "empty.png": "file is empty",
        "text.png": "not an image file",
        "cut.png": "damaged or truncated",
        "absent.png": "no such file",
    }
    for name, needle in cases.items():
        with pytest.raises(ImageInputError) as err:
            prepare(tmp_path / name)
        assert needle in str(err.value) and name in str(err.value)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge 1-bit image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(bomb_png(60000, 60000))
    with pytest.raises(ImageInputError, match="too large"):
        open_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF"])
def test_all_formats_give_the_drawn_digit(tmp_path: Path, fmt: str) -> None:
    """Every format decodes to the digit that was drawn: exactly for lossless formats, up
    to JPEG's compression artefacts for JPEG."""
    drawn = draw_digit(4)
    expected = to_mnist(drawn)
    assert expected is not None
    buf = io.BytesIO()
    drawn.convert("RGB" if fmt == "JPEG" else "L").save(buf, fmt)
    path = tmp_path / f"d.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    out = prepare(path)
    assert out is not None and out.shape == (28, 28) and out.dtype == np.uint8
    if fmt == "JPEG":
        corr = np.corrcoef(out.ravel().astype(float), expected.ravel().astype(float))[0, 1]
        assert corr > 0.95, corr
    else:
        np.testing.assert_array_equal(out, expected)


@pytest.mark.slow
def test_preprocessing_beats_a_plain_resize_on_tight_thick_scans_and_photos(
        model_file: Path, mnist: dict[str, np.ndarray]) -> None:
    """A small convnet answers 300 held-out digits rendered as tight, thick, soft scans
    (digits that touch the edges, strokes a third of the picture wide), dark on white and
    light on dark, and as photos: after `to_mnist` it gets more right than after a plain
    resize that is told which way round the ink is."""
    import keras

    from mnist_mlops.data.realworld import photograph, plain_resize, scan

    net = keras.models.load_model(model_file, compile=False)
    x, y = mnist["x_test"][:300], mnist["y_test"][:300]
    rng = np.random.default_rng(7)
    scans = [scan(d) for d in x]
    kinds = {"scans": (scans, [True] * len(x)),
             "inverted": ([ImageOps.invert(s) for s in scans], [False] * len(x))}
    photos = [photograph(d, rng) for d in x]
    kinds["photos"] = (photos, [paper_is_light(p) for p in photos])

    def accuracy(arrays: list[np.ndarray | None]) -> float:
        batch = np.stack([np.zeros((28, 28), np.uint8) if a is None else a for a in arrays])
        return float((net.predict(batch[..., None].astype("float32"), verbose=0).argmax(1)
                      == y).mean())

    for kind, (pictures, dark) in kinds.items():
        ours = accuracy([to_mnist(p) for p in pictures])
        plain = accuracy([plain_resize(p, d) for p, d in zip(pictures, dark, strict=True)])
        assert ours > plain + 0.05, (kind, ours, plain)


def paper_is_light(photo: Image.Image) -> bool:
    """A photo's border is its paper: the ink is the far side of the range from it."""
    gray = np.asarray(photo.convert("L"), dtype=np.float64)
    paper = np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
    return bool(paper - gray.min() >= gray.max() - paper)
