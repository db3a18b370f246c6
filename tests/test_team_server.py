"""The team tracking server for real: Debian's PostgreSQL as the backend store, proxied
artifacts, the pipeline logging and registering there, and a second clone with no model
files predicting with `models:/mnist-digits@champion` through the server alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from .conftest import ROOT, free_port, run, synthetic_digits, synthetic_project, tool_env
from .needs import requires
from .postgres import pg_folder

SCRIPT = ROOT / "scripts" / "team-server.sh"
CLI = str(Path(sys.executable).parent / "mnist-mlops")
MODEL = "mlp_512x2"
ADMIN = ("admin", "team-admin-password")   # the server authenticates (test_auth_server.py)
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}

pytestmark = [pytest.mark.slow, requires("postgresql")]


@pytest.fixture
def team_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path / "team"
    with pg_folder() as pgdata:
        env = tool_env(DATA=str(data), PORT=str(free_port()), PGPORT=str(free_port()),
                       PGDATA_DIR=str(pgdata / "cluster"), DB_PASSWORD="s3cret", WORKERS="1",
                       MLFLOW=str(Path(sys.executable).parent / "mlflow"), PYTHON=sys.executable,
                       MLFLOW_ADMIN_PASSWORD=ADMIN[1])
        try:
            out = run(["bash", str(SCRIPT), "start"], tmp_path, env, timeout=300).stdout
            yield out.split("MLflow tracking server on ")[1].split()[0], data
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop"], cwd=tmp_path, env=env, timeout=120,
                           capture_output=True)


def test_pipeline_registry_and_predict_through_a_postgres_backed_server(
        tmp_path: Path, team_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    uri, data = team_server
    root, env = synthetic_project(tmp_path / "project")
    env.update(MLFLOW_TRACKING_URI=uri, **CREDENTIALS)
    run(["dvc", "repro"], root, env, timeout=900)

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist-mlops")
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'parent'")
    assert parent.info.status == "FINISHED" and "test_accuracy" in parent.data.metrics
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")   # proxied
    assert list((data / "artifacts").rglob("*.h5"))                   # stored server-side
    champion = client.get_model_version_by_alias("mnist-digits", "champion")
    assert champion.run_id == parent.info.run_id
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()

    other = tmp_path / "other-clone"
    run(["git", "clone", "-q", str(root), str(other)], tmp_path, env)
    assert not (other / "models").exists()                 # no local model files at all
    x, _ = synthetic_digits(4, seed=5)
    picture = tmp_path / "digit.png"
    Image.fromarray(x[0]).resize((84, 84)).save(picture)
    proc = run([CLI, "predict", str(picture), "--json"], other,
               tool_env(MLFLOW_TRACKING_URI=uri, **CREDENTIALS))
    (answer,) = json.loads(proc.stdout)
    assert answer["error"] is None and 0 <= answer["digit"] <= 9
    assert "champion recorded in" not in proc.stderr       # it came through the server
