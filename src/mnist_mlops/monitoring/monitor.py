"""`mnist-mlops monitor`: is the served model still seeing digits like those it learnt?

Reads the latest `monitor.window` answers of one model from the prediction log, describes
`monitor.reference_size` training images with the same model the same way, compares the two
(monitoring/drift.py), writes `report.html` (Evidently's) and `summary.json` under
`paths.monitor_reports`, and adds the figures to the model version's monitoring run in
MLflow (experiment `<mlflow.experiment>-monitoring`: one run per version, one point per
check). Exits 1 when the window has drifted, after starting `monitor.retrain` if asked.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import Params
from mnist_mlops.core.fsio import atomic_path, write_json_atomic
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.monitoring import drift, predlog
from mnist_mlops.monitoring.features import describe
from mnist_mlops.monitoring.settings import monitor_params
from mnist_mlops.tracking import mlflow_io

log = logging.getLogger(__name__)
MIN_WINDOW = 30          # fewer answers say nothing about a distribution


def same_model(model: dict[str, Any] | None, about: dict[str, Any]) -> bool:
    """A log record's model is `about`: same registry version (where known) and architecture."""
    model = model or {}
    return (model.get("version") == about.get("version")
            and model.get("architecture") == about.get("architecture"))


def window(records: list[dict[str, Any]], about: dict[str, Any], size: int, where: Path
           ) -> list[dict[str, Any]]:
    """The latest `size` records of the model `about`; too few is an error saying why."""
    mine = [r for r in records if same_model(r.get("model"), about)]
    who = f"v{about['version']} ({about['architecture']})" if about.get("version") \
        else str(about.get("architecture"))
    if len(mine) < MIN_WINDOW:
        others = sorted({f"{(r.get('model') or {}).get('version')}/"
                         f"{(r.get('model') or {}).get('architecture')}" for r in records})
        raise UserError(f"{where} holds {len(mine)} answers of model {who}; at least "
                        f"{MIN_WINDOW} are needed. Serve it (`mnist-mlops serve`) and let it "
                        f"answer, or pass --model"
                        + (f" (the log has version/architecture {', '.join(others)})"
                           if others else ""))
    return mine[-size:]


def reference(params: Params, predict: Callable[[np.ndarray], tuple[np.ndarray, Any]]
              ) -> drift.Described:
    """`monitor.reference_size` training images (a seeded sample), described with `predict`
    ((n, 28, 28) uint8 -> probabilities, embedding)."""
    x = load_dataset(params.paths.dataset)["x_train"]
    mp = monitor_params(params)
    pick = np.random.default_rng(mp.seed).choice(len(x), min(mp.reference_size, len(x)),
                                                 replace=False)
    images = x[np.sort(pick)]
    proba, emb = predict(images)
    emb = predlog.as_logged(emb).astype(np.float32) if emb is not None else None
    return drift.from_predictions(describe(images), proba, emb if mp.embedding else None)


def write_outputs(snapshot: Any, summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """report.html and summary.json, each written whole (temporary file, then rename)."""
    out.mkdir(parents=True, exist_ok=True)
    html, js = out / "report.html", out / "summary.json"
    with atomic_path(html, suffix=".tmp.html") as tmp:
        snapshot.save_html(str(tmp))
    write_json_atomic(js, summary)
    return html, js


def log_to_mlflow(params: Params, summary: dict[str, Any], files: tuple[Path, ...]) -> str:
    """One point per check on the model version's monitoring run; the files as artifacts."""
    mlflow_io.setup(params.mlflow)
    client = MlflowClient()
    uri = params.mlflow.resolved_tracking_uri()
    exp_id = mlflow_io.ensure_experiment(client, f"{params.mlflow.experiment}-monitoring", uri)
    model = summary["model"]
    label = f"v{model['version']}" if model.get("version") else str(model.get("architecture"))
    found = client.search_runs([exp_id], f"tags.monitored_model = '{label}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(exp_id, run_name=f"monitor-{label}", tags={
            "monitored_model": label, "architecture": str(model.get("architecture")),
            "model_version": str(model.get("version"))}).info.run_id
    step = len(client.get_metric_history(run_id, "drift_share"))
    now = int(time.time() * 1000)
    values = {"drift": float(summary["drift"]), "drift_share": summary["drift_share"],
              "window": summary["window"],
              "confidence_mean": summary["confidence"]["current_mean"],
              "confidence_drop": summary["confidence"]["drop"],
              "class_mix_distance": summary["class_mix"]["score"],
              **{f"feature_{k}": f["score"] for k, f in summary["features"].items()}}
    if summary["embedding"]:
        values["embedding_auc"] = summary["embedding"]["auc"]
    if summary.get("unsure_rate") is not None:
        values["unsure_rate"] = summary["unsure_rate"]
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                      for k, v in values.items()])
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path=f"checks/{step:04d}")
    client.set_terminated(run_id)
    return run_id


