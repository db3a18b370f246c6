"""MLflow Model Registry operations: the promotion gate, manual promote and rollback.

Aliases carry the decisions: `challenger` is the best version of the latest pipeline run,
`champion` is what serves. Every champion change is appended to the registered model's
`champion_history` tag, which is what `rollback` walks back.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_mlops.core.fsio import write_json_atomic
from mnist_mlops.core.runtime import UserError
from mnist_mlops.registry.gate import Candidate

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"


def candidate(client: MlflowClient, name: str, version: str) -> Candidate:
    mv = client.get_model_version(name, version)
    return Candidate(str(mv.version), mv.tags.get("model_name", "?"),
                     float(mv.tags.get("test_accuracy", "nan")),
                     float(mv.tags.get("cv_val_accuracy_mean", "nan")))


def _describe(client: MlflowClient, name: str, version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    mv = client.get_model_version(name, version)
    return {"version": str(version), "model": mv.tags.get("model_name"),
            "test_accuracy": float(mv.tags.get("test_accuracy", "nan")),
            "realworld_accuracy": (float(mv.tags["realworld_accuracy"])
                                   if "realworld_accuracy" in mv.tags else None)}


def write_record(client: MlflowClient, name: str, path: Path, action: str,
                 **facts: Any) -> dict[str, Any]:
    """The decision record (reports/registry.json) after `action` (register, promote,
    rollback). Champion, challenger and history are read back from the registry as it now
    is, so the record cannot contradict the aliases."""
    record = {
        "registered_model": name, "action": action,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"), **facts,
        "champion": alias_version(client, name, CHAMPION),
        "champion_model": _describe(client, name, alias_version(client, name, CHAMPION)),
        "challenger": _describe(client, name, alias_version(client, name, CHALLENGER)),
        "champion_history": _history(client, name),
    }
    write_json_atomic(path, record)
    return record


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def require_version(client: MlflowClient, name: str, version: str) -> None:
    """Refuse a version (or registered model) that does not exist, saying what does."""
    try:
        versions = [str(mv.version) for mv in client.search_model_versions(f"name='{name}'")]
    except MlflowException as exc:
        raise UserError(f"cannot read registered model {name!r}: {exc.message}") from None
    if not versions:
        raise UserError(f"registered model {name!r} has no versions; run `dvc repro` first")
    if str(version) not in versions:
        known = ", ".join(sorted(versions, key=int))
        raise UserError(f"{name} has no version {version}; existing versions: {known}")


def _history(client: MlflowClient, name: str) -> list[str]:
    tag = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in tag.split(",") if v]


def set_champion(client: MlflowClient, name: str, version: str) -> str | None:
    """Point `champion` at `version`, recording it in the history; return the previous one."""
    require_version(client, name, version)
    previous = alias_version(client, name, CHAMPION)
    if previous == str(version):
        return previous
    client.set_registered_model_alias(name, CHAMPION, str(version))
    history = _history(client, name)
    if previous and (not history or history[-1] != previous):
        history.append(previous)
    history.append(str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    log.info("%s@champion: v%s -> v%s", name, previous or "-", version)
    return previous


def rollback(client: MlflowClient, name: str) -> str:
    """Move `champion` back to the version that held it before; return that version."""
    history = _history(client, name)
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise UserError(f"{name} has no champion to roll back")
    if len(history) < 2 or history[-1] != current:
        raise UserError(f"{name}@champion (v{current}) has no earlier champion to return to")
    history.pop()
    target = history[-1]
    require_version(client, name, target)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    log.info("%s@champion rolled back: v%s -> v%s", name, current, target)
    return target
