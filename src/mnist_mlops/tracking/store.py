"""A portable embedded store: move `mlflow.db` + `mlruns/` with the project folder.

MLflow records absolute artifact locations in its SQLite store (experiments, runs, logged
models, registry versions). A project folder copied elsewhere (a teammate's machine, the
store the retrain workflow uploads) then points back at the folder it came from.
`mnist-mlops relocate-store` rewrites those locations to the folder the store is in now,
whichever folders they were recorded under (a store first made by `dvc exp run --temp`
holds two: DVC's temporary workspace and the project); it changes nothing else and running
it twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from mnist_mlops.core.fsio import file_lock
from mnist_mlops.core.runtime import UserError
from mnist_mlops.tracking.mlflow_io import store_lock_path

log = logging.getLogger(__name__)
# (table, column) pairs that hold artifact locations, as plain paths or file:// URIs.
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
             ("logged_models", "artifact_location"), ("model_versions", "source"),
             ("model_versions", "storage_location"))
# Where MLflow puts artifacts under `<root>/mlruns/`, by the experiment's name (this
# project's experiments) or id (MLflow's own `Default`): the rows that tell which roots a
# store was recorded under. `{x}` is the experiment's name or id.
ANCHORS = (("experiments", "SELECT e.artifact_location, e.name, e.experiment_id, '' "
            "FROM experiments e", "{x}"),
           ("runs", "SELECT r.artifact_uri, e.name, e.experiment_id, r.run_uuid FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id", "{x}/{key}/artifacts"),
           ("logged_models", "SELECT m.artifact_location, e.name, e.experiment_id, m.model_id "
            "FROM logged_models m JOIN experiments e ON e.experiment_id = m.experiment_id",
            "{x}/models/{key}/artifacts"))


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def local_path(location: str | None) -> str | None:
    """The local path a recorded location names (a plain path or a file:// URI), else None."""
    if not location:
        return None
    if location.startswith("file:"):
        return url2pathname(urlparse(location).path)
    return location if location.startswith("/") else None


def recorded_roots(db: sqlite3.Connection) -> set[str]:
    """Every folder the store's artifacts were recorded under (each the parent of an
    `mlruns/`): the project's, and a DVC temporary workspace's (`dvc exp run --temp`
    creates the store there, and with it MLflow's `Default` experiment)."""
    roots = set()
    for table, query, tail in ANCHORS:
        if table not in _tables(db):
            continue
        for location, name, exp_id, key in db.execute(query):
            path = local_path(location)
            for x in (name, exp_id):
                end = "/mlruns/" + tail.format(x=x, key=key)
                if path and path.endswith(end) and len(path) > len(end):
                    roots.add(path[:-len(end)])
    return roots


def moved(location: str | None, roots: list[str], new_root: Path) -> str | None:
    """`location` under `new_root/mlruns` if it lies under one of `roots`' mlruns/ (longest
    first), in the same form (path or file:// URI); None if it is not one of those."""
    path = local_path(location)
    if path is None or location is None:
        return None
    for root in roots:
        old = f"{root}/mlruns"
        if path == old or path.startswith(old + "/"):
            new = str(new_root) + path[len(root):]
            return Path(new).as_uri() if location.startswith("file:") else new
    return None


def foreign_roots(db_path: Path) -> list[str]:
    """The folders outside the store's own project folder that its artifact locations
    point into (a copied project that `relocate-store` has not yet pointed home); a DVC
    temporary workspace inside the project is home too."""
    project = db_path.parent.resolve()
    if not db_path.is_file():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        roots = recorded_roots(db)
    return sorted(r for r in roots
                  if not _same(r, project) and not Path(r).is_relative_to(project))


def _same(root: str, new_root: Path) -> bool:
    try:
        return Path(root) == new_root or os.path.samefile(root, new_root)
    except OSError:
        return False


def relocate(db_path: Path, new_root: Path | None = None) -> int:
    """Point every artifact location recorded under another folder (each one found: the
    store may hold several) at `new_root`/mlruns (default: the folder holding the store).
    Returns how many values changed; 0 the second time."""
    if not db_path.is_file():
        raise UserError(f"{db_path} not found: run this in the project folder that holds "
                        "the copied mlflow.db and mlruns/")
    new_root = (new_root or db_path.parent).resolve()

    with file_lock(store_lock_path(f"sqlite:///{db_path}", "init", db_path.parent)), \
            contextlib.closing(sqlite3.connect(db_path)) as db:
        return _rewrite(db, db_path, new_root)


def _rewrite(db: sqlite3.Connection, db_path: Path, new_root: Path) -> int:
    """`relocate` on an open store, in one transaction."""
    with db:      # commits, or rolls back on an error
        roots = sorted((r for r in recorded_roots(db) if not _same(r, new_root)),
                       key=len, reverse=True)
        if not roots:
            log.info("%s: artifact locations already point at %s", db_path, new_root)
            return 0
        if not (new_root / "mlruns").is_dir():
            raise UserError(f"{new_root / 'mlruns'} not found: copy mlruns/ with mlflow.db")
        changed, tables = 0, _tables(db)
        for table, column in LOCATIONS:
            if table not in tables:
                continue
            rows = db.execute(f"SELECT rowid, {column} FROM {table}").fetchall()  # noqa: S608
            for rowid, location in rows:
                new = moved(location, roots, new_root)
                if new is not None and new != location:
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?",  # noqa: S608
                               (new, rowid))
                    changed += 1
    log.info("%s: %d artifact locations moved from %s to %s", db_path, changed,
             ", ".join(roots), new_root)
    return changed
