"""Digits drawn with Pillow as strokes, the way a person draws them with a mouse."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw


def _arc(centre: tuple[float, float], radii: tuple[float, float], degrees: tuple[float, float],
         n: int = 24) -> list[tuple[float, float]]:
    """Points along an elliptic arc from degrees[0] to degrees[1]."""
    (cx, cy), (rx, ry), (a0, a1) = centre, radii, degrees
    return [(cx + rx * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
             cy + ry * math.sin(math.radians(a0 + (a1 - a0) * i / n))) for i in range(n + 1)]


# Strokes in a unit box (x right, y down); each digit is a list of polylines.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc((0.5, 0.5), (0.28, 0.42), (0, 360))],
    1: [[(0.38, 0.22), (0.55, 0.08), (0.55, 0.92)]],
    2: [_arc((0.5, 0.32), (0.27, 0.24), (200, 380)) + [(0.22, 0.92), (0.8, 0.92)]],
    3: [_arc((0.48, 0.3), (0.26, 0.21), (200, 450)), _arc((0.48, 0.7), (0.3, 0.22), (270, 520))],
    4: [[(0.62, 0.08), (0.18, 0.62), (0.85, 0.62)], [(0.64, 0.3), (0.64, 0.94)]],
    5: [[(0.78, 0.1), (0.3, 0.1), (0.26, 0.45)] + _arc((0.5, 0.65), (0.3, 0.26), (230, 500))],
    6: [[(0.68, 0.08), (0.35, 0.45)] + _arc((0.5, 0.68), (0.26, 0.24), (200, 560))],
    7: [[(0.2, 0.1), (0.82, 0.1), (0.42, 0.94)]],
    8: [_arc((0.5, 0.28), (0.22, 0.2), (90, 450)), _arc((0.5, 0.7), (0.28, 0.23), (-90, 270))],
    9: [_arc((0.48, 0.3), (0.25, 0.22), (0, 360)), [(0.73, 0.3), (0.68, 0.94)]],
}


def draw_digit(digit: int, *, size: int = 240, width: int = 18, box: tuple[float, ...] = (
        0.2, 0.1, 0.8, 0.9), dark_on_light: bool = True, mode: str = "L") -> Image.Image:
    """The digit drawn in `box` (x0, y0, x1, y1 as fractions of the canvas)."""
    bg, fg = (255, 0) if dark_on_light else (0, 255)
    img = Image.new("L", (size, size), bg)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    for stroke in STROKES[digit]:
        pts = [(size * (x0 + (x1 - x0) * x), size * (y0 + (y1 - y0) * y)) for x, y in stroke]
        d.line(pts, fill=fg, width=width, joint="curve")
        for p in (pts[0], pts[-1]):
            d.ellipse([p[0] - width / 2, p[1] - width / 2, p[0] + width / 2, p[1] + width / 2],
                      fill=fg)
    if mode == "RGBA":  # ink as opaque strokes on a fully transparent background
        rgba = Image.new("RGBA", img.size, (0, 0, 0, 0))
        alpha = img.point(lambda v: 255 - v) if dark_on_light else img
        rgba.putalpha(alpha)
        return rgba
    return img.convert(mode)


STYLES: dict[str, dict] = {  # drawing styles of the drawn-digit test set
    "plain": {},
    "thick": {"width": 32},
    "thin": {"width": 5},
    "off_centre_small": {"box": (0.55, 0.55, 0.85, 0.95)},
    "light_on_dark": {"dark_on_light": False},
    "alpha": {"mode": "RGBA"},
}


def drawn_set(folder: Path) -> tuple[list[Path], list[int]]:
    """Every digit in every style as PNG files in `folder`: (files, true digits)."""
    files, truth = [], []
    for style, kw in STYLES.items():
        for digit in range(10):
            files.append(folder / f"{style}_{digit}.png")
            draw_digit(digit, **kw).save(files[-1])
            truth.append(digit)
    return files, truth


LETTERS = "AEFHKMNRWX"     # capitals that do not look like a digit


def not_one_digit(folder: Path, digits: list[Image.Image], seed: int = 0) -> list[Path]:
    """Thirty pictures that hold no single digit, dark on white: ten capital letters
    (280x280), ten pen scribbles (280x280) and ten pairs of the given digits side by side
    (560x280). What `predict` should answer "unsure" for."""
    import numpy as np
    from PIL import ImageFont

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=200)
    pictures: list[tuple[str, Image.Image]] = []
    for letter in LETTERS:
        img = Image.new("L", (280, 280), 255)
        ImageDraw.Draw(img).text((140, 140), letter, fill=0, font=font, anchor="mm")
        pictures.append((f"letter-{letter}", img))
    for i in range(10):
        img = Image.new("L", (280, 280), 255)
        points = [tuple(p) for p in rng.uniform(40, 240, (int(rng.integers(6, 12)), 2))]
        ImageDraw.Draw(img).line(points, fill=0, width=int(rng.integers(10, 22)), joint="curve")
        pictures.append((f"scribble-{i}", img))
    for i in range(10):
        img = Image.new("L", (560, 280), 255)
        for j, digit in enumerate(digits[2 * i:2 * i + 2]):
            ink = digit.resize((280, 280), Image.BILINEAR).point(lambda v: 255 - v)
            img.paste(ink, (280 * j, 0))
        pictures.append((f"pair-{i}", img))
    paths = []
    for name, img in pictures:
        img.save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths
