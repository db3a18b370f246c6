"""MLflow Model Registry operations: the champion history, manual promote and rollback.

Aliases carry the decisions: `challenger` is the best version of the latest pipeline run,
`champion` is what serves. Every champion change appends one entry to the registered
model's history, and nothing is ever removed from it: the tag `champion_history` lists the
versions that became champion, oldest first, and `champion_actions` and `champion_times`
say, entry by entry, what made the change (register, promote, force, rollback) and when. A
rollback is an entry too; `rollback` returns to the champion before the current one among
the changes no rollback has undone yet (`standing`), so repeated rollbacks walk back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_mlops.core.runtime import UserError
from mnist_mlops.registry.gate import Candidate

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"        # versions (tracking/store.py renumbers them on copy)
ACTIONS_TAG, TIMES_TAG = "champion_actions", "champion_times"
ROLLBACK = "rollback"
# a change found, not made here: the alias was moved in the MLflow UI or by a script
OUTSIDE = "outside"
# an entry written before actions were recorded (the history was then a plain stack)
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class Change:
    """One champion change: `version` became champion by `action`, replacing `previous`."""

    action: str
    version: str
    previous: str | None
    time: str            # ISO 8601, UTC; "" where not recorded

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "version": self.version, "from": self.previous,
                "time": self.time or None}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def candidate(client: MlflowClient, name: str, version: str) -> Candidate:
    mv = client.get_model_version(name, version)
    return Candidate(str(mv.version), mv.tags.get("model_name", "?"),
                     float(mv.tags.get("test_accuracy", "nan")),
                     float(mv.tags.get("cv_val_accuracy_mean", "nan")))


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


def _split(tags: dict[str, str], key: str) -> list[str]:
    return tags.get(key, "").split(",") if tags.get(key) else []


def _fit(values: list[str], n: int, pad: str) -> list[str]:
    """`values` aligned to the n versions: extra ones were written before a crash stopped
    the versions tag; missing ones are the oldest entries, from before they were kept."""
    return values[:n] if len(values) >= n else [pad] * (n - len(values)) + values


def history(client: MlflowClient, name: str) -> list[Change]:
    """Every champion change, oldest first. The versions tag is written last, so entries
    it lacks were never completed; entries older than the actions tag are `unrecorded`."""
    tags = client.get_registered_model(name).tags
    versions = _split(tags, HISTORY_TAG)
    actions, times = _split(tags, ACTIONS_TAG), _split(tags, TIMES_TAG)
    actions, times = _fit(actions, len(versions), UNRECORDED), _fit(times, len(versions), "")
    return [Change(a, v, versions[i - 1] if i else None, t)
            for i, (v, a, t) in enumerate(zip(versions, actions, times, strict=True))]


def standing(changes: list[Change]) -> list[str]:
    """The champions in force, oldest first: each change stacks its version, and a rollback
    takes back the change it undid. The last is the champion, the one before it is where
    a rollback returns."""
    stack: list[str] = []
    for c in changes:
        if c.action == ROLLBACK:
            if stack:
                stack.pop()
        else:
            stack.append(c.version)
    return stack


def _append(client: MlflowClient, name: str, changes: list[Change], new: list[Change]) -> None:
    """Append `new` to the history tags; actions and times first, versions last."""
    entries = changes + new
    for key, values in ((ACTIONS_TAG, [c.action for c in entries]),
                        (TIMES_TAG, [c.time for c in entries]),
                        (HISTORY_TAG, [c.version for c in entries])):
        client.set_registered_model_tag(name, key, ",".join(values))


def set_champion(client: MlflowClient, name: str, version: str, action: str) -> str | None:
    """Point `champion` at `version` and append the change (made by `action`: register,
    promote, force) to the history; return the previous champion."""
    require_version(client, name, version)
    previous = alias_version(client, name, CHAMPION)
    if previous == str(version):
        return previous
    changes = history(client, name)
    new = []
    if previous and (not changes or changes[-1].version != previous):
        new.append(Change(OUTSIDE, previous, changes[-1].version if changes else None, ""))
    new.append(Change(action, str(version), previous, now()))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    _append(client, name, changes, new)
    log.info("%s@champion: v%s -> v%s", name, previous or "-", version)
    return previous


def rollback(client: MlflowClient, name: str) -> str:
    """Move `champion` back to the version that held it before the change still standing
    last; the rollback is appended to the history. Return that version."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise UserError(f"{name} has no champion to roll back")
    changes = history(client, name)
    stack = standing(changes)
    if not stack or stack[-1] != current:
        raise UserError(f"{name}@champion (v{current}) was set outside mnist-mlops, so there "
                        "is no recorded champion before it; choose one with `mnist-mlops "
                        "promote --version N`")
    if len(stack) < 2:
        why = ("every change before it has been rolled back" if len(changes) > 1
               else "it is the first")
        raise UserError(f"{name}@champion (v{current}) has no earlier champion to return "
                        f"to: {why}")
    target = stack[-2]
    require_version(client, name, target)
    client.set_registered_model_alias(name, CHAMPION, target)
    _append(client, name, changes, [Change(ROLLBACK, target, current, now())])
    log.info("%s@champion rolled back: v%s -> v%s", name, current, target)
    return target


def versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every version of registered model `name`, newest first: number, model, accuracies,
    aliases, when it was registered and the gate's word on it."""
    found = client.search_model_versions(f"name='{name}'")
    if not found:
        return []
    # the registered model holds the aliases (a searched version does not carry them)
    held = client.get_registered_model(name).aliases or {}
    return [{"version": str(mv.version), "model": mv.tags.get("model_name"),
             "test_accuracy": float(mv.tags.get("test_accuracy", "nan")),
             "realworld_accuracy": (float(mv.tags["realworld_accuracy"])
                                    if "realworld_accuracy" in mv.tags else None),
             "aliases": sorted(a for a, v in held.items() if str(v) == str(mv.version)),
             "registered": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
             .isoformat(timespec="seconds"),
             "gate": mv.tags.get("gate_decision")}
            for mv in sorted(found, key=lambda mv: -int(mv.version))]


def version_behind(client: MlflowClient, uri: str) -> dict[str, str]:
    """Version and architecture behind `models:/NAME@alias` or `models:/NAME/VERSION`
    (empty for any other model URI): which registered model answers."""
    name, _, ref = uri.removeprefix("models:/").partition("@")
    if ref:
        mv = client.get_model_version_by_alias(name, ref)
    else:
        name, _, version = name.partition("/")
        if not version.isdigit():
            return {}
        mv = client.get_model_version(name, version)
    about = {"version": str(mv.version)}
    if mv.tags.get("architecture"):
        about["architecture"] = mv.tags["architecture"]
    return about
