"""File helpers shared by every stage: atomic, durable writes and content hashes.

Outputs are written to a temporary file beside the target, flushed to the disk (fsync),
renamed into place, and the rename itself flushed (fsync of the folder): an interrupted or
failed stage never leaves a half-written output behind, and once a write has returned it
survives a power cut or kernel crash too (what it costs: benchmarks/bench_checkpoint.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# fcntl is POSIX-only: imported where a lock is taken, so the rest imports anywhere.

CHUNK = 1 << 20


def fsync_path(path: Path | str) -> None:
    """Flush a file's (or a folder's entries') data from the page cache to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str | None = None,
                durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it onto `target` only if the block succeeds.
    `durable`: fsync the file before the rename and the folder after it (a power cut then
    leaves the old file or the new one, never an empty or partial one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            fsync_path(tmp_path)
        os.replace(tmp_path, target)
        if durable:
            fsync_path(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: Path | str, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One digest over several files (name + content), e.g. a stage's data inputs."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def project_root(cwd: Path | None = None) -> Path:
    """The project folder that relative shared state (tracking store, checkpoints) belongs to.

    `dvc exp run --queue/--temp` runs stages in a copy under `<project>/.dvc/tmp/exps/`;
    state kept relative to that copy would be deleted with it, so it resolves to the
    project that holds the copy.
    """
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i + 1:i + 4] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i + 1])
    return cwd


def in_project(path: Path) -> Path:
    """`path` as given when absolute, else under project_root(): state shared by the
    workspace and DVC's temp experiments (checkpoints, the ONNX drafts train leaves)."""
    return path if path.is_absolute() else project_root() / path


SQLITE = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (MLflow's store, Optuna's), else None."""
    return Path(url[len(SQLITE):]) if url.startswith(SQLITE) else None


def project_sqlite_url(url: str) -> str:
    """A relative `sqlite:///` URL made absolute against the project (also from a DVC
    temporary workspace: `project_root`); any other URL as it is."""
    if url.startswith(SQLITE) and not url.startswith(SQLITE + "/"):
        return f"{SQLITE}{project_root() / url[len(SQLITE):]}"
    return url


@contextlib.contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block; waits for other holders."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
