"""The real-world set: reproducible generated pictures of every kind, the user's labelled
folder, clear errors for a misplaced or broken picture, scores per kind."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlops.core.config import RealworldParams
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data import realworld, realworld_set
from mnist_mlops.data.digits import to_mnist
from mnist_mlops.data.realworld import Labelled

from .conftest import synthetic_digits
from .drawing import draw_digit

GENERATED = tuple(realworld.RENDERERS)


def mnist_like() -> np.ndarray:
    """Ten drawn digits, 0-9, made MNIST-like (white on black, 28x28): strokes to render."""
    return np.stack([to_mnist(draw_digit(d)) for d in range(10)])


def digest(files: list[Labelled]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.kind.encode() + f.path.name.encode() + bytes([f.digit]) + f.path.read_bytes())
    return h.hexdigest()


def test_generated_set_is_reproducible_balanced_and_varied(tmp_path: Path) -> None:
    x, y = synthetic_digits(200, seed=3)
    rp = RealworldParams(count=50, seed=5, kinds=("photo",))
    a = realworld.generate(x, y, rp, tmp_path / "a")
    b = realworld.generate(x, y, rp, tmp_path / "b")
    assert digest(a) == digest(b)                                   # same seed, same bytes
    other = realworld.generate(x, y, RealworldParams(count=50, seed=6, kinds=("photo",)),
                               tmp_path / "c")
    assert digest(a) != digest(other)
    assert np.bincount([f.digit for f in a], minlength=10).tolist() == [5] * 10
    photos = [np.asarray(Image.open(f.path).convert("L"), dtype=float) for f in a]
    papers = [np.median(np.concatenate([p[0], p[-1]])) for p in photos]
    assert min(papers) < 0.5 * 255 < max(papers)        # grey and dark boards and white paper
    assert len({p.shape for p in photos}) > 10                         # sizes and placement


@pytest.mark.parametrize("kind", GENERATED)
def test_each_kind_renders_seeded_and_balanced(kind: str) -> None:
    """Every generated kind: the same bytes from the same seed, a digit's worth of ink in a
    picture of the kind's size, which way round the ink is."""
    x = mnist_like()

    def pictures(seed: int) -> list[realworld.Picture]:
        rng = realworld.kind_rng(RealworldParams(seed=seed), kind)
        return [realworld.RENDERERS[kind](d, rng) for d in x]

    a, b = pictures(4), pictures(4)
    assert [p.image.tobytes() for p in a] == [p.image.tobytes() for p in b]
    if kind != "scan":                      # the scan is the digit's alone: no randomness
        assert [p.image.tobytes() for p in a] != [p.image.tobytes() for p in pictures(5)]
    for p in a:
        gray = np.asarray(p.image.convert("L"), dtype=float)
        assert gray.ndim == 2 and max(gray.shape) >= 40 and np.ptp(gray) > 50
        if kind == "drawn":                 # what the drawing page sends: its canvas
            assert p.image.mode == "RGBA" and p.image.size == (280, 280)
            assert gray[0].min() == 255 and gray.min() == 0    # white, black strokes
        if kind == "scan":
            assert p.image.size == (64, 64)
    assert all(p.dark_ink for p in a) or kind == "photo"        # chalk on a board: light


def test_kinds_are_balanced_and_independent_of_each_other(tmp_path: Path) -> None:
    """`count` pictures of each generated kind, the same number of each digit, in
    out/<kind>/<digit>/; listing another kind changes no kind's pictures; `user` is not
    rendered."""
    x, y = synthetic_digits(100, seed=2)
    rp = RealworldParams(count=10, seed=3, kinds=("drawn", "user", *GENERATED[:-1]))
    files = realworld.generate(x, y, rp, tmp_path / "all")
    assert [f.kind for f in files] == [k for k in rp.kinds if k != "user" for _ in range(10)]
    for kind in GENERATED:
        mine = [f for f in files if f.kind == kind]
        assert sorted(f.digit for f in mine) == list(range(10))
        assert all(f.path.parent == tmp_path / "all" / kind / str(f.digit) for f in mine)
    alone = realworld.generate(x, y, RealworldParams(count=10, seed=3, kinds=("slant",)),
                               tmp_path / "one")
    assert digest(alone) == digest([f for f in files if f.kind == "slant"])