def start_retrain(command: tuple[str, ...]) -> int:
    """The retrain hook: params' command, in the foreground; its exit status."""
    log.warning("drift: starting the retrain command: %s", " ".join(command))
    try:
        return subprocess.run(list(command), check=False).returncode
    except OSError as exc:
        raise UserError(f"cannot start the retrain command {command[0]!r} (monitor.retrain "
                        f"in params.yaml): {exc}") from None


def logged(params: Params, window_size: int | None = None) -> list[dict[str, Any]]:
    """The prediction log's records; checked before any model loads, so that an empty log
    or a bad window is said at once."""
    where = params.paths.prediction_log
    if window_size is not None and window_size < MIN_WINDOW:
        raise UserError(f"--window {window_size}: compare at least {MIN_WINDOW} answers")
    records = list(predlog.records(where))
    if not records:
        raise UserError(f"{where} holds no predictions: serve the model (`mnist-mlops "
                        "serve`, with monitor.log: true in params.yaml) and let it answer")
    if len(records) < MIN_WINDOW:     # too few for any model: no need to load one
        raise UserError(f"{where} holds {len(records)} answers; at least {MIN_WINDOW} of "
                        "one model are needed. Serve it (`mnist-mlops serve`) and let it "
                        "answer")
    return records


def check(params: Params, predictor: Predictor, records: list[dict[str, Any]],
          window_size: int | None = None, out: Path | None = None, to_mlflow: bool = True
          ) -> dict[str, Any]:
    """Compare the latest answers of `predictor`'s model among `records` (`logged`) with
    its training data: the summary (also written with the report under `out`)."""
    mp = monitor_params(params)
    where = params.paths.prediction_log
    about = {k: predictor.about.get(k) for k in ("version", "architecture")}
    current = window(records, about, window_size or mp.window, where)
    snapshot, summary = drift.compare(reference(params, predictor.answer),
                                      drift.from_records(current), mp)
    summary = {"model": about, "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime()),
               "log": str(where), "from": current[0]["time"], "to": current[-1]["time"],
               "unsure_rate": unsure_rate(current), **summary}
    files = write_outputs(snapshot, summary, out or params.paths.monitor_reports)
    summary["files"] = [str(f) for f in files]
    if to_mlflow:
        summary["mlflow_run"] = log_to_mlflow(params, summary, files)
    return summary


def unsure_rate(records: list[dict[str, Any]]) -> float | None:
    """The share of answers that were unsure (below the model's calibrated line), among the
    records that say; None where none does (logged before answers could be unsure, or by a
    model without a calibration)."""
    flags = [bool(r["unsure"]) for r in records if r.get("unsure") is not None]
    return sum(flags) / len(flags) if flags else None


def verdict(summary: dict[str, Any]) -> str:
    """The lines `monitor` prints: drift or not, and the figures behind it."""
    emb = summary["embedding"]
    head = ("DRIFT: " + "; ".join(summary["reasons"])) if summary["drift"] else "no drift"
    return "\n".join([
        f"{head}",
        f"  window: {summary['window']} answers ({summary['from']} .. {summary['to']}) "
        f"against {summary['reference']} training images",
        f"  features drifted: {len(summary['drifted_features'])}/{len(summary['features'])} "
        f"({', '.join(summary['drifted_features']) or 'none'})",
        f"  embedding AUC: {emb['auc']:.3f}" if emb else "  embedding: not logged",
        f"  confidence: {summary['confidence']['current_mean']:.3f} (training "
        f"{summary['confidence']['reference_mean']:.3f})",
        f"  class mix distance: {summary['class_mix']['score']:.3f}",
        "  unsure answers: not logged (a model without a calibration, or an older log)"
        if summary.get("unsure_rate") is None else
        f"  unsure answers: {100 * summary['unsure_rate']:.1f}%",
    ])
