"""Helpers shared by the benchmark scripts: timing, peak memory, the MNIST arrays."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def mirror() -> Path:
    env = os.environ.get("MNIST_MIRROR")
    if env and (Path(env) / "train-images-idx3-ubyte.gz").is_file():
        return Path(env)
    sys.exit("benchmarks need the MNIST files: set MNIST_MIRROR to a folder holding them "
             "(`make bench` does when ../shared/data/mnist exists)")


def mnist() -> dict[str, np.ndarray]:
    from mnist_mlops.data.parse import parse_dataset

    return parse_dataset(mirror())


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
