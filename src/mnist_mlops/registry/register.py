"""Stage `register`: one registry version per evaluated model, then the promotion gate.

Idempotent: a model whose MLflow run already has a version is not registered again. The
decision (who is challenger, whether the champion changed and why) is written as JSON.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import Params, load_params
from mnist_mlops.core.model_files import ONNX_FILE, PARITY_FILE
from mnist_mlops.core.runtime import UserError, run_main
from mnist_mlops.data import realworld_set
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.inference.onnx_export import Parity
from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.registry import aliases, gate, records
from mnist_mlops.tracking import logged_model, mlflow_io

log = logging.getLogger(__name__)


def _read(path: Any) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro` up to evaluate first") from None


def ensure_version(client: MlflowClient, params: Params, name: str) -> tuple[str, bool]:
    """(registry version for model `name`'s latest run, whether it was registered now)."""
    paths, reg = params.paths, params.mlflow.registered_model
    run = _read(paths.run_file(name))
    if not run.get("model_uri"):
        raise UserError(
            f"{name}: its training run's MLflow writes were never delivered (the tracking store "
            f"was unreachable when train@{name} ended), so there is no MLflow model to "
            f"register. Once the store is back, run `dvc repro`: it delivers them from "
            f"{params.paths.checkpoints}/ without retraining, then registers")
    run_tags = mlflow_io.require_run(run["run_id"], name).data.tags
    existing = client.search_model_versions(f"name='{reg}' and run_id='{run['run_id']}'")
    if existing:
        return str(existing[0].version), False
    cv = _read(paths.train_dir(name) / "cv.json")
    test = _read(paths.metrics_file(name))
    tags = {
        "model_name": name, "architecture": params.model(name).architecture,
        "test_accuracy": f"{test['test_accuracy']:.6f}",
        "cv_val_accuracy_mean": f"{cv['cv_val_accuracy_mean']:.6f}",
        "cv_val_accuracy_std": f"{cv['cv_val_accuracy_std']:.6f}",
        **({"realworld_accuracy": f"{test['realworld_accuracy']:.6f}"}
           if "realworld_accuracy" in test else {}),
        # the calibration the model carries, and what it did on the test digits (evaluate)
        **{k: f"{test[k]:.6g}" for k in ("temperature", "unsure_below", "test_ece_calibrated",
                                         "test_unsure_rate") if k in test},
        **{k: v for k, v in run_tags.items() if k in ("data_sha256", "git_commit", "git_dirty")},
    }
    if params.register.onnx:
        tags.update(with_onnx(params, name, run["model_uri"]))
    mv = mlflow.register_model(run["model_uri"], reg, tags=tags)
    if str(mv.run_id) != run["run_id"]:
        raise UserError(f"{name}: registered v{mv.version} is not linked to run "
                        f"{run['run_id']}; re-run `dvc repro train@{name}`")
    client.update_model_version(reg, mv.version, description=(
        f"{name} (architecture {tags['architecture']}), trained by run {run['run_id']} on data "
        f"sha256 {tags.get('data_sha256', '?')[:12]} at git commit "
        f"{tags.get('git_commit', '?')[:12]}{' (dirty)' if tags.get('git_dirty') == 'true' else ''}"
        f". Test accuracy {test['test_accuracy']:.4f}; CV accuracy "
        f"{cv['cv_val_accuracy_mean']:.4f} ± {cv['cv_val_accuracy_std']:.4f}."
        + (f" ONNX beside the .h5 (largest probability difference from Keras on the test "
           f"digits: {tags['onnx_max_diff']})." if "onnx_max_diff" in tags else "")))
    log.info("registered %s as %s v%s", name, reg, mv.version)
    return str(mv.version), True


def with_onnx(params: Params, name: str, model_uri: str) -> dict[str, str]:
    """Add the ONNX file evaluate exported and checked to the MLflow model before it is
    registered (logged_model.add_onnx); refused, naming the worst test digit, when the
    check failed. The version's tags say it has the file."""
    folder = params.paths.onnx_dir(name)
    try:
        report = json.loads((folder / PARITY_FILE).read_text())
    except (OSError, ValueError):
        report = {}
    if not report.get("exported"):
        raise UserError(f"{name}: no ONNX export in {folder} (register.onnx is true): run "
                        f"`dvc repro evaluate@{name}`, or set register.onnx: false to register "
                        "the .h5 alone")
    check = Parity(**{k: report[k] for k in Parity.__dataclass_fields__})
    if not check.ok:
        raise UserError(f"{name}: not registered: its ONNX file ({folder / ONNX_FILE}) does not "
                        f"answer like the Keras model: {check.problem()}. Set register.onnx: "
                        "false to register the .h5 alone (predict and serve then use Keras)")
    logged_model.add_onnx(model_uri, folder / ONNX_FILE)
    return {"onnx": "true", "onnx_max_diff": f"{check.max_diff:.3g}"}


def register(params: Params) -> dict[str, Any]:
    """Register what is new, then let the gate decide on the best new version.

    Held under a lock on the store: two `register` stages at once (parallel experiments)
    would otherwise both register the same run and both promote."""
    exp_id = mlflow_io.setup(params.mlflow)
    with mlflow_io.store_lock(params.mlflow, "register", params.paths.checkpoints), \
            mlflow_io.outage_as_user_error():
        record = _register(params)
    log.info("%s: runs and versions in the MLflow UI: %s", params.mlflow.registered_model,
             mlflow_io.ui_url(params.mlflow.resolved_tracking_uri(), exp_id))
    return record


def evidence(params: Params, version: str, champion: str) -> gate.Evidence:
    """Both versions' predictions on the same test images and real-world pictures (per kind
    too), recomputed on the current prepared set: versions registered before the set had
    kinds are judged by kind as well."""
    paths, reg = params.paths, params.mlflow.registered_model
    prepared = paths.realworld / realworld_set.PREPARED
    for needed, stage in ((paths.dataset, "parse"), (prepared, "realworld")):
        if not needed.is_file():
            return gate.Evidence(missing=f"{needed} not found (`dvc repro {stage}` makes it)")
    data, rs = load_dataset(paths.dataset), realworld_set.load(prepared)
    x, y = data["x_test"], data["y_test"].astype(np.int64)
    right, rw, kinds, rw_right = [], [], [], []
    for v in (version, champion):
        model = Predictor(f"models:/{reg}/{v}")
        right.append(model.predict_proba(x).argmax(axis=1) == y)
        pred = realworld_set.predictions(model.predict_proba, rs)
        rw.append(realworld_set.accuracy(rs, pred)[realworld_set.ACCURACY])
        kinds.append(realworld_set.by_kind(rs, pred))
        rw_right.append(pred == rs.y)
    worse_p = {k: gate.mcnemar(rw_right[1][rs.kind == k], rw_right[0][rs.kind == k]).p_value
               for k in rs.kinds()}       # the champion better: the challenger worse
    return gate.Evidence(gate.mcnemar(*right), rw[0], rw[1], challenger_by_kind=kinds[0],
                         champion_by_kind=kinds[1], kind_worse_p=worse_p)


def judge(client: MlflowClient, params: Params, version: str) -> gate.Decision:
    """The gate's verdict on making `version` the champion. The paired evidence (which
    loads both models) is gathered only when floor and margin would let it through."""
    reg = params.mlflow.registered_model
    challenger = aliases.candidate(client, reg, version)
    champ_v = aliases.alias_version(client, reg, aliases.CHAMPION)
    champion = aliases.candidate(client, reg, champ_v) if champ_v else None
    first = gate.decide(challenger, champion, params.register)
    if not first.promote or champion is None:
        return first
    log.info("%s: pairing v%s with champion v%s on the test and real-world sets", reg,
             version, champ_v)
    return gate.decide(challenger, champion, params.register,
                       evidence(params, version, str(champ_v)))


def tag_decision(client: MlflowClient, reg: str, version: str, decision: gate.Decision,
                 how: str) -> str:
    """The verdict on the version itself: tags and a line in its description."""
    verdict = f"{how}: {decision.reason}"
    tags = {"gate_decision": verdict}
    if decision.evidence.paired:
        pt = decision.evidence.paired
        tags.update(gate_p_value=f"{pt.p_value:.4g}", gate_discordant=f"{pt.better}/{pt.worse}")
    for k, v in tags.items():
        client.set_model_version_tag(reg, version, k, v)
    mv = client.get_model_version(reg, version)
    client.update_model_version(reg, version, description=f"{mv.description} Gate: {verdict}.")
    return verdict


def _register(params: Params) -> dict[str, Any]:
    client = MlflowClient()
    reg = params.mlflow.registered_model
    try:
        client.get_registered_model(reg)
    except MlflowException:
        client.create_registered_model(reg, description="MNIST digit classifiers from the "
                                       "mnist-mlops pipeline; @champion serves.")
    found = {name: ensure_version(client, params, name) for name in params.models}
    versions = {name: v for name, (v, _) in found.items()}
    # every version not yet judged, not only those registered now: a register that died
    # after registering (an outage, a kill) has its versions judged by the next one
    new = [aliases.candidate(client, reg, v) for v in versions.values()
           if "gate_decision" not in client.get_model_version(reg, v).tags]
    champ_v = aliases.alias_version(client, reg, aliases.CHAMPION)
    facts: dict[str, Any] = {
        "versions": versions, "new_versions": [c.version for c in new],
        "previous_champion": champ_v, "gate": params.register.model_dump()}
    if not new:
        reason = "no new model versions; nothing to decide"
        log.info("%s: %s", reg, reason)
        return records.write_record(client, reg, params.paths.registry, "register",
                                     **facts, candidate=None, promoted=False, reason=reason)
    # chosen by cross-validation, so the test set judges it without having picked it
    def rank(c: gate.Candidate) -> tuple[float, float, int]:
        finite = [v if v == v else -1.0 for v in (c.cv_accuracy, c.test_accuracy)]  # NaN last
        return finite[0], finite[1], -int(c.version)

    best = max(new, key=rank)
    decision = judge(client, params, best.version)
    client.set_registered_model_alias(reg, aliases.CHALLENGER, best.version)
    if decision.promote:
        aliases.set_champion(client, reg, best.version, "register")
    tag_decision(client, reg, best.version, decision,
                 "promoted" if decision.promote else "refused")
    for c in new:
        if c.version != best.version:     # judged too: not the best new version by CV
            client.set_model_version_tag(reg, c.version, "gate_decision",
                                         f"not the challenger: v{best.version} ({best.model}) "
                                         "had the best CV accuracy of this run")
    log.info("%s: challenger v%s (%s); %s: %s", reg, best.version, best.model,
             "promoted" if decision.promote else "champion kept", decision.reason)
    return records.write_record(client, reg, params.paths.registry, "register", **facts,
                                 candidate=best.version, gate_passed=decision.promote,
                                 **decision.record())


def promote(params: Params, version: str, force: bool = False) -> dict[str, Any]:
    """`mnist-mlops promote`: the gate's checks apply to a hand promotion too; `force`
    overrides a refusal, and the version says so."""
    mlflow_io.setup(params.mlflow)
    reg = params.mlflow.registered_model
    with mlflow_io.store_lock(params.mlflow, "register", params.paths.checkpoints), \
            mlflow_io.outage_as_user_error():
        client = MlflowClient()
        aliases.require_version(client, reg, version)
        previous = aliases.alias_version(client, reg, aliases.CHAMPION)
        if previous == version:
            raise UserError(f"v{version} is already {reg}@champion; nothing to do")
        decision = judge(client, params, version)
        if not decision.promote and not force:
            raise UserError(f"not promoting v{version}: {decision.reason}. Pass --force to "
                            "promote it anyway (the version and the record will say so)")
        aliases.set_champion(client, reg, version,
                              "promote" if decision.promote else "force")
        how = "promoted by hand" if decision.promote else "forced by hand against the gate"
        tag_decision(client, reg, version, decision, how)
        if not decision.promote:
            log.warning("%s v%s promoted with --force although the gate says: %s", reg,
                        version, decision.reason)
        return _hand_record(client, params, "promote", previous_champion=previous,
                            candidate=version, gate=params.register.model_dump(),
                            **{**decision.record(), "promoted": True},
                            gate_passed=decision.promote, forced=not decision.promote)


def rollback(params: Params) -> dict[str, Any]:
    """`mnist-mlops rollback`: the previous champion again, and the record says so."""
    mlflow_io.setup(params.mlflow)
    reg = params.mlflow.registered_model
    with mlflow_io.store_lock(params.mlflow, "register", params.paths.checkpoints), \
            mlflow_io.outage_as_user_error():
        client = MlflowClient()
        previous = aliases.alias_version(client, reg, aliases.CHAMPION)
        target = aliases.rollback(client, reg)
        return _hand_record(client, params, "rollback", previous_champion=previous,
                            candidate=target, promoted=True,
                            reason=f"rolled back from v{previous}")


def _hand_record(client: MlflowClient, params: Params, action: str, **facts: Any
                 ) -> dict[str, Any]:
    """The record of a promote or rollback, in its own file: the register stage's
    reports/registry.json stays as the stage wrote it, so DVC sees no change. An offline
    `predict` (a clone without the store) reads whichever record is newer."""
    path = records.by_hand_record(params.paths)
    record = records.write_record(client, params.mlflow.registered_model, path, action,
                                  **facts)
    log.info("recorded in %s: commit it, so that a clone without the tracking store "
             "predicts with this champion", path)
    return record


def main() -> None:
    register(load_params())


if __name__ == "__main__":
    run_main(main)
