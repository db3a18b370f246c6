"""Turn a picture of a handwritten digit into an MNIST-like 28x28 uint8 image.

MNIST digits are white on black, anti-aliased, size-normalised to fit a 20x20 box with the
aspect ratio kept, and centred in 28x28 by their centre of mass. Doing the same to a user's
drawing (instead of the tutorials' resize + fixed threshold) is what makes it recognisable.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_mlops.core.mnist import INPUT_SHAPE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_PIXELS = 40_000_000        # larger images are refused (decompression-bomb guard)
MAX_FILE_BYTES = 50 * 2**20
BACKGROUND_SIDE = 96           # the paper's brightness is estimated at this resolution
SPECK_MASS = 0.004             # ink this far out (fraction of all) is a speck, not the digit
GRAINY = 0.01                 # paper noise (robust std) above which strokes are denoised
INK_FLOOR = 0.1                # ink below this (after background removal) is paper
MIN_CONTRAST = 0.10            # less contrast than this: no digit on the page
STROKE_PX = 2.2                # typical MNIST stroke width, in 28x28 pixels
DIGIT_BOX = 20.0               # MNIST fits each digit in 20x20, then centres it in 28x28
CENTRE = 14.0                  # where MNIST puts the centre of mass (measured on its digits)
MIXED_BORDER = 0.3             # a border with this share of ink and of paper: a tight crop
RING = 0.15                    # ... whose outer ring this wide is compared with the rest
TIGHT_CROP = 0.85              # a digit spanning this share of the picture is tightly cropped
TIGHT_STROKE = 0.6             # ... its paper filter: this share of the digit's span
INK_MAJORITY = 0.15            # strong ink on this share of the picture: paper is the rest


class ImageInputError(ValueError):
    """An input file that cannot be used as a digit picture; the message says why."""


def open_image(path: Path | str) -> Image.Image:
    """Open and fully decode an image file, with clear errors for every kind of bad file."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise ImageInputError(f"{path}: file is empty")
    if size > MAX_FILE_BYTES:
        raise ImageInputError(f"{path}: file is {size / 2**20:.0f} MiB; the limit is "
                              f"{MAX_FILE_BYTES // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise ImageInputError(f"{path}: {img.width}x{img.height} pixels is too large "
                                      f"(limit {MAX_PIXELS:,} pixels); scale it down")
            img.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"{path}: image is too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image file Pillow can read "
                              "(use PNG, JPEG, BMP, GIF or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{path}: damaged or truncated image ({exc})") from None
    return ImageOps.exif_transpose(img)


def luminance(img: Image.Image) -> np.ndarray:
    """Grayscale in [0, 1], transparent areas composited on white, 16-bit kept exact."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(arr / np.float32(top), 0, 1)
    if img.mode == "P" or "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0)


def ink_map(gray: np.ndarray) -> np.ndarray | None:
    """Ink in [0, 1] (1 = stroke), whichever way round the picture is; None if blank.

    The paper is estimated locally (`background`), not assumed near-white: a dark digit on
    grey, textured or unevenly lit paper is ink where it is darker than the paper around it.
    """
    dark_ink = _dark_ink(gray)
    bg = background(gray, dark_ink)
    if (wide := _digit_side(bg, gray, dark_ink)) is not None:
        bg = background(gray, dark_ink, wide)    # strokes as wide as the picture allows
    # relative to the local paper, so that shade darkens paper and ink alike
    ink = (bg - gray) / np.maximum(bg, 0.05) if dark_ink else (gray - bg) / np.maximum(1 - bg,
                                                                                    0.05)
    ink = np.clip(ink, 0.0, 1.0)
    level, noise = _paper_level(ink)
    if noise > GRAINY:       # textured paper or a noisy sensor: grain inside the strokes
        ink = np.asarray(Image.fromarray(np.round(ink * 255).astype(np.uint8)).filter(
            ImageFilter.MedianFilter(3)), dtype=np.float32) / np.float32(255.0)
        level, noise = _paper_level(ink)
    floor = level + 4.0 * noise
    peak = float(np.percentile(ink, 99.9))
    if peak - floor < MIN_CONTRAST:
        return None
    ink = np.clip((ink - np.float32(floor)) / np.float32(peak - floor), 0.0, 1.0)
    return ink if (ink > 0.5).any() else None


def dark_ink(img: Image.Image) -> bool:
    """Whether `img`'s ink is darker than its paper, guessed as `to_mnist` guesses it: what
    a baseline that must be told the ink's side is told where nobody said (the real-world
    set's user pictures)."""
    return _dark_ink(luminance(img))


