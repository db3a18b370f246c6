"""How fast a model answers on this host, measured on the pass whose answers are used.

The train stage times Keras where it checks the ONNX export against it; evaluate times
whichever runtime answers the test digits. Both figures go to speed.json and MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from mnist_mlops.inference.keras_model import BIG_BATCH
from mnist_mlops.inference.predictor import Predictor

T = TypeVar("T")


def throughput(predictor: Predictor, images: np.ndarray, repeats: int = 30
               ) -> tuple[np.ndarray, dict[str, float]]:
    """The probabilities of `images`, and on this host: batch images/s over them, and the
    latency of one image through one model call (`step_latency_*`: what `serve` calls per
    batch; for Keras the compiled predict step, since an eager call is about ten times
    slower and says little about serving). The timed pass is the one whose answers are
    returned: the images are predicted once, not once for the answers and again for the
    clock."""
    return timed(predictor.predict_proba, images, repeats)


def onnx_answers(predictor: Predictor, images: np.ndarray, members: int
                 ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """An ONNX file's probabilities for `images`, timed as `throughput` times them; for an
    ensemble (`members` > 0) with its members' answers (the graph's second output) from the
    same calls, timed so on every path: the train stage's check and evaluate's own."""
    if members:
        (proba, embedding), speed = timed(predictor.answer, images)
        return proba, embedding, speed
    proba, speed = throughput(predictor, images)
    return proba, None, speed


def timed(call: Callable[[np.ndarray], T], images: np.ndarray, repeats: int = 30
          ) -> tuple[T, dict[str, float]]:
    """What `call(images)` answers, timed as `throughput` times a model: after a warm-up
    that traces a full batch and a short one, on the pass whose answer is returned, then
    one image at a time."""
    call(images[:BIG_BATCH + 1])   # warm-up: a full batch and a short one
    t0 = time.perf_counter()
    answer = call(images)
    batch_s = time.perf_counter() - t0
    one = images[:1]
    call(one)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call(one)
        times.append(time.perf_counter() - t)
    return answer, {"images_per_s": len(images) / batch_s,
                    "step_latency_ms_p50": 1000 * float(np.median(times)),
                    "step_latency_ms_p95": 1000 * float(np.percentile(times, 95))}
