"""The comparison behind `mnist-mlops monitor`: a window of the prediction log against the
reference (training images described the same way), with Evidently.

- per feature (monitoring/features.py): Evidently's `ValueDrift` with the params' test
  (Kolmogorov-Smirnov p-value by default); the share of drifted features is
  `DriftedColumnsCount`'s;
- embedding: Evidently's classifier method (`ModelDriftMethod`: how well a linear model
  tells the window's embeddings from the reference's, as ROC AUC), called directly: the
  `EmbeddingsDrift` metric would also draw a t-SNE picture, 25-50 s of CPU for every run.
  The report shows the embedding's first two principal components (of the reference)
  as two more columns instead;
- confidence: its distribution (`ValueDrift`) and the drop of its mean;
- class mix: the predicted digits' distribution (`ValueDrift`, Jensen-Shannon distance).

The window has drifted when the share of drifted features reaches `drift_share`, or the
embedding classifier's AUC passes `embedding_auc`, or the mean confidence falls by more
than `confidence_drop`. The class mix is reported, not decisive: users asking for many 7s
is no reason to retrain. docs/monitoring.md says how the thresholds were chosen.

Evidently (2-3 s to import) is imported by the functions that use it, so that importing
this module, as `monitor` and its tests do, costs no Evidently import until a comparison
runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mnist_mlops.monitoring import predlog
from mnist_mlops.monitoring.features import FEATURES
from mnist_mlops.monitoring.settings import MonitorParams

EMBEDDING_PCS = ("embedding_pc1", "embedding_pc2")
CLASS_METHOD, CLASS_THRESHOLD = "jensenshannon", 0.1


@dataclass(frozen=True)
class Described:
    """One side of the comparison: what the log keeps of each prediction."""

    features: np.ndarray            # (n, len(FEATURES))
    confidence: np.ndarray          # (n,)
    digit: np.ndarray               # (n,) int
    embedding: np.ndarray | None    # (n, d), or None where the model gave none

    def __len__(self) -> int:
        return len(self.confidence)


def from_predictions(features: np.ndarray, proba: np.ndarray,
                     embedding: np.ndarray | None) -> Described:
    return Described(np.asarray(features, float), proba.max(axis=1), proba.argmax(axis=1),
                     embedding)


def from_records(records: list[dict[str, Any]]) -> Described:
    """A window of the prediction log (monitoring/predlog.py records)."""
    feats = np.array([[r["features"][k] for k in FEATURES] for r in records], float)
    embs = [predlog.embedding(r) for r in records]
    same = all(e is not None for e in embs) and len({len(e) for e in embs}) == 1
    return Described(feats, np.array([r["confidence"] for r in records], float),
                     np.array([r["digit"] for r in records], int),
                     np.array(embs, np.float32) if same and embs else None)


def _components(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides projected on the reference's first two principal axes."""
    mean = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    axes = vt[:2].T
    return (ref - mean) @ axes, (cur - mean) @ axes


def _frame(d: Described, pcs: np.ndarray | None) -> Any:
    df = pd.DataFrame(d.features, columns=list(FEATURES))
    df["confidence"] = d.confidence
    df["digit"] = d.digit.astype(str)
    if pcs is not None:
        for i, name in enumerate(EMBEDDING_PCS):
            df[name] = pcs[:, i]
    return df


def _report(mp: MonitorParams, with_pcs: bool) -> Any:
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    method, threshold = mp.stattest, mp.stattest_threshold
    cols = [*FEATURES, "confidence", *(EMBEDDING_PCS if with_pcs else ())]
    return Report([
        DriftedColumnsCount(columns=list(FEATURES), drift_share=mp.drift_share,
                            num_method=method, num_threshold=threshold),
        *[ValueDrift(column=c, method=method, threshold=threshold) for c in cols],
        ValueDrift(column="digit", method=CLASS_METHOD, threshold=CLASS_THRESHOLD),
    ], include_tests=True)


