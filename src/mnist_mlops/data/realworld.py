"""Stage `realworld`: a second test set that looks like the pictures people actually send.

MNIST's test digits are clean, centred, white on black. What `predict` and the drawing page
get are photos of paper: grey or tinted, textured, unevenly lit, the digit anywhere, pens
thin and thick. This stage renders held-out MNIST *test* digits that way (seeded, so the
set is the same on every machine), adds the user's own labelled pictures from
`paths.user_digits` (`<digit>/<any name>.png|jpg|...`), and runs every picture through the
same preprocessing as `predict` (digits.py). evaluate scores each model on it, and the
promotion gate refuses a challenger that is worse there than the champion.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from mnist_mlops.core.config import Params, RealworldParams, load_params
from mnist_mlops.core.mnist import NUM_CLASSES
from mnist_mlops.core.runtime import UserError, run_main
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.data.digits import IMAGE_SUFFIXES, ImageInputError, prepare
from mnist_mlops.data.realworld_set import PREPARED, RealworldSet, concat, save

log = logging.getLogger(__name__)
GENERATED = "generated"


def photograph(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 28x28 MNIST digit (white on black) as a photo of it written on paper."""
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
    return out


def scan(digit: np.ndarray) -> Image.Image:
    """One 28x28 MNIST digit as a tight, thick-stroked, low-resolution scan: thickened (a 5x5
    max filter), cropped to its ink, shrunk to 8x8, enlarged to 64x64 bilinearly, dark on
    white. Its strokes are a third of the picture wide and touch the edges."""
    thick = ndimage.maximum_filter(digit, 5)
    rows, cols = np.nonzero(thick)
    crop = Image.fromarray(thick[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
    big = crop.resize((8, 8), Image.BILINEAR).resize((64, 64), Image.BILINEAR)
    return Image.fromarray(255 - np.asarray(big))


def plain_resize(img: Image.Image, dark_ink: bool) -> np.ndarray:
    """The baseline preprocessing is measured against: the picture as gray, ink made bright
    (told which way round it is, not guessed), resized to 20x20 and padded to 28x28."""
    gray = np.asarray(img.convert("L"))
    small = Image.fromarray(255 - gray if dark_ink else gray).resize((20, 20), Image.BILINEAR)
    return np.pad(np.asarray(small), 4)


def generate(x_test: np.ndarray, y_test: np.ndarray, rp: RealworldParams, out: Path
             ) -> list[tuple[Path, int]]:
    """`rp.count` test digits, the same number of each class, as photos in
    `out/<digit>/<index>.png`; returns (file, digit) pairs."""
    rng = np.random.default_rng(rp.seed)
    per_class = rp.count // NUM_CLASSES
    files = []
    for d in range(NUM_CLASSES):
        pool = np.flatnonzero(y_test == d)
        if len(pool) < per_class:
            raise UserError(f"realworld.count {rp.count} needs {per_class} test images of "
                            f"digit {d}; the dataset has {len(pool)}: lower realworld.count")
        chosen = rng.choice(pool, per_class, replace=False)
        (out / str(d)).mkdir(parents=True, exist_ok=True)
        for i in sorted(chosen.tolist()):
            path = out / str(d) / f"{i:05d}.png"
            photograph(x_test[i], rng).save(path)
            files.append((path, d))
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


def prepare_set(files: list[tuple[Path, int]], source: str, root: Path) -> RealworldSet:
    """Preprocess every picture as `predict` does; a bad file is an error naming it."""
    xs, found = [], []
    for path, _ in files:
        try:
            arr = prepare(path)
        except ImageInputError as exc:
            raise UserError(f"{exc}; fix or remove the file") from None
        found.append(arr is not None)
        xs.append(arr if arr is not None else np.zeros((28, 28), np.uint8))
    n = len(files)
    return RealworldSet(
        x=np.stack(xs) if xs else np.zeros((0, 28, 28), np.uint8),
        y=np.array([d for _, d in files], dtype=np.int64), found=np.array(found, dtype=bool),
        source=np.array([source] * n), names=np.array([str(p.relative_to(root)) for p, _ in files]))


def build(params: Params) -> RealworldSet:
    paths, rp = params.paths, params.realworld
    out = paths.realworld
    data = load_dataset(paths.dataset)
    generated = generate(data["x_test"], data["y_test"], rp, out / GENERATED)
    sets = [prepare_set(generated, GENERATED, out)]
    user = paths.user_digits
    if user.is_dir():
        mine = labelled_files(user)
        if mine:
            sets.append(prepare_set(mine, "user", user))
    rs = concat(sets)
    save(rs, out / PREPARED)
    n_user = int((rs.source == "user").sum())
    log.info("real-world set: %d generated photos in %s, %d of your pictures from %s; "
             "preprocessing found a digit in %d of %d", len(generated), out / GENERATED,
             n_user, user, int(rs.found.sum()), len(rs))
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
