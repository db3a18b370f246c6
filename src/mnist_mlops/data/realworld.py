"""Stage `realworld`: a second test set that looks like the pictures people actually send.

MNIST's test digits are clean, centred, white on black. What `predict` and the drawing page
get are photos of paper: grey or tinted, textured, unevenly lit, the digit anywhere, pens
thin and thick. This stage renders held-out MNIST *test* digits that way, one kind of
picture at a time (`realworld.kinds`: photos, tight scans, a marker filling the frame, a
thin pen, slanted or rotated digits, the drawing page's canvas; each seeded, so the set is
the same on every machine), adds the user's own labelled pictures from `paths.user_digits`
(`<digit>/<any name>.png|jpg|...`, kind `user`), and runs every picture through the same
preprocessing as `predict` (digits.py), keeping a plain resize of it beside as the
baseline. evaluate scores each model on it, kind by kind, and the promotion gate refuses a
challenger that is worse on any kind than the champion: an average hides a kind it lost.
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from mnist_mlops.core.config import Params, RealworldParams, load_params
from mnist_mlops.core.mnist import NUM_CLASSES
from mnist_mlops.core.runtime import UserError, run_main
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.data.digits import (
    IMAGE_SUFFIXES,
    ImageInputError,
    dark_ink,
    luminance,
    open_image,
    to_mnist,
)
from mnist_mlops.data.realworld_set import PREPARED, USER, RealworldSet, concat, save

log = logging.getLogger(__name__)
CANVAS = 280        # the drawing page's canvas (serving/web/index.html): 280x280, white,
PAGE_PEN = 18       # ... black strokes 18 px wide with round ends and joins
MAX_TILT = 15.0     # degrees a `slant` picture is rotated or slanted by, at most
THINNING_SCALE = 3  # centrelines are found on the digit enlarged this much (28 -> 84)


class Picture(NamedTuple):
    """A rendered picture, and which way round its ink is (what the plain resize is told)."""

    image: Image.Image
    dark_ink: bool


class Labelled(NamedTuple):
    """A picture file of the set: its digit, its kind and which way round its ink is (None
    for the user's pictures: nobody said, so the plain resize gets the same guess as the
    preprocessing, digits.dark_ink)."""

    path: Path
    digit: int
    kind: str
    dark_ink: bool | None = None


def photograph(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 28x28 MNIST digit (white on black) as a photo of it written on paper."""
    return photo(digit, rng).image


