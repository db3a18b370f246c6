"""A portable embedded store: move `mlflow.db` + `mlruns/` with the project folder.

MLflow records absolute artifact locations in its SQLite store (experiments, runs, logged
models, registry versions). A project folder copied elsewhere (a teammate's machine, the
store the retrain workflow uploads) then points back at the folder it came from.
`mnist-mlops relocate-store` rewrites those locations to the folder the store is in now;
it changes nothing else and running it twice is harmless.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from mnist_mlops.fsio import file_lock
from mnist_mlops.runtime import UserError

log = logging.getLogger(__name__)
# (table, column) pairs that hold artifact locations, as plain paths or file:// URIs.
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
             ("logged_models", "artifact_location"), ("model_versions", "source"),
             ("model_versions", "storage_location"))


def _strip_file(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def recorded_root(db: sqlite3.Connection) -> Path | None:
    """The project folder the store's artifacts were recorded under (parent of mlruns/)."""
    for (loc,) in db.execute("SELECT artifact_location FROM experiments"):
        path = _strip_file(loc or "")
        if "/mlruns" in path:
            return Path(path[:path.index("/mlruns")])
    return None


def relocate(db_path: Path, new_root: Path | None = None) -> int:
    """Point every artifact location recorded under the old project folder at `new_root`
    (default: the folder holding the store). Returns how many values changed."""
    if not db_path.is_file():
        raise UserError(f"{db_path} not found: run this in the project folder that holds "
                        "the copied mlflow.db and mlruns/")
    new_root = (new_root or db_path.parent).resolve()
    changed = 0
    with file_lock(db_path.with_name(f"{db_path.name}.init.lock")), \
            sqlite3.connect(db_path) as db:
        old_root = recorded_root(db)
        if old_root is None or old_root == new_root:
            log.info("%s: artifact locations already point at %s", db_path, new_root)
            return 0
        if not (new_root / "mlruns").is_dir():
            raise UserError(f"{new_root / 'mlruns'} not found: copy mlruns/ with mlflow.db")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for old, new in ((f"file://{old_root}/mlruns", f"file://{new_root}/mlruns"),
                         (f"{old_root}/mlruns", f"{new_root}/mlruns")):
            for table, column in LOCATIONS:
                if table not in tables:
                    continue
                cur = db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                    f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
                changed += cur.rowcount
    log.info("%s: %d artifact locations moved from %s to %s", db_path, changed, old_root,
             new_root)
    return changed
