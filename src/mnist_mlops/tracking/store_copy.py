"""`mnist-mlops copy-store`: publish a project's store (runs, logged models, registry) to
another store, typically the team's tracking server.

Everything gets new ids there, and a copied model must name its new ids: MLflow 3 resolves
`models:/NAME@alias` through the MLmodel's `model_id` (`mlflow.models.get_model_info`, which
`predict`, `serve` and `mlflow.pyfunc` go through), so each logged model is created in the
destination, its MLmodel rewritten to carry the destination's model id, run id and artifact
location, then uploaded, linked to its run, and given its metrics, as `log_model` would.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from mnist_mlops.core.runtime import UserError
from mnist_mlops.tracking import mlflow_io

log = logging.getLogger(__name__)
COPIED_FROM = "mnist_mlops.copied_from"   # on a copied run or logged model: its source id
COPIED_VERSION = "mnist_mlops.copied_from_version"
# Which registry versions a logged model backs: the destination's registry writes its own.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"


@dataclass
class Copy:
    """One copy in progress: the two stores (MlflowClient), the destination experiment, a
    scratch folder, and what is already there (source id -> destination id)."""

    s: Any
    d: Any
    dexp: str
    tmp: str
    runs: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)


def copy_store(src: str, dst: str, experiment: str, registered_model: str) -> dict[str, int]:
    """Copy an experiment's runs (params, tags, every metric's history, artifacts, dataset
    inputs, logged models, status and times, nesting) and the registered model's versions,
    aliases and champion history from store `src` to store `dst` (a team server).

    Resumable and idempotent: what was copied before is recognised by its COPIED_FROM tag
    and skipped. The runs get new ids there; the project's `run.json` files keep the old
    ones, so keep using the old store for that project's `evaluate`/`register`, or retrain.
    """
    s, d = MlflowClient(src), MlflowClient(dst)
    sexp = s.get_experiment_by_name(experiment)
    if sexp is None:
        raise UserError(f"experiment {experiment!r} not found in {src}")
    dexp = mlflow_io.ensure_experiment(d, experiment, dst)
    runs = s.search_runs([sexp.experiment_id], max_results=50000,
                         order_by=["attributes.start_time ASC"])
    runs.sort(key=lambda r: "mlflow.parentRunId" in r.data.tags)   # parents first
    counts = {"runs": 0, "versions": 0}
    with tempfile.TemporaryDirectory() as tmp:
        c = Copy(s, d, dexp, tmp, runs={
            r.data.tags[COPIED_FROM]: r.info.run_id
            for r in d.search_runs([dexp], max_results=50000) if COPIED_FROM in r.data.tags})
        c.models = copied_models(d, dexp)
        for r in runs:
            if r.info.run_id not in c.runs:
                copy_run(c, r, src)
                counts["runs"] += 1
        counts["versions"] = copy_registry(c, registered_model)
    log.info("copied %d runs and %d registry versions from %s to %s", counts["runs"],
             counts["versions"], src, dst)
    return counts


def copied_models(d: Any, experiment_id: str) -> dict[str, str]:
    """The logged models copied into `experiment_id` before: source id -> destination id."""
    found, token = {}, None
    while True:
        page = d.search_logged_models([experiment_id], max_results=100, page_token=token)
        found.update({m.tags[COPIED_FROM]: m.model_id for m in page if COPIED_FROM in m.tags})
        token = page.token
        if not token:
            return found


def copy_run(c: Copy, r: Any, src: str) -> None:
    """One run, with the logged models it produced; its COPIED_FROM tag goes on last."""
    s, d = c.s, c.d
    tags = {**r.data.tags, COPIED_FROM: r.info.run_id}
    if "mlflow.parentRunId" in tags:
        tags["mlflow.parentRunId"] = c.runs[tags["mlflow.parentRunId"]]
    new = d.create_run(c.dexp, start_time=r.info.start_time, tags=tags,
                       run_name=r.info.run_name).info.run_id
    c.runs[r.info.run_id] = new
    d.log_batch(new, params=[Param(k, v) for k, v in r.data.params.items()])
    history = [Metric(m.key, m.value, m.timestamp, m.step) for key in r.data.metrics
               for m in s.get_metric_history(r.info.run_id, key)]
    for i in range(0, len(history), 1000):
        d.log_batch(new, metrics=history[i:i + 1000])
    if r.inputs and r.inputs.dataset_inputs:
        d.log_inputs(new, datasets=list(r.inputs.dataset_inputs))
    if s.list_artifacts(r.info.run_id):
        local = mlflow.artifacts.download_artifacts(
            run_id=r.info.run_id, dst_path=f"{c.tmp}/{r.info.run_id}", tracking_uri=src)
        d.log_artifacts(new, local)
    for out in r.outputs.model_outputs if r.outputs else []:
        if out.model_id not in c.models:
            copy_logged_model(c, out.model_id, out.step)
    d.log_batch(new, tags=[RunTag(COPIED_FROM, r.info.run_id)])
    with contextlib.redirect_stdout(io.StringIO()):   # MLflow prints a "View run" URL
        d.set_terminated(new, r.info.status, end_time=r.info.end_time)


def copy_logged_model(c: Copy, model_id: str, step: int = 0) -> str:
    """Create the source's logged model `model_id` in the destination, as `log_model`
    does: its MLmodel names the new model id, run id and location; returns the new id."""
    lm = c.s.get_logged_model(model_id)
    run_id = c.runs.get(lm.source_run_id or "")
    tags = {k: v for k, v in lm.tags.items() if k != MODEL_VERSIONS_TAG}
    new = c.d.create_logged_model(c.dexp, name=lm.name, source_run_id=run_id,
                                  tags={**tags, COPIED_FROM: lm.model_id}, params=lm.params,
                                  model_type=lm.model_type)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=lm.artifact_location,
                                                     dst_path=f"{c.tmp}/{lm.model_id}"))
    if (local / "MLmodel").is_file():
        mlmodel = Model.load(local / "MLmodel")
        mlmodel.model_id = mlmodel.model_uuid = new.model_id
        mlmodel.run_id, mlmodel.artifact_path = run_id, new.artifact_location
        mlmodel.save(local / "MLmodel")
    c.d.log_model_artifacts(new.model_id, str(local))
    if run_id is not None:
        c.d.log_outputs(run_id, [LoggedModelOutput(new.model_id, step)])
        metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=new.model_id,
                          dataset_name=m.dataset_name, dataset_digest=m.dataset_digest,
                          run_id=run_id) for m in lm.metrics or []]
        if metrics:     # the run has them already: MLflow adds them to the model only
            c.d.log_batch(run_id, metrics=metrics)
    c.d.finalize_logged_model(new.model_id, LoggedModelStatus.FAILED
                              if lm.status == LoggedModelStatus.FAILED
                              else LoggedModelStatus.READY)
    c.models[model_id] = new.model_id
    return new.model_id


def copy_registry(c: Copy, name: str) -> int:
    """The registered model's versions (each on its copied logged model), aliases and
    tags, the champion history in destination version numbers."""
    s, d = c.s, c.d
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
        new_id = c.models.get(model_id) or copy_logged_model(c, model_id)
        nv = d.create_model_version(name, source=f"models:/{new_id}",
                                    run_id=c.runs.get(v.run_id or ""),
                                    description=v.description,
                                    tags={**v.tags, COPIED_VERSION: str(v.version)},
                                    model_id=new_id)
        done[str(v.version)] = str(nv.version)
        copied += 1
    for alias, version in model.aliases.items():
        d.set_registered_model_alias(name, alias, done[str(version)])
    for k, val in model.tags.items():
        if k == "champion_history":
            val = ",".join(done.get(x, x) for x in val.split(",") if x)
        d.set_registered_model_tag(name, k, val)
    return copied