def photo(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Kind `photo`: `photograph`, and whether its ink is dark (all but chalk on a board)."""
    height = rng.uniform(34, 90)                       # digit height in the photo, pixels
    side = round(28 * height / 20)                     # MNIST digits fill 20 of 28 pixels
    stroke = Image.fromarray(digit).resize((side, side), Image.BICUBIC)
    pen = rng.choice(["thin", "plain", "thick", "marker"], p=[0.2, 0.4, 0.25, 0.15])
    if pen == "thin":
        stroke = stroke.filter(ImageFilter.MinFilter(3))
    elif pen != "plain":
        stroke = stroke.filter(ImageFilter.MaxFilter(3 if pen == "thick" else 5))
    alpha = np.asarray(stroke, dtype=np.float64) / 255.0

    h, w = (round(side * rng.uniform(1.2, 2.4)) for _ in range(2))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    a = np.zeros((h, w))
    a[top:top + side, left:left + side] = alpha

    board = rng.random() < 0.1                         # chalk on a dark board
    if board:
        paper, ink = rng.uniform(0.08, 0.35), rng.uniform(0.7, 0.95)
    else:
        paper = rng.uniform(0.45, 1.0)                 # grey to white paper
        ink = paper - rng.uniform(0.4, 0.85) * paper   # pencil to ink
    img = paper * (1 - a) + ink * a

    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)            # uneven light: a ramp and a vignette
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    vignette = ((yy - 0.5 * h / max(h, w)) ** 2 + (xx - 0.5 * w / max(h, w)) ** 2)
    light = 1 - rng.uniform(0, 0.45) * ramp - rng.uniform(0, 0.5) * vignette
    grain = Image.fromarray((rng.normal(0, 1, (h, w)) * 40 + 128).clip(0, 255).astype(np.uint8))
    grain_arr = (np.asarray(grain.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))),
                            dtype=np.float64) - 128) / 40
    img = img * light + rng.uniform(0, 0.05) * grain_arr + rng.normal(0, 0.01, (h, w))
    out = Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    if rng.random() < 0.25:                            # tinted paper, photographed in colour
        tint = rng.uniform(0.8, 1.0, 3)
        rgb = np.asarray(out.convert("RGB"), dtype=np.float64) * tint
        out = Image.fromarray(np.round(rgb).astype(np.uint8))
    return Picture(out, not board)


def scan(digit: np.ndarray) -> Image.Image:
    """One 28x28 MNIST digit as a tight, thick-stroked, low-resolution scan: thickened (a 5x5
    max filter), cropped to its ink, shrunk to 8x8, enlarged to 64x64 bilinearly, dark on
    white. Its strokes are a third of the picture wide and touch the edges."""
    thick = ndimage.maximum_filter(digit, 5)
    rows, cols = np.nonzero(thick)
    crop = Image.fromarray(thick[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
    big = crop.resize((8, 8), Image.BILINEAR).resize((64, 64), Image.BILINEAR)
    return Image.fromarray(255 - np.asarray(big))


def thinned(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: `mask`'s strokes worn down to lines one pixel wide, keeping
    their ends and how they connect."""
    img = np.pad(mask, 1).astype(np.uint8)      # the pad stays 0: rolling wraps nothing in
    around = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    while True:
        removed = False
        for first in (True, False):
            p = [np.roll(img, (-dy, -dx), (0, 1)) for dy, dx in around]  # P2..P9 clockwise
            count = sum(p)
            crossings = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
            n, e, s, w = p[0], p[2], p[4], p[6]
            sides = (n * e * s == 0) & (e * s * w == 0) if first else \
                (n * e * w == 0) & (n * s * w == 0)
            gone = (img == 1) & (count >= 2) & (count <= 6) & (crossings == 1) & sides
            if gone.any():
                img[gone], removed = 0, True
        if not removed:
            return img[1:-1, 1:-1].astype(bool)


def centreline(digit: np.ndarray, side: int) -> np.ndarray:
    """The MNIST digit's strokes as a connected line one pixel wide, drawn on a `side` x
    `side` frame (the digit's 28x28 frame enlarged): what a pen of any width then draws
    along, as a person's hand would."""
    scale = THINNING_SCALE * 28
    big = np.asarray(Image.fromarray(digit).resize((scale, scale), Image.BICUBIC)) >= 128
    bone = thinned(big)
    bone = bone if bone.any() else big        # a blob Zhang-Suen wears away entirely
    r, c = np.nonzero(bone)
    starts, ends = [np.stack([r, c], 1)], [np.stack([r, c], 1)]       # every pixel: a dot
    on = np.pad(bone, 1)                      # on[r + 1, c + 1]: bone[r, c], False outside
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):                  # each neighbour pair once
        nr, nc = r + dr, c + dc
        near = on[nr + 1, nc + 1]
        if dr and dc:       # a diagonal step only where no corner joins them (no little loops)
            near &= ~on[r + 1, nc + 1] & ~on[nr + 1, c + 1]
        starts.append(np.stack([r[near], c[near]], 1))
        ends.append(np.stack([nr[near], nc[near]], 1))
    a, b = np.concatenate(starts), np.concatenate(ends)
    f = side / scale
    steps = np.linspace(0, 1, int(np.ceil(2 * f * np.sqrt(2))) + 2)[:, None, None]  # <= 0.5 px
    points = np.round((a + steps * (b - a) + 0.5) * f - 0.5).astype(int).reshape(-1, 2)
    points = np.clip(points, 0, side - 1)
    line = np.zeros((side, side), bool)
    line[points[:, 0], points[:, 1]] = True
    return line


def pen(line: np.ndarray, width: float) -> np.ndarray:
    """Ink (0-1) of a round pen `width` pixels wide drawn along `line`, anti-aliased at the
    edge of the stroke as a browser's canvas draws it."""
    if not line.any():
        return np.zeros(line.shape)
    return np.clip(width / 2 + 0.5 - ndimage.distance_transform_edt(~line), 0.0, 1.0)


def on_paper(ink: np.ndarray, paper: float, shade: float) -> Image.Image:
    """Ink coverage as a gray picture: paper of brightness `paper`, ink of brightness
    `shade` (both 0-1)."""
    return Image.fromarray(np.round((paper * (1 - ink) + shade * ink) * 255).astype(np.uint8))


def cropped(ink: np.ndarray, margin: int) -> np.ndarray:
    """The part of `ink` that holds the digit, with `margin` blank pixels around it."""
    rows, cols = np.nonzero(ink > 0)
    return np.pad(ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1], margin)


