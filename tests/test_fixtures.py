"""The suite's shared fixtures (conftest.py) stand in for what they replace."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import ONE_WORKER, ROOT, mlflow_uris_kept, worker_group


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


def test_a_tracking_uri_a_test_sets_ends_with_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `mlflow.set_tracking_uri` and `set_registry_uri` set in a test (a server's URI,
    gone once the test has killed it) does not reach the next test on the worker: MLflow's
    URIs and their variables are as they were before."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///before.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with mlflow_uris_kept():
        mlflow.set_tracking_uri("http://127.0.0.1:9")
        mlflow.set_registry_uri("http://127.0.0.1:9")
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
    assert mlflow.get_tracking_uri() == "sqlite:///before.db"
    assert mlflow.get_registry_uri() == "sqlite:///before.db"   # follows the tracking URI
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_every_one_worker_entry_names_a_test_that_exists() -> None:
    """A renamed file or test must not drop out of its `make test-fast` group unnoticed."""
    for key, group in ONE_WORKER.items():
        file, _, test = key.partition("::")
        assert (ROOT / file).is_file(), key
        if test:
            tree = ast.parse((ROOT / file).read_text())
            assert test in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}, key
        assert worker_group(f"{key}::x" if not test else f"{key}[case]") == group, key
    assert worker_group("tests/test_idx.py::test_x") is None


@pytest.mark.slow
def test_collecting_the_suite_imports_neither_tensorflow_nor_evidently() -> None:
    """Every `make test-fast` worker collects every file: a file that imports TensorFlow or
    Evidently at its top costs each worker that import (ONE_WORKER in conftest.py)."""
    probe = ("import sys, pytest\n"
             "rc = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests'])\n"
             "print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'evidently') "
             "if m in sys.modules), rc)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=300).stdout
    assert "HEAVY [] 0" in out, out[-3000:]
