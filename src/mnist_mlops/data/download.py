"""Stage `download`: fetch the four MNIST .gz files into data/raw, verified by SHA-256.

Mirrors are tried in order ($MNIST_MIRROR first). A file is accepted only when the SHA-256
of its *decompressed* bytes matches params.yaml, which holds for every faithful mirror even
when the gzip wrapper differs. Nothing half-written ever appears under data/raw.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mnist_mlops.core.config import load_params
from mnist_mlops.core.fsio import CHUNK, atomic_path
from mnist_mlops.core.runtime import OperationFailed, run_main

log = logging.getLogger(__name__)

MIRROR_ENV = "MNIST_MIRROR"


@dataclass(frozen=True)
class Retry:
    """How hard to try each mirror: attempts on network errors, the first delay (doubled
    each time) and the socket timeout."""

    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0


class DownloadError(OperationFailed):
    """No mirror delivered a valid copy of a file."""


class _Permanent(Exception):
    """A failure that retrying the same mirror cannot fix (404, bad checksum, ...)."""


@dataclass(frozen=True)
class Fetched:
    name: str
    source: str  # mirror it came from, or "cache" when already present and valid


def mirror_list(configured: tuple[str, ...] | list[str], env: dict[str, str] | None = None
                ) -> list[str]:
    """$MNIST_MIRROR (if set) first, then the configured mirrors, without duplicates."""
    env = os.environ if env is None else env
    out: list[str] = []
    extra = env.get(MIRROR_ENV, "").strip()
    for m in ([extra] if extra else []) + list(configured):
        if m not in out:
            out.append(m)
    return out


def gunzip_sha256(path: Path) -> str:
    """SHA-256 of the decompressed content; raises _Permanent if the gzip is broken."""
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise _Permanent(f"not a complete gzip file ({exc})") from None
    return h.hexdigest()


def is_valid(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and gunzip_sha256(path) == sha256
    except _Permanent:
        return False


def _local_source(mirror: str) -> Path | None:
    """A folder path or file:// URL as a Path; None for network URLs."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(mirror)
    if parsed.scheme in ("http", "https"):
        return None
    raise _Permanent(
        f"unsupported mirror scheme {parsed.scheme!r} (use a folder, file:// or http(s)://)"
    )


def _copy_from(mirror: str, name: str, dest: Path, timeout_s: float) -> None:
    """Copy one file from `mirror` into `dest`; _Permanent or OSError on failure."""
    local = _local_source(mirror)
    if local is not None:
        src = local / name
        if not src.is_file():
            raise _Permanent(f"{src} does not exist")
        shutil.copyfile(src, dest)
        return
    url = urllib.parse.urljoin(mirror if mirror.endswith("/") else mirror + "/", name)
    req = urllib.request.Request(url, headers={"User-Agent": "mnist-mlops"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False,
                      disable=None) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise OSError(f"connection closed after {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
        raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None


def fetch_file(name: str, sha256: str, raw_dir: Path, mirrors: list[str],
               retry: Retry = Retry()) -> Fetched:
    """Make raw_dir/name a verified copy of `name`, trying each mirror in turn."""
    target = raw_dir / name
    if is_valid(target, sha256):
        log.info("%s: present and valid, skipped", name)
        return Fetched(name, "cache")
    if not mirrors:
        raise DownloadError(f"{name}: no mirror configured; set ${MIRROR_ENV} or download.mirrors")
    failures: list[str] = []
    for mirror in mirrors:
        for attempt in range(1, retry.attempts + 1):
            try:
                with atomic_path(target, suffix=".partial") as tmp:
                    _copy_from(mirror, name, tmp, retry.timeout_s)
                    got = gunzip_sha256(tmp)
                    if got != sha256:
                        raise _Permanent(
                            f"SHA-256 of decompressed data is {got}, expected {sha256}")
                log.info("%s: downloaded and verified from %s", name, mirror)
                return Fetched(name, mirror)
            except _Permanent as exc:
                failures.append(f"  {mirror}: {exc}")
                break
            except (OSError, http.client.HTTPException) as exc:  # network, timeouts, cut-offs
                reason = getattr(exc, "reason", None) or exc
                if attempt == retry.attempts:
                    failures.append(f"  {mirror}: {reason} (after {retry.attempts} attempts)")
                    break
                delay = retry.backoff_s * 2 ** (attempt - 1)
                log.warning("%s: %s from %s; retrying in %.1f s", name, reason, mirror, delay)
                time.sleep(delay)
    raise DownloadError(
        f"could not get a valid {name} from any mirror:\n" + "\n".join(failures)
        + f"\nCheck your network, or point ${MIRROR_ENV} at a folder holding the MNIST .gz files."
    )


def download_all(files: dict[str, str], raw_dir: Path, mirrors: list[str],
                 retry: Retry = Retry()) -> list[Fetched]:
    raw_dir.mkdir(parents=True, exist_ok=True)
    return [
        fetch_file(name, digest, raw_dir, mirrors, retry)
        for name, digest in files.items()
    ]


def main() -> None:
    p = load_params()
    d = p.download
    download_all(dict(d.files), p.paths.raw, mirror_list(d.mirrors),
                 Retry(d.retries, d.backoff_s, d.timeout_s))


if __name__ == "__main__":
    run_main(main)