def test_drawn_strokes_are_the_drawing_pages_pen() -> None:
    """The canvas's pen: 18 pixels wide (the widest run of ink across a stroke), round."""
    line = np.zeros((280, 280), bool)
    line[140, 60:220] = True                                   # one horizontal stroke
    ink = realworld.pen(line, realworld.PAGE_PEN)
    assert ink[:, 140].sum() == 18 and (ink[:, 40] == 0).all()  # 18 px across, anti-aliased
    assert (ink[140, 51:60] >= 0.5).all() and ink[140, 50] < 0.5   # a round end, 9 px out
    centre = realworld.centreline(mnist_like()[8], 140)
    assert centre.shape == (140, 140) and 0 < centre.mean() < 0.05   # a line, not an area


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
    rs = realworld.prepare_set([Labelled(f, d, "user") for f, d in files], tmp_path)
    assert rs.found.tolist() == [True, False, True]       # the blank one: no digit found
    assert rs.kind.tolist() == ["user"] * 3 and rs.names.tolist()[0] == "3/mine_3.png"
    pred = realworld_set.predictions(lambda imgs: np.eye(10)[[3] * len(imgs)], rs)
    assert pred.tolist() == [3, -1, 3]                     # no digit counts as wrong
    assert realworld_set.accuracy(rs, pred) == {"realworld_accuracy": pytest.approx(1 / 3),
                                                "realworld_accuracy/user": pytest.approx(1 / 3),
                                                "user_digits_accuracy": pytest.approx(1 / 3)}


def test_the_plain_resize_of_a_users_picture_guesses_the_ink_as_preprocessing_does(
        tmp_path: Path) -> None:
    """Nobody says which way round a user's ink is: the baseline gets the preprocessing's
    guess, so a light-on-dark picture and a dark-on-light one both come out bright on dark."""
    for name, dark in (("dark", True), ("light", False)):
        (tmp_path / "4").mkdir(exist_ok=True)
        draw_digit(4, dark_on_light=dark).save(tmp_path / "4" / f"{name}.png")
    files = [Labelled(f, d, "user") for f, d in realworld.labelled_files(tmp_path)]
    rs = realworld.prepare_set(files, tmp_path)
    assert rs.plain is not None and rs.plain.shape == (2, 28, 28) and rs.plain.dtype == np.uint8
    for plain in rs.plain:
        assert plain[:4].max() == 0 and plain[4:24, 4:24].max() > 200  # the 4-pixel pad: dark
        assert plain[4:24, 4:24].mean() < 100                          # ink on a dark ground
    np.testing.assert_array_equal(rs.plain[0], rs.plain[1])


def test_scores_per_kind_after_preprocessing_and_plain_resize() -> None:
    """Accuracy over all pictures and per kind, the plain resize's per kind, the table
    line evaluate logs and the answers it writes."""
    y = np.array([1, 2, 3, 4, 5, 6])
    rs = realworld_set.RealworldSet(
        x=np.zeros((6, 28, 28), np.uint8), y=y, found=np.array([True] * 5 + [False]),
        kind=np.array(["photo", "photo", "scan", "scan", "user", "user"]),
        names=np.array([f"f{i}.png" for i in range(6)]), plain=np.zeros((6, 28, 28), np.uint8))
    pred, plain = np.array([1, 2, 3, 0, 5, -1]), np.array([1, 0, 0, 0, 5, 6])
    got = realworld_set.accuracy(rs, pred, plain)
    assert got == {"realworld_accuracy": pytest.approx(4 / 6),
                   "realworld_accuracy/photo": 1.0, "realworld_accuracy/scan": 0.5,
                   "realworld_accuracy/user": 0.5, "realworld_plain_accuracy/photo": 0.5,
                   "realworld_plain_accuracy/scan": 0.0, "realworld_plain_accuracy/user": 1.0,
                   "user_digits_accuracy": 0.5}
    assert realworld_set.table_line(got) == ("photo 1.000 (plain 0.500), scan 0.500 (plain "
                                             "0.000), user 0.500 (plain 1.000)")
    csv = realworld_set.answers_csv(rs, pred, plain).splitlines()
    assert csv[0] == "file,kind,actual,predicted,plain_predicted"
    assert csv[-1] == "f5.png,user,6,-1,6"