def marker(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Kind `marker`: a thick felt pen (strokes 0.15-0.3 of the digit's height), the picture
    cropped to the digit (a margin of 0-6% of its height), dark on light paper, 60-160
    pixels high."""
    side = int(rng.integers(84, 225))                 # the 28-frame: the digit is 20/28 of it
    height = side * 20 / 28
    ink = pen(centreline(digit, side), height * rng.uniform(0.15, 0.3))
    ink = cropped(ink, round(height * rng.uniform(0.0, 0.06)))
    return Picture(on_paper(ink, rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.25)), True)


def thin_pen(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Kind `thin`: a fine pen or pencil line (1-2.5 pixels) on a large picture, the digit
    85-200 pixels high somewhere on white-ish paper with a little sensor noise."""
    side = int(rng.integers(120, 281))
    ink = pen(centreline(digit, side), rng.uniform(1.0, 2.5))
    h, w = (side + int(rng.integers(0, side // 3)) for _ in range(2))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    page = np.zeros((h, w))
    page[top:top + side, left:left + side] = ink
    gray = np.asarray(on_paper(page, rng.uniform(0.8, 1.0), rng.uniform(0.05, 0.45)),
                      dtype=np.float64) + rng.normal(0, 2.5, (h, w))
    return Picture(Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8)), True)


def slant(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Kind `slant`: the digit rotated, or slanted like italics, by up to MAX_TILT degrees
    either way (MNIST's digits are upright: the preprocessing does not straighten them),
    dark on light paper with room around it, 50-130 pixels."""
    side = int(rng.integers(50, 131))
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.BICUBIC),
                     dtype=np.float64) / 255.0
    angle = np.radians(rng.uniform(-MAX_TILT, MAX_TILT))
    if rng.random() < 0.5:                             # rotated
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    else:                                              # slanted: rows shift sideways
        turn = np.array([[1.0, 0.0], [np.tan(angle), 1.0]])
    big = np.pad(big, side // 4)
    middle = (np.array(big.shape) - 1) / 2
    ink = np.clip(ndimage.affine_transform(big, turn, offset=middle - turn @ middle, order=1),
                  0.0, 1.0)
    return Picture(on_paper(ink, rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.35)), True)


def drawn(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Kind `drawn`: what the drawing page sends (serving/web/index.html): its 280x280
    canvas, white, the digit in black strokes 18 pixels wide with round ends and joins,
    100-230 pixels high anywhere on it, as an opaque RGBA PNG."""
    height = rng.uniform(100, 230)
    line = centreline(digit, round(height * 28 / 20))
    rows, cols = np.nonzero(line)
    line = line[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    room = PAGE_PEN // 2 + 1                            # the pen's half width stays inside
    h, w = (min(n, CANVAS - 2 * room) for n in line.shape)
    top, left = (int(rng.integers(room, CANVAS - room - n + 1)) for n in (h, w))
    canvas = np.zeros((CANVAS, CANVAS), bool)
    canvas[top:top + h, left:left + w] = line[:h, :w]
    return Picture(on_paper(pen(canvas, PAGE_PEN), 1.0, 0.0).convert("RGBA"), True)


RENDERERS: dict[str, Callable[[np.ndarray, np.random.Generator], Picture]] = {
    "photo": photo,
    "scan": lambda digit, rng: Picture(scan(digit), True),
    "marker": marker,
    "thin": thin_pen,
    "slant": slant,
    "drawn": drawn,
}


def plain_resize(img: Image.Image, dark_ink: bool) -> np.ndarray:
    """The baseline preprocessing is measured against: the picture as gray, ink made bright
    (told which way round it is, not guessed), resized to 20x20 and padded to 28x28."""
    gray = np.round(luminance(img) * 255).astype(np.uint8)    # transparency: on white
    small = Image.fromarray(255 - gray if dark_ink else gray).resize((20, 20), Image.BILINEAR)
    return np.pad(np.asarray(small), 4)


def kind_rng(rp: RealworldParams, kind: str) -> np.random.Generator:
    """A kind's own seeded stream. `photo` draws from `realworld.seed` alone, as when photos
    were the only kind (the same seed and count give the same photos); every other kind
    from the seed and its name, so that listing or dropping a kind changes no other's."""
    if kind == "photo":
        return np.random.default_rng(rp.seed)
    return np.random.default_rng([rp.seed, zlib.crc32(kind.encode())])


def generate(x_test: np.ndarray, y_test: np.ndarray, rp: RealworldParams, out: Path
             ) -> list[Labelled]:
    """For each generated kind of `rp.kinds`, `rp.count` test digits, the same number of
    each class, rendered as that kind in `out/<kind>/<digit>/<index>.png`."""
    per_class = rp.count // NUM_CLASSES
    pools = [np.flatnonzero(y_test == d) for d in range(NUM_CLASSES)]
    for d, pool in enumerate(pools):
        if len(pool) < per_class:
            raise UserError(f"realworld.count {rp.count} needs {per_class} test images of "
                            f"digit {d}; the dataset has {len(pool)}: lower realworld.count")
    files = []
    for kind in (k for k in rp.kinds if k in RENDERERS):
        rng, t0 = kind_rng(rp, kind), time.perf_counter()
        for d, pool in enumerate(pools):
            (out / kind / str(d)).mkdir(parents=True, exist_ok=True)
            for i in sorted(rng.choice(pool, per_class, replace=False).tolist()):
                picture = RENDERERS[kind](x_test[i], rng)
                path = out / kind / str(d) / f"{i:05d}.png"
                picture.image.save(path)
                files.append(Labelled(path, d, kind, picture.dark_ink))
        log.info("%s: %d pictures rendered in %.1f s", kind, rp.count,
                 time.perf_counter() - t0)
    return files


def labelled_files(folder: Path) -> list[tuple[Path, int]]:
    """(file, digit) for every picture in `folder/<digit>/`; anything else is ignored,
    except a picture outside a digit folder, which is a mistake worth stopping for."""
    files = []
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith((".", "__")) for part in path.relative_to(folder).parts)
        if hidden or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue      # also macOS's ._name and __MACOSX/ companions
        label = path.relative_to(folder).parts[0]
        if len(path.relative_to(folder).parts) != 2 or label not in map(str, range(10)):
            raise UserError(f"{path}: labelled pictures go in {folder}/<digit>/ (0-9), e.g. "
                            f"{folder}/7/{path.name}; move or remove it")
        files.append((path, int(label)))
    return files


def prepare_set(files: list[Labelled], root: Path) -> RealworldSet:
    """Preprocess every picture as `predict` does (digits.prepare: the file opened, then
    `to_mnist`), and resize it plainly beside; a bad file is an error naming it."""
    xs, found, plain = [], [], []
    for f in files:
        try:
            img = open_image(f.path)
        except ImageInputError as exc:
            raise UserError(f"{exc}; fix or remove the file") from None
        arr = to_mnist(img)
        found.append(arr is not None)
        xs.append(arr if arr is not None else np.zeros((28, 28), np.uint8))
        plain.append(plain_resize(img, dark_ink(img) if f.dark_ink is None else f.dark_ink))
    empty = np.zeros((0, 28, 28), np.uint8)
    return RealworldSet(
        x=np.stack(xs) if xs else empty, y=np.array([f.digit for f in files], dtype=np.int64),
        found=np.array(found, dtype=bool), kind=np.array([f.kind for f in files], dtype=str),
        names=np.array([str(f.path.relative_to(root)) for f in files], dtype=str),
        plain=np.stack(plain) if plain else empty)


def user_files(params: Params) -> list[Labelled]:
    """The user's labelled pictures, where `realworld.kinds` lists `user` (a log line says
    when it leaves pictures out)."""
    folder = params.paths.user_digits
    mine = labelled_files(folder) if folder.is_dir() else []
    if USER in params.realworld.kinds:
        return [Labelled(path, d, USER) for path, d in mine]
    if mine:
        log.info("realworld.kinds does not list %s: the %d pictures in %s are left out",
                 USER, len(mine), folder)
    return []


def build(params: Params) -> RealworldSet:
    paths, rp = params.paths, params.realworld
    out = paths.realworld
    data = load_dataset(paths.dataset)
    mine = user_files(params)
    generated = generate(data["x_test"], data["y_test"], rp, out)
    if not generated and not mine:
        raise UserError(f"realworld.kinds lists only {USER} and {paths.user_digits} holds no "
                        "pictures: the real-world set would be empty; list a generated kind")
    rs = concat([prepare_set(generated, out), prepare_set(mine, paths.user_digits)])
    save(rs, out / PREPARED)
    counts = ", ".join(f"{k} {int((rs.kind == k).sum())}"
                       + (f" (yours, in {paths.user_digits})" if k == USER else "")
                       for k in rp.kinds)
    log.info("real-world set in %s: %s pictures; preprocessing found a digit in %d of %d",
             out, counts, int(rs.found.sum()), len(rs))
    return rs


def main() -> None:
    params = load_params()
    out, paths = params.paths.realworld.resolve(), params.paths
    for keep in (paths.user_digits, paths.dataset, paths.raw):
        if keep.resolve() == out or keep.resolve().is_relative_to(out):
            raise UserError(f"paths.realworld ({paths.realworld}) holds {keep}: it is rebuilt "
                            "from scratch, so point it at a folder of its own")
    shutil.rmtree(out, ignore_errors=True)   # no stale pictures
    build(params)


if __name__ == "__main__":
    run_main(main)
