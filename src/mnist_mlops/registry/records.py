"""The registry's decision records: the register stage's `paths.registry`
(reports/registry.json) and the by-hand record of `promote` and `rollback` beside it.

Written and read here only. A clone without the tracking store (after `dvc pull`) predicts
with the champion the newest record names, from its .h5 (serving/predict.py asks
`recorded_champion_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import Params, Paths
from mnist_mlops.core.fsio import write_json_atomic
from mnist_mlops.core.runtime import UserError
from mnist_mlops.registry import aliases


def _describe(client: MlflowClient, name: str, version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    mv = client.get_model_version(name, version)
    # run_id: which training made it, so that a clone can tell whether its models/<model>.h5
    # (whose run reports/train/<model>/run.json names) is this version's file
    return {"version": str(version), "model": mv.tags.get("model_name"), "run_id": mv.run_id,
            "test_accuracy": float(mv.tags.get("test_accuracy", "nan")),
            "realworld_accuracy": (float(mv.tags["realworld_accuracy"])
                                   if "realworld_accuracy" in mv.tags else None)}


def write_record(client: MlflowClient, name: str, path: Path, action: str,
                 **facts: Any) -> dict[str, Any]:
    """A decision record after `action` (register, promote, rollback): the register stage's
    reports/registry.json, or the record of promote and rollback beside it. Champion,
    challenger and history are read back from the registry as it now is, so the record
    cannot contradict the aliases; the history's length orders the records (it only grows)."""
    changes = aliases.history(client, name)
    champion = aliases.alias_version(client, name, aliases.CHAMPION)
    challenger = aliases.alias_version(client, name, aliases.CHALLENGER)
    record = {
        "registered_model": name, "action": action, "decided_at": aliases.now(), **facts,
        "champion": champion,
        "champion_model": _describe(client, name, champion),
        "challenger": _describe(client, name, challenger),
        "champion_history": [c.version for c in changes],
        "champion_changes": [c.to_dict() for c in changes],
    }
    write_json_atomic(path, record)
    return record


def by_hand_record(paths: Paths) -> Path:
    """The record `promote` and `rollback` write, beside the register stage's record: not
    that stage's output, which DVC would then see changed and run the stage again."""
    return paths.registry.with_name(f"{paths.registry.stem}-by-hand.json")


def recorded_champion(params: Params) -> tuple[Path, dict[str, Any]] | None:
    """The latest decision record naming a champion: the register stage's or the last
    promote/rollback's, whichever was written after more champion changes (the history
    only grows), the later one on a tie."""
    found = []
    for path in (params.paths.registry, by_hand_record(params.paths)):
        record = read_record(path)
        if record and record.get("champion"):
            order = (len(record.get("champion_history") or ()), record.get("decided_at", ""))
            found.append((order, path, record))
    return max(found, key=lambda f: f[0])[1:] if found else None


def recorded_champion_file(params: Params, record: dict[str, Any]) -> Path:
    """The recorded champion's .h5 in this checkout. models/<model>.h5 is that version only
    if the same training run made it: reports/train/<model>/run.json names the run (older
    records: their `versions` map the models of the run to versions)."""
    version, about = str(record["champion"]), record.get("champion_model") or {}
    versions = {m: str(v) for m, v in (record.get("versions") or {}).items()}
    name = about.get("model") or next((m for m, v in versions.items() if v == version), None)
    if name is None:
        raise UserError(f"(v{version}) does not name its model")
    path, run_file = params.paths.model_file(name), params.paths.run_file(name)
    missing = [str(p) for p in (path, run_file) if not p.is_file()
               and (p == path or about.get("run_id"))]
    if missing:
        raise UserError(f"is v{version} ({name}), but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not here: "
                        f"`dvc pull train@{name}`")
    try:
        run_id = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() else None
    except ValueError:
        run_id = None
    if (run_id != about["run_id"]) if about.get("run_id") else versions.get(name) != version:
        raise UserError(f"is v{version} ({name}), but {path} is from another training run: "
                        "check out the commit that trained it and `dvc pull`")
    return path


def read_record(path: Path) -> dict[str, Any] | None:
    """The decision record at `path`; None where there is none (or it is unreadable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def as_markdown(rec: dict[str, Any]) -> list[str]:
    """The decision record as Markdown: verdict, both models, and the gate's evidence."""
    def who(m: dict[str, Any] | None) -> str:
        if not m:
            return "none"
        rw = m.get("realworld_accuracy")
        return (f"v{m['version']} {m.get('model') or ''} (test accuracy "
                f"{m['test_accuracy']:.4f}" + (f", real-world {rw:.4f})" if rw else ")"))
    lines = [f"- decision ({rec.get('action', 'register')}): "
             f"**{'promoted' if rec.get('promoted') else 'champion kept'}** — {rec.get('reason')}",
             f"- champion: {who(rec.get('champion_model'))}; previous champion: "
             f"v{rec.get('previous_champion')}",
             f"- challenger: {who(rec.get('challenger'))}"]
    pt = rec.get("paired_test")
    if pt:
        lines.append(f"- paired test (McNemar, one-sided): {pt['better']} test digits only the "
                     f"challenger gets right, {pt['worse']} only the champion; p = "
                     f"{pt['p_value']:.3g} (alpha {rec.get('gate', {}).get('alpha', '?')})")
    rw = rec.get("realworld_accuracy") or {}
    if rw.get("challenger") is not None:
        lines.append(f"- real-world set: challenger {rw['challenger']:.4f}, champion "
                     f"{rw['champion']:.4f}")
    kinds = rec.get("realworld_accuracy_by_kind") or {}     # records since the set has kinds
    if kinds:
        lines.append("- real-world set by kind (challenger / champion): " + ", ".join(
            f"{k} {v['challenger']:.4f} / {v['champion']:.4f}" for k, v in kinds.items()))
    return [*lines, ""]