def _dark_ink(gray: np.ndarray) -> bool:
    """Whether the ink is darker than the paper. The border is taken for paper: the ink is
    the far side of the picture's range from the border's median. A tight crop touches the
    edges, so its border holds both extremes, ink and paper (MIXED_BORDER of each); then the
    ink is the side that is more central (the outer ring against the middle)."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    lo, hi = np.percentile(gray, [0.5, 99.5])
    quarter = (hi - lo) / 4
    if min(np.mean(border <= lo + quarter), np.mean(border >= hi - quarter)) < MIXED_BORDER:
        paper = float(np.median(border))
        return bool(paper - lo >= hi - paper)
    h, w = gray.shape
    ring = max(1, round(min(h, w) * RING))
    middle = gray[ring:h - ring, ring:w - ring]
    outer = (gray.sum() - middle.sum()) / max(gray.size - middle.size, 1)
    return bool(outer >= middle.mean())      # paper brighter at the edge: the ink is dark


def _digit_side(bg: np.ndarray, gray: np.ndarray, dark_ink: bool) -> float | None:
    """When the digit fills most of the picture (a tight crop, a marker filling the frame),
    the fraction of the picture its ink spans; else None. Its strokes may then be wider than
    the first paper estimate's filter, which took their middles for paper. The span is that
    of the ink's mass (specks and grain far out do not widen it), and only ink that stands
    out from the paper by MIN_CONTRAST counts."""
    ink = np.clip((bg - gray) if dark_ink else (gray - bg), 0.0, 1.0)
    peak = float(np.percentile(ink, 99.9))
    if peak - float(np.median(ink)) < MIN_CONTRAST:
        return None
    strong = np.where(ink > 0.5 * peak, ink / peak, 0.0)
    (r0, r1), (c0, c1) = (_extent(strong, axis) for axis in (1, 0))
    side = max((r1 - r0 + 1) / gray.shape[0], (c1 - c0 + 1) / gray.shape[1])
    return float(side) if side >= TIGHT_CROP else None


def _paper_level(ink: np.ndarray) -> tuple[float, float]:
    """The ink map's level on the paper and its robust spread: over the whole picture, where
    most of it is paper; over the pixels below half the strongest ink where the digit covers
    a large share of it (a tight crop, thick strokes), lest the ink be taken for paper."""
    peak = float(np.percentile(ink, 99.9))
    strong = ink >= 0.5 * peak
    rest = ink[~strong]
    # the rest, not the median, is the paper: where the strong ink covers more than half
    # the picture (a marker filling the frame), the median is ink. The contrast asked of
    # it keeps a blank page's grain (a weak peak) from being taken for a digit.
    covered = (strong.mean() >= INK_MAJORITY and rest.size > 0
               and peak - float(np.median(rest)) >= MIN_CONTRAST)
    paper = rest if covered else ink
    level = float(np.median(paper))
    return level, 1.4826 * float(np.median(np.abs(paper - level)))


def background(gray: np.ndarray, dark_ink: bool, tight: float | None = None) -> np.ndarray:
    """The paper's (or board's) local brightness: the picture with its strokes closed over
    by a filter wider than a stroke, then smoothed. It follows grey paper, shadows and
    uneven light, not the digit. Estimated on a small copy: fast on large photos.

    `tight` (the share of the picture the digit spans, from `_digit_side`): a tight crop,
    whose strokes may be a third of the picture wide and touch its edges. The filter is
    then 0.6 of that span (TIGHT_STROKE), and the margins are paper (the 90th percentile of
    the picture's brightness, the 10th for light ink) instead of a mirror of the edge,
    which there is ink."""
    h, w = gray.shape
    f = min(1.0, BACKGROUND_SIDE / max(h, w))
    small = np.asarray(Image.fromarray(np.round(gray * 255).astype(np.uint8)).resize(
        (max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR))
    share = 0.2 if tight is None else TIGHT_STROKE * tight
    size = max(3, round(max(small.shape) * share)) | 1
    pad = size
    if tight is None:
        # mirrored margins: the filters see paper beyond the edge, not a made-up border
        padded = np.pad(small, pad, mode="reflect")
    else:
        paper = np.percentile(small, 90 if dark_ink else 10)
        padded = np.pad(small, pad, mode="constant", constant_values=round(float(paper)))
    # separable max/min filters (scipy): the same pixels as PIL's Max/MinFilter, whose cost
    # grows with size^2 (60 ms a drawing against under 1 ms)
    unink, restore = ((ndimage.maximum_filter, ndimage.minimum_filter) if dark_ink
                      else (ndimage.minimum_filter, ndimage.maximum_filter))
    closed = restore(unink(padded, size, mode="nearest"), size, mode="nearest")
    bg = Image.fromarray(closed).filter(ImageFilter.GaussianBlur(size / 4))
    bg = bg.crop((pad, pad, pad + small.shape[1], pad + small.shape[0]))
    return np.asarray(bg.resize((w, h), Image.BILINEAR), dtype=np.float32) / np.float32(255.0)


def _shift(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate without wrap-around (vacated pixels are 0)."""
    out = np.zeros_like(arr)
    h, w = arr.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = arr[ys, xs]
    return out


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary drawing: 2 x area / perimeter (a long thin band)."""
    area = mask.sum()
    interior = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] \
        & mask[1:-1, 2:]
    perimeter = area - interior.sum()
    return 2.0 * area / max(perimeter, 1)


def thicken(img: Image.Image, target_px: float) -> Image.Image:
    """Dilate strokes thinner than `target_px` (a fine pen scaled down would fade away)."""
    padded = np.pad(np.asarray(img) > 127, 1)
    grow = int(round(target_px - stroke_width(padded)))
    if grow < 2:
        return img
    size = grow + 1 if grow % 2 == 0 else grow
    return Image.fromarray(ndimage.maximum_filter(np.asarray(img), min(size, 31),
                                                  mode="nearest"))


def _extent(ink: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last row (axis=1) or column (axis=0) of the digit: where its ink mass
    starts and ends, so that a speck of paper texture far away does not widen the crop."""
    mass = np.where(ink > INK_FLOOR, ink, 0.0).sum(axis=axis)
    cum = np.cumsum(mass) / mass.sum()
    return int(np.searchsorted(cum, SPECK_MASS)), int(np.searchsorted(cum, 1 - SPECK_MASS))


def to_mnist(img: Image.Image, threshold: float | None = None) -> np.ndarray | None:
    """28x28 uint8, white digit on black, MNIST-normalised; None when there is no digit."""
    ink = ink_map(luminance(img))
    if ink is None:
        return None
    if threshold is not None:
        ink = (ink >= threshold).astype(np.float64)
    (r0, r1), (c0, c1) = (_extent(ink, axis) for axis in (1, 0))
    crop = ink[r0:r1 + 1, c0:c1 + 1]
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    crop_img = thicken(Image.fromarray((crop * 255).astype(np.uint8)), STROKE_PX / scale)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(crop_img.resize((nw, nh), Image.LANCZOS), dtype=np.float64)
    if small.max() <= 0:
        return None
    side = INPUT_SHAPE[0]
    canvas = np.zeros((side, side), dtype=np.float64)
    top, left = (side - nh) // 2, (side - nw) // 2
    canvas[top:top + nh, left:left + nw] = small * (255.0 / small.max())  # full contrast
    total = canvas.sum()
    yy, xx = np.indices(canvas.shape)
    cy, cx = (yy * canvas).sum() / total, (xx * canvas).sum() / total
    centred = _shift(canvas, round(CENTRE - cy), round(CENTRE - cx))
    return np.clip(centred, 0, 255).astype(np.uint8)


def prepare(path: Path | str, threshold: float | None = None) -> np.ndarray | None:
    """File -> MNIST-like array (or None for a blank picture); ImageInputError if unusable."""
    return to_mnist(open_image(path), threshold)
