"""train.verbose as in Keras: 0 silent, 1 a live line on a terminal, 2 one line per epoch."""

from __future__ import annotations

import io
import logging

import pytest

from mnist_mlops.training.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def one_epoch(verbose: int, stream: io.StringIO) -> None:
    Progress("mlp", 4, 0, verbose, stream=stream).epoch(
        "fold 1/2", 1, 2, {"loss": 0.5, "val_accuracy": 0.9}, 1.0)


@pytest.mark.parametrize(("verbose", "stream", "live", "logged"), [
    (0, Terminal(), False, False),
    (1, Terminal(), True, False),      # a live line, rewritten in place
    (1, io.StringIO(), False, True),   # in a log (DVC, CI) a live line would be noise
    (2, Terminal(), False, True),      # one plain line per epoch, even on a terminal
    (2, io.StringIO(), False, True),
])
def test_verbose_levels(verbose: int, stream: io.StringIO, live: bool, logged: bool,
                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mnist_mlops"):
        one_epoch(verbose, stream)
    assert stream.getvalue().startswith("\rmlp fold 1/2 epoch 1/2: val_accuracy 0.9000") is live
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("mlp fold 1/2 epoch 1/2: val_accuracy 0.9000 loss 0.5000")
               for m in lines) is logged
