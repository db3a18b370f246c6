"""Stage `evaluate@<model>`: test-set metrics, per-class report, confusion, speed.

Writes DVC metrics (metrics/<name>.json), DVC plots (predictions.csv for the confusion
template, PNGs) and logs all of it to the model's MLflow run from the train stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from mnist_mlops.core import figures
from mnist_mlops.core.calibration import effect, effect_text, reliability
from mnist_mlops.core.config import Params, load_params
from mnist_mlops.core.fsio import write_json_atomic, write_text_atomic
from mnist_mlops.core.mnist import NUM_CLASSES
from mnist_mlops.core.model_files import ONNX_FILE
from mnist_mlops.core.runtime import run_main
from mnist_mlops.data import realworld_set
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.inference import onnx_draft, onnx_export
from mnist_mlops.inference.keras_model import members
from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.inference.timing import onnx_answers, throughput
from mnist_mlops.tracking import mlflow_io

log = logging.getLogger(__name__)
# Keras is imported only where the train stage left no ONNX export to take
# (inference/onnx_draft.py), and then inside inference/: after run_main has quietened
# TensorFlow's start-up lines (runtime.quiet_native_stderr).

WORST = 24


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy, cross-entropy loss, per-class P/R/F1 and the confusion matrix."""
    pred = proba.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0)).mean())
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=range(NUM_CLASSES),
                                                        zero_division=0)
    return {
        "accuracy": float((pred == y).mean()), "loss": loss,
        "macro_f1": float(f1.mean()),
        "per_class": {str(c): {"precision": float(p[c]), "recall": float(r[c]),
                               "f1": float(f1[c]), "support": int(support[c])}
                      for c in range(NUM_CLASSES)},
        "confusion": confusion_matrix(y, pred, labels=range(NUM_CLASSES)).tolist(),
    }


def worst_errors(y: np.ndarray, proba: np.ndarray, k: int = WORST) -> np.ndarray:
    """Indices of the k most confident mistakes."""
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    return wrong[np.argsort(-proba[wrong, pred[wrong]], kind="stable")][:k]


def member_metrics(embedding: np.ndarray | None, y: np.ndarray, members: int
                   ) -> dict[str, float]:
    """Each fold model's own test accuracy: what one network of the ensemble achieves. An
    ensemble's embedding is its members' probabilities side by side (keras_model.two_outputs),
    on ONNX Runtime and on Keras alike; nothing for one network."""
    if not members or embedding is None:
        return {}
    per_member = np.asarray(embedding).reshape(len(y), members, -1).argmax(axis=2)
    accs = [float((per_member[:, k] == y).mean()) for k in range(members)]
    return {"test_accuracy_member_mean": float(np.mean(accs)),
            "test_accuracy_member_min": min(accs), "test_accuracy_member_max": max(accs)}


def predictions_csv(y: np.ndarray, pred: np.ndarray) -> str:
    rows = "\n".join(f"{a},{b}" for a, b in zip(y.tolist(), pred.tolist(), strict=True))
    return "actual,predicted\n" + rows + "\n"


@dataclass(frozen=True)
class Answers:
    """The test digits' answers and what gave them."""

    predictor: Predictor        # ONNX Runtime on the export, or Keras on the .h5
    proba: np.ndarray
    timings: dict[str, float]   # speed.json: Keras' and ONNX Runtime's, the export's
    onnx: dict[str, Any]        # the export's parity report ({"exported": False, ...})
    members: int                # fold models inside an ensemble (0: one network)
    draft: onnx_draft.Draft | None = None   # the train stage's export, if it was taken
    embedding: np.ndarray | None = None     # an ensemble's members' answers, if kept


