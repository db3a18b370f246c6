"""Process-level wiring for stage entry points: logging set-up and error-to-exit-code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem the user can fix (bad input, missing file); printed without a traceback."""


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # TensorFlow's C++ start-up chatter hides the pipeline's own log lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(): clear one-line errors and exit 1 for user errors, 130 on Ctrl-C."""
    from mnist_mlops.config import ConfigError

    configure_logging()
    try:
        main()
    except (UserError, ConfigError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)
