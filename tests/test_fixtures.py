"""The suite's shared fixtures (conftest.py) stand in for what they replace."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient


def test_a_copied_empty_store_is_a_new_store_of_this_folder(
        tmp_path: Path, mlflow_db: str, empty_store_template: Path) -> None:
    """`mlflow_db` copies one store made per test run: each test gets its own, empty, whose
    Default experiment keeps artifacts in the test's folder; what a test writes to its
    copy leaves the template as it was."""
    template = empty_store_template.read_bytes()
    assert mlflow_db == f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(mlflow_db)
    (default,) = client.search_experiments()
    assert default.name == "Default"
    assert default.artifact_location == str(tmp_path / "mlruns" / "0")
    assert client.search_registered_models() == []
    run = client.create_run("0")
    (tmp_path / "note.txt").write_text("logged")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert (tmp_path / "mlruns" / "0" / run.info.run_id / "artifacts" / "note.txt").exists()
    client.create_registered_model("only-here")
    assert empty_store_template.read_bytes() == template