def test_a_set_of_only_user_pictures_needs_some(tmp_path: Path) -> None:
    """`kinds: [user]` with no pictures would score nothing: the stage says so."""
    from mnist_mlops.core.config import load_params

    from .conftest import ROOT

    (tmp_path / "data" / "interim").mkdir(parents=True)
    x, y = synthetic_digits(40, seed=1)
    np.savez(tmp_path / "data" / "interim" / "mnist.npz", x_train=x, y_train=y, x_test=x,
             y_test=y)
    params = load_params(ROOT / "params.yaml").model_copy(update={
        "realworld": RealworldParams(count=10, kinds=("user",))})
    params = params.model_copy(update={"paths": params.paths.model_copy(update={
        "dataset": tmp_path / "data" / "interim" / "mnist.npz",
        "realworld": tmp_path / "rw", "user_digits": tmp_path / "mine"})})
    with pytest.raises(UserError, match="lists only user .* holds no pictures"):
        realworld.build(params)
    (tmp_path / "mine" / "5").mkdir(parents=True)
    draw_digit(5).save(tmp_path / "mine" / "5" / "five.png")
    rs = realworld.build(params)
    assert rs.kind.tolist() == ["user"] and realworld_set.load(
        tmp_path / "rw" / realworld_set.PREPARED).names.tolist() == ["5/five.png"]


def test_misplaced_or_broken_pictures_stop_with_their_name(tmp_path: Path) -> None:
    draw_digit(1).save(tmp_path / "loose.png")
    with pytest.raises(UserError, match=r"loose.png: labelled pictures go in .*/<digit>/"):
        realworld.labelled_files(tmp_path)
    (tmp_path / "loose.png").unlink()
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UserError, match="broken.png.*fix or remove the file"):
        realworld.prepare_set([Labelled(f, d, "user") for f, d in
                               realworld.labelled_files(tmp_path)], tmp_path)


def test_prepared_set_round_trips(tmp_path: Path) -> None:
    x, y = synthetic_digits(100, seed=4)
    files = realworld.generate(x, y, RealworldParams(count=10, kinds=("photo", "scan")),
                               tmp_path / "g")
    rs = realworld.prepare_set(files, tmp_path / "g")
    assert rs.kinds() == ["photo", "scan"] and rs.names[0].startswith("photo/")
    realworld_set.save(rs, tmp_path / "p.npz")
    back = realworld_set.load(tmp_path / "p.npz")
    assert all(np.array_equal(getattr(rs, f), getattr(back, f)) for f in realworld_set.FIELDS)
    with pytest.raises(UserError, match="dvc repro realworld"):
        realworld_set.load(tmp_path / "missing.npz")


def test_a_set_prepared_before_kinds_is_read_as_photos_and_yours(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A prepared.npz from before kinds (`source`: generated or user, no baseline) still
    scores: its generated pictures are the photos, and a log line says so once."""
    np.savez_compressed(tmp_path / "old.npz", x=np.zeros((3, 28, 28), np.uint8),
                        y=np.array([1, 2, 3]), found=np.ones(3, bool),
                        source=np.array(["generated", "generated", "user"]),
                        names=np.array(["generated/1/a.png", "generated/2/b.png", "3/c.png"]))
    with caplog.at_level(logging.WARNING):
        old = realworld_set.load(tmp_path / "old.npz")
    assert old.kind.tolist() == ["photo", "photo", "user"] and old.plain is None
    assert [r.message for r in caplog.records if "before the real-world set had kinds"
            in r.message] and len(caplog.records) == 1
    pred = np.array([1, 0, 3])
    assert realworld_set.plain_predictions(lambda imgs: imgs, old) is None
    assert realworld_set.accuracy(old, pred) == {
        "realworld_accuracy": pytest.approx(2 / 3), "realworld_accuracy/photo": 0.5,
        "realworld_accuracy/user": 1.0, "user_digits_accuracy": 1.0}
    assert realworld_set.answers_csv(old, pred, None).splitlines()[1] == \
        "generated/1/a.png,photo,1,1,"


@pytest.mark.slow
@pytest.mark.parametrize("kind", GENERATED)
def test_preprocessing_matches_or_beats_a_plain_resize_on_each_kind(
        kind: str, model_file: Path, mnist: dict[str, np.ndarray], tmp_path: Path) -> None:
    """A small convnet answers 200 held-out digits of the kind, as the stage prepares
    them: after the preprocessing it gets at least as many right as after the plain resize
    (told which way round the ink is)."""
    from mnist_mlops.inference.predictor import Predictor

    rp = RealworldParams(count=200, seed=7, kinds=(kind,))
    rs = realworld.prepare_set(realworld.generate(mnist["x_test"], mnist["y_test"], rp,
                                                  tmp_path), tmp_path)
    proba = Predictor(str(model_file)).predict_proba
    scores = realworld_set.accuracy(rs, realworld_set.predictions(proba, rs),
                                    realworld_set.plain_predictions(proba, rs))
    ours, plain = realworld_set.kind_table(scores)[kind]
    assert plain is not None and ours >= plain, realworld_set.table_line(scores)
