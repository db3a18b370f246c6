"""The real-world set: reproducible generated photos, the user's labelled folder, clear
errors for a misplaced or broken picture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlops.core.config import RealworldParams
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data import realworld, realworld_set

from .conftest import synthetic_digits
from .drawing import draw_digit


def digest(files: list[tuple[Path, int]]) -> str:
    h = hashlib.sha256()
    for f, d in files:
        h.update(f.name.encode() + bytes([d]) + f.read_bytes())
    return h.hexdigest()


def test_generated_set_is_reproducible_balanced_and_varied(tmp_path: Path) -> None:
    x, y = synthetic_digits(200, seed=3)
    rp = RealworldParams(count=50, seed=5)
    a = realworld.generate(x, y, rp, tmp_path / "a")
    b = realworld.generate(x, y, rp, tmp_path / "b")
    assert digest(a) == digest(b)                                   # same seed, same bytes
    other = realworld.generate(x, y, RealworldParams(count=50, seed=6), tmp_path / "c")
    assert digest(a) != digest(other)
    assert np.bincount([d for _, d in a], minlength=10).tolist() == [5] * 10
    photos = [np.asarray(Image.open(f).convert("L"), dtype=float) for f, _ in a]
    papers = [np.median(np.concatenate([p[0], p[-1]])) for p in photos]
    assert min(papers) < 0.5 * 255 < max(papers)        # grey and dark boards and white paper
    assert len({p.shape for p in photos}) > 10                         # sizes and placement


def test_too_few_test_images_for_the_count_is_a_clear_error(tmp_path: Path) -> None:
    x, y = synthetic_digits(30, seed=3)
    with pytest.raises(UserError, match="lower realworld.count"):
        realworld.generate(x, y, RealworldParams(count=100), tmp_path)


def test_user_folder_is_read_by_digit_folder(tmp_path: Path) -> None:
    for d in (3, 7):
        (tmp_path / str(d)).mkdir()
        draw_digit(d).save(tmp_path / str(d) / f"mine_{d}.png")
    (tmp_path / "README.md").write_text("ignored")
    Image.new("L", (50, 50), 255).save(tmp_path / "7" / "blank.png")
    files = realworld.labelled_files(tmp_path)
    assert [(f.name, d) for f, d in files] == [("mine_3.png", 3), ("blank.png", 7),
                                               ("mine_7.png", 7)]
    rs = realworld.prepare_set(files, "user", tmp_path)
    assert rs.found.tolist() == [True, False, True]       # the blank one: no digit found
    pred = realworld_set.predictions(lambda imgs: np.eye(10)[[3] * len(imgs)], rs)
    assert pred.tolist() == [3, -1, 3]                     # no digit counts as wrong
    assert realworld_set.accuracy(rs, pred) == {"realworld_accuracy": pytest.approx(1 / 3),
                                            "user_digits_accuracy": pytest.approx(1 / 3)}


def test_misplaced_or_broken_pictures_stop_with_their_name(tmp_path: Path) -> None:
    draw_digit(1).save(tmp_path / "loose.png")
    with pytest.raises(UserError, match=r"loose.png: labelled pictures go in .*/<digit>/"):
        realworld.labelled_files(tmp_path)
    (tmp_path / "loose.png").unlink()
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UserError, match="broken.png.*fix or remove the file"):
        realworld.prepare_set(realworld.labelled_files(tmp_path), "user", tmp_path)


def test_prepared_set_round_trips(tmp_path: Path) -> None:
    x, y = synthetic_digits(100, seed=4)
    files = realworld.generate(x, y, RealworldParams(count=20), tmp_path / "g")
    rs = realworld.prepare_set(files, "generated", tmp_path)
    realworld_set.save(rs, tmp_path / "p.npz")
    back = realworld_set.load(tmp_path / "p.npz")
    assert all(np.array_equal(getattr(rs, f), getattr(back, f))
               for f in ("x", "y", "found", "source", "names"))
    with pytest.raises(UserError, match="dvc repro realworld"):
        realworld_set.load(tmp_path / "missing.npz")
