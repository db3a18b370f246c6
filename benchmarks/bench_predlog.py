"""What the prediction log costs the server: the same load on `mnist-mlops serve` without
the log (no params.yaml: nothing to log to) and with it (params with monitor.log: true, the
embedding included), one image per /invocations request, as bench_serve.py sends them.

    MNIST_MIRROR=... .venv/bin/python benchmarks/bench_predlog.py [--levels 1,8,64]

Reference: docs/monitoring.md ("What it costs"); the log must leave p50 and requests/s
within the run-to-run noise of bench_serve (about 10% on this 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import yaml
from bench_serve import BIN, ENV, load, model_file, peak_rss_mb, row, wait_http
from common import ROOT, header, machine, mnist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--requests", type=int, default=400)
    args, _ = ap.parse_known_args()
    header(f"the prediction log's cost to serve ({machine()})")
    x = mnist()["x_test"][:200]
    scoring = [json.dumps({"inputs": im[None].tolist()}).encode() for im in x]
    with tempfile.TemporaryDirectory() as tmp:
        h5 = model_file(Path(tmp))
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["paths"]["prediction_log"] = str(Path(tmp) / "predictions.jsonl")
        (Path(tmp) / "with-log.yaml").write_text(yaml.safe_dump(raw))
        serve = [str(BIN / "mnist-mlops"), "serve", "--model", str(h5), "--port", "8767"]
        runs = {"no log": serve,
                "log": [serve[0], "--params", str(Path(tmp) / "with-log.yaml"), *serve[1:]]}
        rows = []
        for name, cmd in runs.items():
            proc = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                wait_http(8767, "/ready", proc)
                for clients in (int(c) for c in args.levels.split(",")):
                    lat, codes, wall = load(8767, "/invocations", scoring, clients,
                                            max(args.requests, clients))
                    rows.append(row(f"| {name} | {clients} |", lat, codes, wall, 0,
                                    peak_rss_mb(proc.pid)))
                    print(rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        logged = Path(tmp) / "predictions.jsonl"
        lines = logged.read_text().count("\n") if logged.exists() else 0
        header("table")
        print("| server | clients | p50 ms | p99 ms | 200s | req/s | - | peak RSS MB |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(r)
        print(f"lines logged: {lines}, {logged.stat().st_size / max(lines, 1):.0f} bytes each"
              if lines else "nothing logged")


if __name__ == "__main__":
    main()
