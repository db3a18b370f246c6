"""Stage `register`: one registry version per evaluated model, then the promotion gate.

Idempotent: a model whose MLflow run already has a version is not registered again. The
decision (who is challenger, whether the champion changed and why) is written as JSON.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_mlops import registry, tracking
from mnist_mlops.config import Params, load_params
from mnist_mlops.fsio import write_json_atomic
from mnist_mlops.runtime import UserError, run_main

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
        raise UserError(f"{name}: its run logged no MLflow model (non-TensorFlow backend?)")
    run_tags = tracking.require_run(run["run_id"], name).data.tags
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
        **{k: v for k, v in run_tags.items() if k in ("data_sha256", "git_commit", "git_dirty")},
    }
    mv = mlflow.register_model(run["model_uri"], reg, tags=tags)
    if str(mv.run_id) != run["run_id"]:
        raise UserError(f"{name}: registered v{mv.version} is not linked to run "
                        f"{run['run_id']}; re-run `dvc repro train@{name}`")
    client.update_model_version(reg, mv.version, description=(
        f"{name} (architecture {tags['architecture']}), trained by run {run['run_id']} on data "
        f"sha256 {tags.get('data_sha256', '?')[:12]} at git commit "
        f"{tags.get('git_commit', '?')[:12]}{' (dirty)' if tags.get('git_dirty') == 'true' else ''}"
        f". Test accuracy {test['test_accuracy']:.4f}; CV accuracy "
        f"{cv['cv_val_accuracy_mean']:.4f} ± {cv['cv_val_accuracy_std']:.4f}."))
    log.info("registered %s as %s v%s", name, reg, mv.version)
    return str(mv.version), True


def register(params: Params) -> dict[str, Any]:
    """Register what is new, then let the gate decide on the best new version.

    Held under a lock on the store: two `register` stages at once (parallel experiments)
    would otherwise both register the same run and both promote."""
    tracking.setup(params.mlflow)
    with tracking.store_lock(params.mlflow, "register", params.paths.checkpoints), \
            tracking.outage_as_user_error():
        return _register(params)


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
    new = [registry.candidate(client, reg, v) for v, is_new in found.values() if is_new]
    champ_v = registry.alias_version(client, reg, registry.CHAMPION)
    record: dict[str, Any] = {
        "registered_model": reg, "versions": versions,
        "new_versions": [c.version for c in new], "previous_champion": champ_v,
        "margin": params.register.margin, "floor": params.register.floor,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not new:
        reason = "no new model versions; nothing to decide"
        record.update(challenger=None, promoted=False, reason=reason, champion=champ_v)
        log.info("%s: %s", reg, reason)
        return record
    best = max(new, key=lambda c: (c.test_accuracy, -int(c.version)))
    client.set_registered_model_alias(reg, registry.CHALLENGER, best.version)
    champ = registry.candidate(client, reg, champ_v) if champ_v else None
    decision = registry.decide(best, champ, margin=params.register.margin,
                               floor=params.register.floor)
    if decision.promote:
        registry.set_champion(client, reg, best.version)
    verdict = f"{'promoted' if decision.promote else 'refused'}: {decision.reason}"
    client.set_model_version_tag(reg, best.version, "gate_decision", verdict)
    mv = client.get_model_version(reg, best.version)
    client.update_model_version(reg, best.version,
                                description=f"{mv.description} Gate: {verdict}.")
    log.info("%s: challenger v%s (%s); %s: %s", reg, best.version, best.model,
             "promoted" if decision.promote else "champion kept", decision.reason)
    record.update(
        challenger={"version": best.version, "model": best.model,
                    "test_accuracy": best.test_accuracy},
        promoted=decision.promote, reason=decision.reason,
        champion=registry.alias_version(client, reg, registry.CHAMPION))
    return record


def main() -> None:
    params = load_params()
    write_json_atomic(params.paths.registry, register(params))


if __name__ == "__main__":
    run_main(main)
