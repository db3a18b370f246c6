"""`dvc repro` and `dvc status` with nothing changed (the cost of asking DVC)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import header, median

BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc.stdout + proc.stderr


def main(project: Path = Path(".")) -> dict[str, float]:
    header("dvc with nothing changed")
    _, status = timed([str(BIN / "dvc"), "status"], project)
    if "up to date" not in status:
        print("skipped: the pipeline in", project.resolve(), "is not up to date; run "
              "`dvc repro` (or `make quick`) first")
        return {}
    repro = [timed([str(BIN / "dvc"), "repro"], project)[0] for _ in range(3)]
    stat = [timed([str(BIN / "dvc"), "status"], project)[0] for _ in range(3)]
    print(f"dvc repro (up to date): {median(repro):.2f} s (median of 3)")
    print(f"dvc status            : {median(stat):.2f} s (median of 3)")
    return {"repro_s": median(repro), "status_s": median(stat)}


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
