"""Where a pipeline run's time goes, stage by stage, from what `dvc repro` printed.

    make quick 2>&1 | tee quick.log; python benchmarks/stage_timeline.py quick.log

`dvc repro` (and `dvc exp run`, so `make quick`) prints "Running stage 'X':" before each
stage, and every stage of this pipeline logs with timestamps. A stage's span runs from the
last line of the stage before it to its own last line: its process start and imports, its
work, and DVC's bookkeeping in between. The first stage has no line before it, so its span
starts at its own first line (its start-up is missing). Prints each stage's seconds, the
share of the whole, and the sum per kind of stage (train@*, evaluate@*, ...).

`mnist-mlops repro` and `exp-run` (so `make quick` since it runs stages side by side) log
each stage's own seconds as it ends ("<stage> finished in N s"): those are taken as they
are, and their sum is stage time, more than the wall time when stages overlapped (the
runner's last line gives both).
"""

from __future__ import annotations

import argparse
import collections
import re
from datetime import datetime
from pathlib import Path

STAGE = re.compile(r"^Running stage '([^']+)':")
ENDED = re.compile(r"mnist_mlops\.jobs\.repro: (\S+) (?:finished|FAILED \(exit -?\d+\)) in "
                   r"([\d.]+) s$")
WALL = re.compile(r"mnist_mlops\.jobs\.repro: (\d+ stage\(s\) in [\d.]+ s .*)$")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3}|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)")


def stamp(line: str) -> datetime | None:
    m = STAMP.match(line)
    if not m:
        return None
    text = m.group(1).replace("/", "-").replace(",", ".").replace("T", " ")
    return datetime.fromisoformat(text)


def spans(lines: list[str]) -> list[tuple[str, float]]:
    """(stage, seconds) in the order the stages ran (ended, for a side-by-side run)."""
    ended = [(m.group(1), float(m.group(2))) for line in lines if (m := ENDED.search(line))]
    if ended:
        return ended
    blocks: list[tuple[str, list[datetime]]] = []
    for line in lines:
        if m := STAGE.match(line):
            blocks.append((m.group(1), []))
        elif blocks and (t := stamp(line)) is not None:
            blocks[-1][1].append(t)
    out, previous_end = [], None
    for name, times in blocks:
        if not times:
            continue
        start = previous_end or times[0]
        out.append((name, (times[-1] - start).total_seconds()))
        previous_end = times[-1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path, help="what dvc repro / make quick printed")
    args = ap.parse_args()
    lines = args.log.read_text(errors="replace").splitlines()
    timeline = spans(lines)
    if not timeline:
        raise SystemExit(f"{args.log}: no \"Running stage\" block with timestamped lines")
    total = sum(s for _, s in timeline)
    kinds: collections.Counter[str] = collections.Counter()
    for name, seconds in timeline:
        kinds[name.split("@")[0]] += seconds
        print(f"{seconds:7.1f} s {seconds / total:6.1%}  {name}")
    print(f"{total:7.1f} s         all stages")
    for line in lines:
        if m := WALL.search(line):
            print(f"side by side: {m.group(1)}")
    print("by kind: " + ", ".join(f"{k} {s:.0f} s" for k, s in kinds.most_common()))


if __name__ == "__main__":
    main()
