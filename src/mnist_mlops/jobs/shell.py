"""The git and DVC commands the jobs run, each logged, a failure in the tool's own words."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from mnist_mlops.core.runtime import OperationFailed

log = logging.getLogger(__name__)


def sh(*cmd: str, cwd: Path | None = None, capture: bool = True, check: bool = True
       ) -> subprocess.CompletedProcess[str]:
    """Run a tool (in `cwd`); on failure (with `check`), OperationFailed with its own
    message (no traceback)."""
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=capture, text=True)
    if check and proc.returncode != 0:
        detail = ((proc.stderr or "") + (proc.stdout or "")).strip()[-2000:] if capture else ""
        raise OperationFailed(f"`{' '.join(cmd)}` failed (exit {proc.returncode})"
                              + (f" in {cwd}" if cwd else "") + (f":\n{detail}" if detail else ""))
    return proc
