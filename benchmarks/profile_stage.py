"""Inside one stage: where its seconds go, from its imports to its last line.

    cd <a project whose earlier stages have run>      # e.g. after `dvc repro train@cnn_bn_aug`
    python /path/to/benchmarks/profile_stage.py mnist_mlops.training.train cnn_bn_aug
    python /path/to/benchmarks/profile_stage.py mnist_mlops.evaluation.evaluate cnn_bn_aug

Runs the stage's module as `dvc repro` would (`python -m <module> <args>`: its `main()`,
with logging as a stage sets it up) under cProfile, and prints the seconds of importing
the module, of the whole run, and the cumulative seconds of this package's functions that
take at least --min-share of the run (where a stage's time goes: fits, calibration, the
MLflow delivery, the ONNX export and its check, figures), then the same for the
third-party calls that take longest (--third-party). The stage writes its outputs as it
would under DVC, without DVC recording them: run `dvc repro` again afterwards, or work in
a copy. Unlike `dvc repro`, it does not stop on SIGTERM as a stage does (`run_main`), and a
stage's one-line error is printed on the first line. Profiling slows Python code (not
TensorFlow's kernels): read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import sys
import time


def rows(stats: pstats.Stats, where: str, total: float, min_share: float,
         limit: int) -> list[tuple[float, str]]:
    """(cumulative seconds, function) of the functions whose file path contains `where`,
    at least `min_share` of `total`, longest first (a function called from itself once)."""
    found = []
    for (path, line, name), (_cc, _nc, _tt, cum, _callers) in stats.stats.items():
        if where in path and cum >= min_share * total:
            short = (path[path.index("mnist_mlops/"):] if "mnist_mlops/" in path
                     else path.split("site-packages/")[-1])
            found.append((cum, f"{short}:{line}({name})"))
    return sorted(found, reverse=True)[:limit]


def main() -> None:
    """Profile the stage, then print where its time went, whether it ended or failed."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module", help="the stage's module, as dvc.yaml's cmd runs it")
    ap.add_argument("args", nargs="*", help="the stage's arguments (a model name)")
    ap.add_argument("--min-share", type=float, default=0.02,
                    help="leave out functions under this share of the run (default 0.02)")
    ap.add_argument("--third-party", type=int, default=15,
                    help="how many of the longest third-party calls to print (default 15)")
    opts = ap.parse_args()

    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    module = importlib.import_module(opts.module)
    imported = time.perf_counter() - t0
    from mnist_mlops.core.runtime import UserError, configure_logging

    configure_logging()
    sys.argv = [opts.module, *opts.args]
    ended = "ended"
    try:
        module.main()
    except (UserError, KeyboardInterrupt) as exc:   # what run_main would print as one line
        ended = f"stopped: {type(exc).__name__}: {exc}"
    finally:
        profile.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(profile)
    print(f"{' '.join([opts.module, *opts.args])}: {total:.1f} s under the profiler, of which "
          f"{imported:.1f} s importing the module; {ended}")
    print("\nthis package's functions (cumulative seconds, share of the run):")
    for cum, name in rows(stats, "mnist_mlops/", total, opts.min_share, 60):
        print(f"  {cum:7.2f} s  {cum / total:5.1%}  {name}")
    print(f"\nthe {opts.third_party} longest third-party calls below them:")
    third = [r for r in rows(stats, "site-packages/", total, opts.min_share, 400)
             if not r[1].startswith("mnist_mlops/") and "<module>" not in r[1]
             and "_bootstrap" not in r[1]]
    for cum, name in third[:opts.third_party]:
        print(f"  {cum:7.2f} s  {cum / total:5.1%}  {name}")


if __name__ == "__main__":
    main()
