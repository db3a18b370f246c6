"""Training progress for people: fit k/K, epoch e/E, metrics and time left.

`train.verbose` follows Keras's meaning: 0 = silent, 1 = a live line per fit on a
terminal (a plain line per epoch in a log, where a live line would be noise), 2 = one plain
line per epoch everywhere.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import TextIO

import numpy as np

log = logging.getLogger("mnist_mlops.training.train")
HISTORY_KEYS = ("accuracy", "val_accuracy", "loss", "val_loss")


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


class Progress:
    """Per epoch: fit k/K, epoch e/E, metrics, and time left (fit and stage)."""

    def __init__(self, name: str, total_epochs: int, done_epochs: int, verbose: int,
                 stream: TextIO | None = None) -> None:
        self.name, self.total, self.done, self.verbose = name, total_epochs, done_epochs, verbose
        self.stream = stream or sys.stderr
        self.epoch_s: list[float] = []
        self.live = verbose == 1 and self.stream.isatty()

    def epoch(self, label: str, e: int, epochs: int, logs: dict[str, float],
              seconds: float) -> None:
        self.done += 1
        self.epoch_s.append(seconds)
        if not self.verbose:
            return
        per = float(np.mean(self.epoch_s[-5:]))
        metrics = " ".join(f"{k} {logs[k]:.4f}" for k in HISTORY_KEYS if k in logs)
        text = (f"{self.name} {label} epoch {e}/{epochs}: {metrics} ({seconds:.1f} s; left: "
                f"{duration(per * (epochs - e))} this fit, "
                f"{duration(per * (self.total - self.done))} stage)")
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + text[:width] + "\x1b[K" + ("\n" if e == epochs else ""))
            self.stream.flush()
        else:
            log.info("%s", text)