def answer_test(params: Params, name: str, x: np.ndarray) -> Answers:
    """ONNX Runtime's answers on the export the train stage checked against Keras (the
    answers its check kept, where they answer these digits), without importing TensorFlow;
    where there is none to take (onnx_draft.take says why), Keras' answers on the .h5,
    exported and checked here."""
    h5, folder = params.paths.model_file(name), params.paths.onnx_dir(name)
    draft = onnx_draft.take(params.paths.checkpoints, h5) if params.register.onnx else None
    if draft is not None:
        try:
            report = onnx_draft.install(draft, folder)
        except OSError as exc:   # taken away meanwhile (a parallel experiment's evaluate)
            log.info("%s: the train stage's ONNX export is gone (%s): exporting it again",
                     name, exc)
        else:
            predictor = Predictor(str(folder / ONNX_FILE))
            kept = onnx_draft.answers(draft, x)
            if kept is not None:
                proba, embedding, speed = kept.proba, kept.embedding, kept.speed
            else:
                proba, embedding, speed = onnx_answers(predictor, x, draft.members)
            return Answers(predictor, proba, {
                **_named("infer_", draft.keras_speed), **_named("infer_onnx_", speed),
                "onnx_export_s": report["export_s"], "onnx_parity_s": report["parity_s"]},
                report, draft.members, draft, embedding)
    predictor = Predictor(str(h5), runtime="keras")
    proba, speed = throughput(predictor, x)
    timings = _named("infer_", speed)
    ort_speed: dict[str, float] = {}
    n_members = len(members(predictor.keras_model))
    onnx = export_onnx(params, name, predictor, proba, _timed(x, ort_speed, n_members))
    if onnx["exported"]:     # the ONNX file's speed beside Keras' (speed.json, MLflow)
        timings.update(onnx_export_s=onnx["export_s"], onnx_parity_s=onnx["parity_s"],
                       **_named("infer_onnx_", ort_speed))
    return Answers(predictor, proba, timings, onnx, n_members)


def _timed(x: np.ndarray, speed: dict[str, float], n_members: int) -> onnx_export.Answerer:
    """The export check's ONNX Runtime pass over `x`, timed as the train stage's check
    times it: its figures into `speed`."""
    def answer(onnx_file: Path) -> np.ndarray:
        proba, _, measured = onnx_answers(Predictor(str(onnx_file)), x, n_members)
        speed.update(measured)
        return proba
    return answer


def _named(prefix: str, speed: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in speed.items()}


def evaluate(params: Params, name: str) -> dict[str, Any]:
    paths = params.paths
    data = load_dataset(paths.dataset)
    x, y = data["x_test"], data["y_test"].astype(np.int64)
    answers = answer_test(params, name, x)
    predictor, proba = answers.predictor, answers.proba
    m = classification_metrics(y, proba)
    out = paths.eval_dir(name)
    pred = proba.argmax(axis=1)
    worst = worst_errors(y, proba)

    write_text_atomic(out / "predictions.csv", predictions_csv(y, pred))
    write_json_atomic(out / "classes.json", m["per_class"])
    figures.confusion_matrix(np.array(m["confusion"]), out / "confusion.png",
                             f"{name}: test accuracy {m['accuracy']:.4f}")
    figures.digit_grid(x[worst], [f"true {y[i]} → {pred[i]} ({proba[i, pred[i]]:.2f})"
                                  for i in worst], out / "misclassified.png",
                       f"{name}: most confident mistakes")
    rs = realworld_set.load(paths.realworld / realworld_set.PREPARED)
    rw_pred = realworld_set.predictions(predictor.predict_proba, rs)
    rw_plain = realworld_set.plain_predictions(predictor.predict_proba, rs)
    write_text_atomic(out / "realworld.csv", realworld_set.answers_csv(rs, rw_pred, rw_plain))
    embedding = answers.embedding
    if answers.members and embedding is None:
        embedding = predictor.answer(x)[1]
    metrics = {"test_accuracy": m["accuracy"], "test_loss": m["loss"],
               "test_macro_f1": m["macro_f1"], "test_errors": int((pred != y).sum()),
               **member_metrics(embedding, y, answers.members),
               **realworld_set.accuracy(rs, rw_pred, rw_plain)}
    log.info("%s: real-world accuracy by kind of picture: %s", name,
             realworld_set.table_line(metrics))
    metrics.update(calibration_metrics(predictor, proba, y, out / "reliability.png"))
    give_up = params.train.unsure_give_up
    if metrics.get("test_unsure_right_given_up", 0.0) > 2 * give_up:
        log.warning("%s: on the test digits the unsure line flags %.1f%% of the right answers, "
                    "more than twice the %.1f%% it was chosen for on the folds (a refit on all "
                    "images or an ensemble can be more or less sure than its folds): its "
                    "answers are unsure more often than train.unsure_give_up means", name,
                    100 * metrics["test_unsure_right_given_up"], 100 * give_up)
    parity = {"onnx_max_diff": answers.onnx["max_diff"]} if answers.onnx["exported"] else {}
    _log_to_mlflow(params, name, {**metrics, **answers.timings, **parity}, m["per_class"], out)
    write_json_atomic(out / "speed.json", answers.timings)
    write_json_atomic(paths.metrics_file(name), {**cv_numbers(paths.train_dir(name)), **metrics})
    if answers.draft is not None:     # kept till here: a failed evaluate takes it again
        onnx_draft.discard(answers.draft)
    on_onnx = predictor.about["runtime"] == "onnx"
    speed = {k: answers.timings[f"infer_{'onnx_' if on_onnx else ''}{k}"]
             for k in ("images_per_s", "step_latency_ms_p50")}
    log.info("%s: test accuracy %.4f, loss %.4f; real-world accuracy %.4f (%d pictures); "
             "answered by %s: %.0f images/s, %.2f ms for one image", name, m["accuracy"],
             m["loss"], metrics["realworld_accuracy"], len(rs),
             "ONNX Runtime" if on_onnx else "Keras", speed["images_per_s"],
             speed["step_latency_ms_p50"])
    return metrics


