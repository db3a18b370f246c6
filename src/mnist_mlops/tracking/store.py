"""A portable embedded store: move `mlflow.db` + `mlruns/` with the project folder.

MLflow records absolute artifact locations in its SQLite store (experiments, runs, logged
models, registry versions). A project folder copied elsewhere (a teammate's machine, the
store the retrain workflow uploads) then points back at the folder it came from.
`mnist-mlops relocate-store` rewrites those locations to the folder the store is in now;
it changes nothing else and running it twice is harmless.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sqlite3
from pathlib import Path
from typing import Any

from mnist_mlops.core.fsio import file_lock
from mnist_mlops.core.runtime import UserError

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
    from mnist_mlops.tracking.mlflow_io import store_lock_path  # (imports MLflow: only when used)

    with file_lock(store_lock_path(f"sqlite:///{db_path}", "init", db_path.parent)), \
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


COPIED_FROM = "mnist_mlops.copied_from"      # on a copied run: its id in the source store
COPIED_VERSION = "mnist_mlops.copied_from_version"


def copy_store(src: str, dst: str, experiment: str, registered_model: str) -> dict[str, int]:
    """Copy an experiment's runs (params, tags, every metric's history, artifacts, dataset
    inputs, status and times, nesting), its logged models and the registered model's
    versions, aliases and champion history from store `src` to store `dst` (a team server).

    Resumable and idempotent: what was copied before is recognised by its COPIED_FROM tag
    and skipped. The runs get new ids there; the project's `run.json` files keep the old
    ones, so keep using the old store for that project's `evaluate`/`register`, or retrain.
    """
    import tempfile

    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from mnist_mlops.tracking import mlflow_io

    s, d = MlflowClient(src), MlflowClient(dst)
    sexp = s.get_experiment_by_name(experiment)
    if sexp is None:
        raise UserError(f"experiment {experiment!r} not found in {src}")
    dexp = mlflow_io.ensure_experiment(d, experiment, dst)
    ids = {r.data.tags[COPIED_FROM]: r.info.run_id
           for r in d.search_runs([dexp], max_results=50000) if COPIED_FROM in r.data.tags}
    runs = s.search_runs([sexp.experiment_id], max_results=50000,
                         order_by=["attributes.start_time ASC"])
    runs.sort(key=lambda r: "mlflow.parentRunId" in r.data.tags)   # parents first
    counts = {"runs": 0, "versions": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            if r.info.run_id in ids:
                continue
            tags = {**r.data.tags, COPIED_FROM: r.info.run_id}
            if "mlflow.parentRunId" in tags:
                tags["mlflow.parentRunId"] = ids[tags["mlflow.parentRunId"]]
            new = d.create_run(dexp, start_time=r.info.start_time, tags=tags,
                               run_name=r.info.run_name).info.run_id
            d.log_batch(new, params=[Param(k, v) for k, v in r.data.params.items()])
            history = [Metric(m.key, m.value, m.timestamp, m.step) for key in r.data.metrics
                       for m in s.get_metric_history(r.info.run_id, key)]
            for i in range(0, len(history), 1000):
                d.log_batch(new, metrics=history[i:i + 1000])
            if r.inputs and r.inputs.dataset_inputs:
                d.log_inputs(new, datasets=list(r.inputs.dataset_inputs))
            if s.list_artifacts(r.info.run_id):
                local = mlflow.artifacts.download_artifacts(
                    run_id=r.info.run_id, dst_path=f"{tmp}/{r.info.run_id}", tracking_uri=src)
                d.log_artifacts(new, local)
            d.log_batch(new, tags=[RunTag(COPIED_FROM, r.info.run_id)])
            with contextlib.redirect_stdout(io.StringIO()):   # MLflow prints a "View run" URL
                d.set_terminated(new, r.info.status, end_time=r.info.end_time)
            ids[r.info.run_id] = new
            counts["runs"] += 1
        counts["versions"] = _copy_registry(s, d, src, dexp, ids, registered_model, tmp)
    log.info("copied %d runs and %d registry versions from %s to %s", counts["runs"],
             counts["versions"], src, dst)
    return counts


def _copy_registry(s: Any, d: Any, src: str, dexp: str, ids: dict[str, str], name: str,
                   tmp: str) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = s.get_registered_model(name)
    except MlflowException:
        return 0
    try:
        d.get_registered_model(name)
    except MlflowException:
        d.create_registered_model(name, description=model.description)
    done = {v.tags[COPIED_VERSION]: str(v.version)
            for v in d.search_model_versions(f"name='{name}'") if COPIED_VERSION in v.tags}
    copied = 0
    for v in sorted(s.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        if str(v.version) in done:
            continue
        model_id = v.model_id or (v.source.removeprefix("models:/")
                                  if (v.source or "").startswith("models:/m-") else None)
        if model_id is None:
            log.warning("%s v%s: source %s is not a logged model; not copied", name,
                        v.version, v.source)
            continue
        lm = s.get_logged_model(model_id)
        local = mlflow.artifacts.download_artifacts(artifact_uri=lm.artifact_location,
                                                    dst_path=f"{tmp}/{lm.model_id}")
        new_lm = d.create_logged_model(dexp, name=lm.name, source_run_id=ids[lm.source_run_id],
                                       tags=lm.tags, params=lm.params,
                                       model_type=lm.model_type)
        d.log_model_artifacts(new_lm.model_id, local)
        d.finalize_logged_model(new_lm.model_id, "READY")
        nv = d.create_model_version(name, source=f"models:/{new_lm.model_id}",
                                    run_id=ids[v.run_id], description=v.description,
                                    tags={**v.tags, COPIED_VERSION: str(v.version)},
                                    model_id=new_lm.model_id)
        done[str(v.version)] = str(nv.version)
        copied += 1
    for alias, version in model.aliases.items():
        d.set_registered_model_alias(name, alias, done[str(version)])
    for k, val in model.tags.items():
        if k == "champion_history":
            val = ",".join(done.get(x, x) for x in val.split(",") if x)
        d.set_registered_model_tag(name, k, val)
    return copied
