"""Durable writes, seen from the kernel: strace shows each atomic write and each journal
append flushed to the disk (fsync of the file, then of its folder), which is what makes
them survive a power cut, not only a killed process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_mlops.core.fsio import atomic_path, write_text_atomic

from .needs import requires

pytestmark = requires("strace")   # skips without strace; fails when CI is set

WRITE = """
import sys
from pathlib import Path
from mnist_mlops.core.fsio import write_json_atomic
from mnist_mlops.tracking.journal import Journal
write_json_atomic(Path(sys.argv[1]) / "out" / "record.json", {"a": 1})
j = Journal(Path(sys.argv[1]) / "ckpt", "sqlite:///unused.db", "e", "k")
j.record("metrics", "parent", metrics={"loss": 1.0}, step=1)
"""


def fsynced_paths(tmp_path: Path, script: str) -> list[str]:
    log = tmp_path / "strace.log"
    subprocess.run(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", str(log),
                    sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120,
                   capture_output=True)
    return re.findall(r"f(?:data)?sync\(\d+<([^>]*)>\) = 0", log.read_text())


def test_atomic_writes_and_journal_appends_reach_the_disk(tmp_path: Path) -> None:
    synced = fsynced_paths(tmp_path, WRITE)
    out, ckpt = str(tmp_path / "out"), str(tmp_path / "ckpt")
    temp = [p for p in synced if Path(p).name.startswith(".record.json.")]
    assert temp, f"the record's data was never flushed before its rename: {synced}"
    assert out in synced[synced.index(temp[0]):], "its rename was never flushed (folder)"
    assert f"{ckpt}/journal.jsonl" in synced, f"the journal append was not flushed: {synced}"
    assert ckpt in synced, "the new journal's name was never flushed (folder)"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
