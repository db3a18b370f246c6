"""inference/timing.py: the timed pass is the one whose answer is returned."""

from __future__ import annotations

import numpy as np

from mnist_mlops.inference.keras_model import BIG_BATCH
from mnist_mlops.inference.timing import timed


def test_timed_returns_the_full_pass_and_times_it_and_one_image() -> None:
    """A warm-up over a full batch and a short one, then the full pass (its answer is what
    comes back, not the warm-up's or a single image's), then one image at a time."""
    images = np.arange(3 * BIG_BATCH, dtype=np.float64)
    sizes: list[int] = []

    def call(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return x * 2

    answer, speed = timed(call, images, repeats=5)
    assert np.array_equal(answer, images * 2)
    assert sizes == [BIG_BATCH + 1, len(images), 1, 1, 1, 1, 1, 1]
    assert set(speed) == {"images_per_s", "step_latency_ms_p50", "step_latency_ms_p95"}
    assert speed["images_per_s"] > 0
    assert 0 <= speed["step_latency_ms_p50"] <= speed["step_latency_ms_p95"]
