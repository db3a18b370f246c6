"""Every benchmark figure in one run (`make bench`). Run from the project root."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_data  # noqa: E402
import bench_inference  # noqa: E402
import bench_repro  # noqa: E402
import bench_serve  # noqa: E402
import bench_tracking  # noqa: E402
from common import machine  # noqa: E402


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    print(f"mnist-mlops benchmarks, {datetime.date.today()}, {machine()}, "
          f"Keras {keras.__version__} ({keras.backend.backend()} backend)")
    bench_data.main()
    bench_repro.main()
    bench_inference.main()
    bench_tracking.main()
    bench_serve.main()
    print("\nGPU training: not measured by this script on a CPU-only host; run "
          "`KERAS_BACKEND=jax python benchmarks/bench_tracking.py` on a GPU machine.")


if __name__ == "__main__":
    main()
