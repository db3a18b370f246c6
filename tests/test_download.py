"""The download stage against a real HTTP server on 127.0.0.1 and a folder mirror."""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mnist_mlops.data.download import (
    DownloadError,
    Retry,
    download_all,
    gunzip_sha256,
    mirror_list,
)

from .conftest import MNIST_FILES


class MirrorServer:
    """Serves one folder under several behaviours: /good /corrupt /truncated /missing
    /flaky (503 twice, then good) /short (promises more bytes than it sends)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                mode, _, name = self.path.strip("/").partition("/")
                server.hits[mode] += 1
                src = server.folder / name
                if mode == "missing" or not src.is_file():
                    self.send_error(404)
                    return
                if mode == "flaky" and server.hits[mode] % 3 != 0:
                    self.send_error(503)
                    return
                body = src.read_bytes()
                length = len(body)
                if mode == "corrupt":
                    body = gzip.compress(gzip.decompress(body)[:-1] + b"\x07")
                    length = len(body)
                elif mode == "truncated":
                    body = body[: len(body) // 2]
                    length = len(body)
                elif mode == "short":
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # poll every 50 ms: shutdown() waits up to one interval (0.5 s by default)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def mirror(self, mode: str) -> str:
        return f"{self.url}/{mode}/"


@pytest.fixture
def server(synthetic_mirror: Path) -> Iterator[MirrorServer]:
    s = MirrorServer(synthetic_mirror)
    yield s
    s.httpd.shutdown()


@pytest.fixture
def files(synthetic_mirror: Path) -> dict[str, str]:
    return {name: gunzip_sha256(synthetic_mirror / name) for name in MNIST_FILES}


def fetch(files: dict[str, str], raw: Path, mirrors: list[str], **kw: float):
    retry = Retry(int(kw.get("retries", 3)), float(kw.get("backoff_s", 0.01)), 5)
    return download_all(files, raw, mirrors, retry)


def only_final_files(raw: Path) -> set[str]:
    return {p.name for p in raw.iterdir()}


def test_good_http_mirror(server: MirrorServer, files: dict[str, str], tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    got = fetch(files, raw, [server.mirror("good")])
    assert [f.source for f in got] == [server.mirror("good")] * 4
    assert only_final_files(raw) == set(MNIST_FILES)
    for name, digest in files.items():
        assert gunzip_sha256(raw / name) == digest


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "missing"])
def test_bad_mirror_falls_through_to_next(bad: str, server: MirrorServer,
                                          files: dict[str, str], tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    got = fetch(files, raw, [server.mirror(bad), server.mirror("good")])
    assert {f.source for f in got} == {server.mirror("good")}
    assert only_final_files(raw) == set(MNIST_FILES)
    assert server.hits[bad] == 4  # permanent failures are not retried


def test_every_mirror_failing_names_each_and_leaves_nothing(
        server: MirrorServer, files: dict[str, str], tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    mirrors = [server.mirror(m) for m in ("corrupt", "truncated", "missing", "short")]
    with pytest.raises(DownloadError) as err:
        fetch(files, raw, mirrors, retries=2)
    msg = str(err.value)
    assert "SHA-256 of decompressed data" in msg
    assert "not a complete gzip file" in msg
    assert "HTTP 404" in msg
    assert "after 2 attempts" in msg
    assert "MNIST_MIRROR" in msg
    assert list(raw.iterdir()) == []


def test_transient_errors_are_retried_with_backoff(
        server: MirrorServer, files: dict[str, str], tmp_path: Path) -> None:
    name = MNIST_FILES[1]
    got = fetch({name: files[name]}, tmp_path / "raw", [server.mirror("flaky")])
    assert got[0].source == server.mirror("flaky")
    assert server.hits["flaky"] == 3


def test_folder_and_file_url_mirrors(synthetic_mirror: Path, files: dict[str, str],
                                     tmp_path: Path) -> None:
    for i, mirror in enumerate([str(synthetic_mirror), synthetic_mirror.as_uri()]):
        raw = tmp_path / f"raw{i}"
        got = fetch(files, raw, ["/nonexistent/folder", mirror])
        assert {f.source for f in got} == {mirror}
        assert only_final_files(raw) == set(MNIST_FILES)


def test_valid_files_are_skipped_and_invalid_replaced(
        server: MirrorServer, files: dict[str, str], tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    fetch(files, raw, [server.mirror("good")])
    server.hits.clear()
    (raw / MNIST_FILES[0]).write_bytes(b"garbage")
    got = fetch(files, raw, [server.mirror("good")])
    assert [f.source for f in got] == [server.mirror("good"), "cache", "cache", "cache"]
    assert server.hits["good"] == 1


def test_env_mirror_goes_first() -> None:
    configured = ["https://a/", "https://b/"]
    assert mirror_list(configured, {"MNIST_MIRROR": "/data/mnist"}) == ["/data/mnist", *configured]
    assert mirror_list(configured, {}) == configured
    assert mirror_list(configured, {"MNIST_MIRROR": "https://b/"}) == ["https://b/", "https://a/"]


def test_unsupported_scheme_is_reported(files: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unsupported mirror scheme 'ftp'"):
        fetch(files, tmp_path / "raw", ["ftp://example.invalid/"])


def test_stage_exits_nonzero_with_the_reasons(synthetic_mirror: Path, tmp_path: Path) -> None:
    """`python -m mnist_mlops.data.download` as DVC runs it: one clear error, exit 1,
    no partial files."""
    import subprocess
    import sys

    import yaml

    from .conftest import ROOT, tool_env

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["download"].update(mirrors=[], retries=1, backoff_s=0)
    raw["download"]["files"] = {n: gunzip_sha256(synthetic_mirror / n) for n in MNIST_FILES}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (synthetic_mirror / MNIST_FILES[0]).write_bytes(b"\x1f\x8b broken")
    proc = subprocess.run([sys.executable, "-m", "mnist_mlops.data.download"], cwd=tmp_path,
                          env=tool_env(MNIST_MIRROR=str(synthetic_mirror)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert f"could not get a valid {MNIST_FILES[0]}" in proc.stderr
    assert str(synthetic_mirror) in proc.stderr and "Traceback" not in proc.stderr
    raw_dir = tmp_path / "data" / "raw"
    assert not any(p.name.startswith(".") for p in raw_dir.iterdir())