def calibration_metrics(predictor: Predictor, proba: np.ndarray, y: np.ndarray, figure: Path
                        ) -> dict[str, float]:
    """What the model's calibration (fitted by the train stage on out-of-fold answers) does
    on the test set: the calibration error before and after, the unsure answers; the
    reliability diagram. Nothing for a model without one."""
    cal = predictor.calibration
    if cal is None:
        return {}
    after = cal.apply(proba)
    figures.reliability_diagram(
        {"model's own": reliability(proba, y), "calibrated": reliability(after, y)}, figure,
        f"{predictor.about['architecture']}: test digits, temperature {cal.temperature:.2f}")
    found = effect(cal, proba, y)
    log.info("%s on the test digits: %s", predictor.about["architecture"], effect_text(found))
    return {"test_ece": found["ece_before"], "test_ece_calibrated": found["ece_after"],
            "test_unsure_rate": found["unsure_rate"],
            "test_unsure_right_given_up": found["unsure_right_given_up"],
            "test_unsure_wrong_caught": found["unsure_wrong_caught"],
            "temperature": cal.temperature, "unsure_below": cal.unsure_below}


def export_onnx(params: Params, name: str, predictor: Predictor, proba: np.ndarray,
                answer: onnx_export.Answerer) -> dict[str, Any]:
    """The model as ONNX, checked against Keras' answers on the test digits
    (paths.onnx/<name>/), carrying the .h5's calibration: what register records beside the
    .h5, and what predict and serve run on. `register.onnx: false` skips it."""
    folder = params.paths.onnx_dir(name)
    if not params.register.onnx:
        return onnx_export.skipped(folder, "register.onnx is false in params.yaml")
    model = predictor.keras_model
    metadata = onnx_export.export_metadata(model, name, predictor.calibration)
    return onnx_export.export_checked(model, folder, answer, proba, metadata,
                                      params.paths.model_file(name))


def cv_numbers(train_dir: Path) -> dict[str, float]:
    """The train stage's cross-validation result, for the one metrics file per model."""
    cv = json.loads((train_dir / "cv.json").read_text())
    return {k: cv[k] for k in ("cv_val_accuracy_mean", "cv_val_accuracy_std",
                               "cv_val_loss_mean", "cv_val_loss_std")}


def _log_to_mlflow(params: Params, name: str, metrics: dict[str, float],
                   per_class: dict[str, dict[str, float]], out: Path) -> None:
    """Attach the test results to the parent run the train stage created, without reopening
    it (its status and duration stay those of the training)."""
    run_id = json.loads(params.paths.run_file(name).read_text())["run_id"]
    mlflow_io.setup(params.mlflow)
    mlflow_io.require_run(run_id, name)
    with mlflow_io.outage_as_user_error():
        client = MlflowClient()
        ts = int(time.time() * 1000)
        values = {**metrics, **{f"test_f1_class_{c}": v["f1"] for c, v in per_class.items()}}
        client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in values.items()])
        client.log_artifacts(run_id, str(out), "evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help="model name from params.yaml `models:`")
    args = ap.parse_args()
    params = load_params()
    params.model(args.model)
    evaluate(params, args.model)


if __name__ == "__main__":
    run_main(main)
