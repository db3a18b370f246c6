"""The champion history on a real registry (MLflow on SQLite): every change is appended,
rollbacks included, and repeated rollbacks walk back through the changes still standing."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_mlops.core.runtime import UserError
from mnist_mlops.registry import aliases

REG = "digits"


@pytest.fixture
def client(tmp_path: Path, mlflow_db: str) -> MlflowClient:
    """A registered model with versions 1-5 (their source: an empty folder; never loaded)."""
    c = MlflowClient(mlflow_db)
    c.create_registered_model(REG)
    (tmp_path / "model").mkdir()
    for _ in range(5):
        c.create_model_version(REG, source=str(tmp_path / "model"))
    return c


def champion(client: MlflowClient) -> str | None:
    return aliases.alias_version(client, REG, aliases.CHAMPION)


def tag(client: MlflowClient) -> str:
    return client.get_registered_model(REG).tags[aliases.HISTORY_TAG]


def test_a_rollback_is_appended_not_erased(client: MlflowClient) -> None:
    aliases.set_champion(client, REG, "2", "register")
    aliases.set_champion(client, REG, "4", "promote")
    assert aliases.rollback(client, REG) == "2" and champion(client) == "2"
    assert tag(client) == "2,4,2"
    changes = [c.to_dict() for c in aliases.history(client, REG)]
    assert [(c["action"], c["version"], c["from"]) for c in changes] == [
        ("register", "2", None), ("promote", "4", "2"), ("rollback", "2", "4")]
    assert all(c["time"] for c in changes)


def test_repeated_rollbacks_walk_back_through_the_changes_still_standing(
        client: MlflowClient) -> None:
    for v, how in (("1", "register"), ("2", "register"), ("3", "promote")):
        aliases.set_champion(client, REG, v, how)
    assert aliases.rollback(client, REG) == "2"
    assert aliases.rollback(client, REG) == "1"
    with pytest.raises(UserError, match="no earlier champion to return to"):
        aliases.rollback(client, REG)
    aliases.set_champion(client, REG, "4", "force")
    assert aliases.rollback(client, REG) == "1"      # what 4 replaced, not 2 or 3
    aliases.set_champion(client, REG, "5", "promote")
    aliases.set_champion(client, REG, "3", "promote")
    assert aliases.rollback(client, REG) == "5"
    assert aliases.rollback(client, REG) == "1"
    assert tag(client) == "1,2,3,2,1,4,1,5,3,5,1"
    assert aliases.standing(aliases.history(client, REG)) == ["1"]


def test_the_first_champion_has_nothing_to_roll_back_to(client: MlflowClient) -> None:
    with pytest.raises(UserError, match="no champion to roll back"):
        aliases.rollback(client, REG)
    aliases.set_champion(client, REG, "1", "register")
    with pytest.raises(UserError, match="no earlier champion"):
        aliases.rollback(client, REG)
    assert tag(client) == "1" and champion(client) == "1"


def test_a_champion_moved_outside_is_recorded_before_the_next_change(
        client: MlflowClient) -> None:
    aliases.set_champion(client, REG, "1", "register")
    aliases.set_champion(client, REG, "2", "promote")
    client.set_registered_model_alias(REG, aliases.CHAMPION, "3")       # the MLflow UI
    with pytest.raises(UserError, match="set outside mnist-mlops"):
        aliases.rollback(client, REG)
    aliases.set_champion(client, REG, "4", "promote")
    assert [(c.action, c.version, c.previous) for c in aliases.history(client, REG)] == [
        ("register", "1", None), ("promote", "2", "1"), ("outside", "3", "2"),
        ("promote", "4", "3")]
    assert aliases.rollback(client, REG) == "3"


def test_a_history_from_before_actions_were_kept_reads_as_unrecorded_entries(
        client: MlflowClient) -> None:
    """Stores written by earlier versions hold only the versions tag, kept as a stack."""
    client.set_registered_model_tag(REG, aliases.HISTORY_TAG, "1,3")
    client.set_registered_model_alias(REG, aliases.CHAMPION, "3")
    aliases.set_champion(client, REG, "5", "promote")
    assert [c.action for c in aliases.history(client, REG)] == [
        "unrecorded", "unrecorded", "promote"]
    assert aliases.rollback(client, REG) == "3"
    assert aliases.rollback(client, REG) == "1"
    assert tag(client) == "1,3,5,3,1"