def embedding_drift(ref: np.ndarray, cur: np.ndarray, auc: float) -> dict[str, Any]:
    """Evidently's classifier method on the raw embeddings: ROC AUC of reference vs window."""
    from evidently.metrics.embeddings import ModelDriftMethod

    cols = [f"e{i}" for i in range(ref.shape[1])]
    score, drifted, method = ModelDriftMethod(threshold=auc)(
        pd.DataFrame(cur, columns=cols), pd.DataFrame(ref, columns=cols))
    return {"auc": round(float(score), 4), "threshold": auc, "drifted": bool(drifted),
            "method": f"Evidently {method} (ROC AUC of a linear classifier)"}


def _column_results(snapshot_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per column: its score, method, threshold and whether Evidently's test failed."""
    scores = {m["config"]["column"]: m for m in snapshot_dict["metrics"]
              if m["config"].get("type", "").endswith("ValueDrift")}
    out = {}
    for t in snapshot_dict["tests"]:
        params = t["metric_config"]["params"]
        if params.get("type", "").endswith("ValueDrift"):
            col = params["column"]
            out[col] = {"score": round(float(scores[col]["value"]), 5),
                        "method": params["method"], "threshold": params["threshold"],
                        "drifted": t["status"] == "FAIL"}
    return out


def compare(ref: Described, cur: Described, mp: MonitorParams) -> tuple[Any, dict[str, Any]]:
    """Evidently's snapshot (for the HTML report) and the summary (JSON, MLflow, exit code)."""
    from evidently import DataDefinition, Dataset

    embed = ref.embedding is not None and cur.embedding is not None and \
        ref.embedding.shape[1] == cur.embedding.shape[1]
    pcs = _components(ref.embedding, cur.embedding) if embed else (None, None)
    numerical = [*FEATURES, "confidence", *(EMBEDDING_PCS if embed else ())]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=["digit"])
    with warnings.catch_warnings():   # a constant column (an inverted picture's border)
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = _report(mp, embed).run(
            Dataset.from_pandas(_frame(cur, pcs[1]), data_definition=definition),
            Dataset.from_pandas(_frame(ref, pcs[0]), data_definition=definition))
    columns = _column_results(snapshot.dict())
    feats = {k: columns[k] for k in FEATURES}
    share = sum(f["drifted"] for f in feats.values()) / len(feats)
    conf_drop = float(ref.confidence.mean() - cur.confidence.mean())
    summary: dict[str, Any] = {
        "window": len(cur), "reference": len(ref),
        "features": feats,
        "drifted_features": [k for k, f in feats.items() if f["drifted"]],
        "drift_share": round(share, 4), "drift_share_threshold": mp.drift_share,
        "embedding": (embedding_drift(ref.embedding, cur.embedding, mp.embedding_auc)
                      if embed else None),
        "confidence": {**columns["confidence"],
                       "reference_mean": round(float(ref.confidence.mean()), 5),
                       "current_mean": round(float(cur.confidence.mean()), 5),
                       "drop": round(conf_drop, 5), "drop_threshold": mp.confidence_drop},
        "class_mix": {**columns["digit"], "reference": _shares(ref.digit),
                      "current": _shares(cur.digit)},
    }
    reasons = []
    if share >= mp.drift_share:
        reasons.append(f"{share:.0%} of the input features drifted "
                       f"({', '.join(summary['drifted_features'])}; threshold "
                       f"{mp.drift_share:.0%})")
    if summary["embedding"] and summary["embedding"]["drifted"]:
        reasons.append(f"the embeddings drifted (classifier AUC "
                       f"{summary['embedding']['auc']:.3f} > {mp.embedding_auc})")
    if conf_drop > mp.confidence_drop:
        reasons.append(f"mean confidence fell by {conf_drop:.3f} (> {mp.confidence_drop})")
    summary["drift"], summary["reasons"] = bool(reasons), reasons
    return snapshot, summary


def _shares(digits: np.ndarray) -> list[float]:
    counts = np.bincount(digits, minlength=10)[:10]
    return [round(float(c), 4) for c in counts / max(len(digits), 1)]
