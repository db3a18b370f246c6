from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.data.dataset import load_dataset, save_dataset
from mnist_mlops.data.idx import write_idx
from mnist_mlops.data.parse import ParseError, parse_dataset

from .conftest import MNIST_FILES

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_synthetic_round_trip(synthetic_mirror: Path, tmp_path: Path) -> None:
    arrays = parse_dataset(synthetic_mirror)
    assert arrays["x_train"].shape == (200, 28, 28) and arrays["x_test"].shape == (50, 28, 28)
    save_dataset(arrays, tmp_path / "d" / "mnist.npz")
    back = load_dataset(tmp_path / "d" / "mnist.npz")
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == np.uint8
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["mnist.npz"]


@pytest.mark.parametrize(("file_index", "array", "needle"), [
    (1, np.zeros(199, np.uint8), "holds 200 images but train-labels-idx1-ubyte.gz holds 199"),
    (1, np.full(200, 12, np.uint8), "label 12 is not a digit"),
    (0, np.zeros((200, 28, 28), np.int32), "expected uint8 images"),
    (3, np.zeros((50, 2), np.uint8), "expected uint8 labels"),
    (2, np.zeros((50, 20, 20), np.uint8), "train images are (28, 28) but test images are (20, 20)"),
])
def test_inconsistent_files_are_rejected(synthetic_mirror: Path, file_index: int,
                                         array: np.ndarray, needle: str) -> None:
    write_idx(synthetic_mirror / MNIST_FILES[file_index], array)
    with pytest.raises(ParseError) as err:
        parse_dataset(synthetic_mirror)
    assert needle in str(err.value)


def test_malformed_idx_becomes_parse_error(synthetic_mirror: Path) -> None:
    (synthetic_mirror / MNIST_FILES[0]).write_bytes(b"\x00\x00\x08")
    with pytest.raises(ParseError, match="train-images-idx3-ubyte.gz: too short"):
        parse_dataset(synthetic_mirror)


def test_missing_dataset_says_which_stage(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="dvc repro parse"):
        load_dataset(tmp_path / "none.npz")


def test_real_mnist_matches_published_shapes_and_counts(mnist_mirror: Path) -> None:
    arrays = parse_dataset(mnist_mirror)
    assert arrays["x_train"].shape == (60000, 28, 28)
    assert arrays["x_test"].shape == (10000, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == TRAIN_COUNTS
    assert np.bincount(arrays["y_test"]).tolist() == TEST_COUNTS
