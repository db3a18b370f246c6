"""Two full recipes trained one after another against side by side, as `make run` (now
`mnist-mlops repro -j 2`) trains them: each recipe's speed alone and with the other one
training at the same time, and the pair's projected `dvc repro` training time both ways.

    python benchmarks/bench_side_by_side.py lenet_28_50 cnn_deep_dropout
    python benchmarks/bench_side_by_side.py mlp_512x2 cnn_bn_aug --images 6000 --epochs 3

Each speed is `bench_speed.py`'s pipeline loop (steady epochs on random pixels), in a
process of its own: alone, the two recipes one after the other, with TensorFlow's default
threads (as a plain `dvc repro` runs a stage); side by side, both processes at once, each
with its share of the cores as `mnist-mlops repro -j 2 --share-cores` gives a stage
(core/runtime.thread_share), or with the default threads too (`--no-share`). Side by
side, the pair's projected time is the shorter recipe's projected time at its shared
speed, then the rest of the longer one (what is left once the shorter has finished): at
its speed alone where it has the default threads, and at its shared speed where it has
its share (a process keeps the threads it started with; its speed alone on its share is
taken to be its shared speed, so that figure is an upper estimate).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from mnist_mlops.core.runtime import thread_share

HERE = Path(__file__).resolve().parent
ROW = re.compile(r"^\| (\S+) \| \d+ \| [\d.]+ \| [\d,]+ \| ([\d,]+) \|.* ([\d.]+) min \|$")


def speeds(models: list[str], images: int, epochs: int, together: dict[str, str] | None
           ) -> dict[str, tuple[float, float]]:
    """model -> (pipeline images/s, projected minutes) from bench_speed.py runs: one
    process per model, one after another, or all at once with `together` added to their
    environment (the stage runner's thread share, or nothing)."""
    cmds = [[sys.executable, str(HERE / "bench_speed.py"), "--models", m, "--images",
             str(images), "--epochs", str(epochs)] for m in models]
    if together is not None:
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, env={**os.environ, **together}) for c in cmds]
        outs = [p.communicate()[0] for p in procs]
    else:
        outs = [subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, check=True).stdout for c in cmds]
    found = {}
    for out in outs:
        for line in out.splitlines():
            if m := ROW.match(line):
                found[m.group(1)] = (float(m.group(2).replace(",", "")), float(m.group(3)))
    missing = set(models) - set(found)
    if missing:
        raise SystemExit(f"bench_speed.py gave no row for {sorted(missing)}")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs=2, help="two recipes of params.yaml")
    ap.add_argument("--images", type=int, default=6000, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement")
    ap.add_argument("--no-share", dest="share", action="store_false",
                    help="side by side with TensorFlow's default threads in each process")
    args = ap.parse_args()
    share = thread_share(2) if args.share else {}   # none where the user set the counts
    alone = speeds(args.models, args.images, args.epochs, together=None)
    shared = speeds(args.models, args.images, args.epochs, together=share)
    print(f"side by side: {share or 'default threads'}")
    print("| model | alone img/s | side by side img/s | share | projected alone |")
    print("|---|---:|---:|---:|---:|")
    for m in args.models:
        print(f"| {m} | {alone[m][0]:,.0f} | {shared[m][0]:,.0f} | "
              f"{shared[m][0] / alone[m][0]:.0%} | {alone[m][1]:.1f} min |")
    one_after = sum(minutes for _, minutes in alone.values())
    # both at their shared speed until the first is done, then the other alone
    ends = {m: alone[m][1] * alone[m][0] / shared[m][0] for m in args.models}
    first = min(ends, key=ends.get)
    other = next(m for m in args.models if m != first)
    # with a share the longer keeps it once alone; without, it goes on at its speed alone
    rest_alone = (1 - ends[first] / ends[other]) * alone[other][1]
    both = ends[other] if share else ends[first] + rest_alone
    print(f"\nprojected training of the pair: one after another {one_after:.1f} min, "
          f"side by side {both:.1f} min ({both / one_after:.2f}x)")


if __name__ == "__main__":
    main()
