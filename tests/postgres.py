"""Throwaway PostgreSQL for tests: Debian's server binaries, a cluster in a temp folder on a
free port, gone afterwards. Tests that need one use `requires("postgresql")` or
`need("postgresql")` (tests/needs.py): without the binaries they skip, or fail when CI is set
(`.ci/run` installs them). Used for the team server (scripts/team-server.sh runs its
own cluster in `pg_folder()`) and for a bare database (`cluster`, Optuna's shared study)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .conftest import free_port
from .needs import need


@contextlib.contextmanager
def pg_folder() -> Iterator[Path]:
    """A folder for a cluster that the `postgres` user can write to (PostgreSQL refuses to
    run as root, so as root it runs as `postgres`): not under pytest's private tmp."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-mlops-pg-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bindir() -> Path:
    """The folder of the server programs; skips the test (fails it under CI) without them."""
    return Path(need("postgresql"))


def _as_postgres(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd="/",
                          timeout=120, **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def cluster(db: str = "test", user: str = "tester", password: str = "tester-pw"
            ) -> Iterator[str]:
    """A running cluster with database `db` on 127.0.0.1: its SQLAlchemy URL."""
    pg, port = bindir(), free_port()
    with pg_folder() as folder:
        data = folder / "cluster"
        data.mkdir()
        pwfile = folder / "pw"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o644)
        if os.getuid() == 0:
            shutil.chown(data, "postgres")
        _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}",
                      "--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
        _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                      "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {data}", "start"])
        try:
            subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                            user, db], env={**os.environ, "PGPASSWORD": password}, check=True,
                           capture_output=True, timeout=60)
            yield f"postgresql://{user}:{password}@127.0.0.1:{port}/{db}"
        finally:
            _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
