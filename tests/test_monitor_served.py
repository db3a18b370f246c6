"""Watching the served model end to end: `mnist-mlops serve` logs what it answers, MNIST
test digits give no drift, rotated/inverted digits and real-world photos do (exit 1, the
retrain hook runs), the log rotates at its bound and survives a restart, and the HTML
report draws its charts in headless Chromium. Real processes, one server at a time."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnist_mlops.data.dataset import save_dataset
from mnist_mlops.data.realworld import photograph
from mnist_mlops.monitoring import predlog

from .conftest import ROOT, Spawned, free_port, wait_for
from .needs import need, requires
from .served import CLI, Served, fetch

pytestmark = pytest.mark.slow

N = 200                 # answers per phase: a window of monitor
MAX_BYTES = 60_000      # about 80 answers of cnn_32_64_64 (64-number embedding) per file
RETRAIN_SCRIPT = """import sys, pathlib
pathlib.Path(sys.argv[1]).write_text("retrain started\\n")
"""


@dataclass
class Project:
    params: Path
    log: Path
    reports: Path
    marker: Path
    env: dict[str, str]


class MonitoredServer(Served):
    """`mnist-mlops --params P serve --model M`: the server of tests/served.py, with params."""

    def __init__(self, model: Path, project: Project) -> None:  # noqa: D107
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        Spawned.__init__(self, [CLI, "--params", str(project.params), "serve", "--model",
                                str(model), "--port", str(self.port)], ROOT, project.env)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: the log is flushed on the way out
        (uvicorn shuts down, then ends with the signal it caught)."""
        self.proc.terminate()
        assert self.wait(60) in (0, -signal.SIGTERM), self.output[-3000:]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mnist: dict) -> Project:
    """params.yaml with every path in a temp folder: the dataset (the reference's training
    images), a log with a small bound, the reports, an MLflow store, and a retrain command
    that leaves a marker file."""
    d = tmp_path_factory.mktemp("monitored")
    save_dataset({k: mnist[k][:5000] for k in ("x_train", "y_train")}, d / "mnist.npz")
    (d / "retrain.py").write_text(RETRAIN_SCRIPT)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] = {**{k: str(d / k) for k in raw["paths"]}, "dataset": str(d / "mnist.npz"),
                    "prediction_log": str(d / "logs" / "predictions.jsonl"),
                    "monitor_reports": str(d / "reports")}
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{d / 'mlflow.db'}"
    raw["monitor"].update(max_bytes=MAX_BYTES, backups=20, window=N, reference_size=1000,
                          retrain=[sys.executable, str(d / "retrain.py"), str(d / "marker")])
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return Project(d / "params.yaml", d / "logs" / "predictions.jsonl", d / "reports",
                   d / "marker", {**env, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="module")
def server(calibrated_h5: Path, project: Project) -> Iterator[MonitoredServer]:
    s = MonitoredServer(calibrated_h5, project)
    try:
        s.wait_ready()
        yield s
    finally:
        s.kill()


def invocations(server: Served, images: np.ndarray) -> None:
    for i in range(0, len(images), 50):
        body = json.dumps({"inputs": images[i:i + 50].tolist()}).encode()
        code, _, raw = fetch(server.url + "invocations", body)
        assert code == 200, raw


def photos(server: Served, digits: np.ndarray) -> None:
    """Real-world-like photos of `digits` (data/realworld.py) through the drawing API."""
    rng = np.random.default_rng(7)
    for d in digits:
        buf = io.BytesIO()
        photograph(d, rng).save(buf, "PNG")
        body = json.dumps({"image": "data:image/png;base64,"
                           + base64.b64encode(buf.getvalue()).decode()}).encode()
        code, _, raw = fetch(server.url + "predict", body)
        assert code == 200, raw


def logged(project: Project) -> int:
    return len(list(predlog.records(project.log)))


def monitor(project: Project, model: Path, *options: str) -> tuple[int, dict, str]:
    proc = subprocess.run([CLI, "--params", str(project.params), "monitor", "--model",
                           str(model), *options], cwd=project.params.parent, env=project.env,
                          capture_output=True, text=True, timeout=300)
    summary = json.loads((project.reports / "summary.json").read_text())
    return proc.returncode, summary, proc.stdout + proc.stderr


def test_mnist_digits_do_not_drift(server: MonitoredServer, project: Project, mnist: dict,
                                   model_file: Path) -> None:
    pick = np.random.default_rng(1).choice(len(mnist["x_test"]), N, replace=False)
    invocations(server, mnist["x_test"][pick])
    wait_for(lambda: logged(project) == N, 30, f"{N} logged answers")
    first = next(predlog.records(project.log))
    assert first["model"] == {"version": None, "architecture": "cnn_32_64_64"}
    assert len(predlog.embedding(first)) == 64 and 0 <= first["digit"] <= 9
    assert isinstance(first["unsure"], bool)

    code, s, out = monitor(project, model_file)
    assert code == 0 and not s["drift"] and out.startswith("no drift"), out
    assert s["unsure_rate"] <= 0.1 and "unsure answers: " in out    # clean digits: rarely
    assert s["window"] == N and s["reference"] == 1000 and s["drift_share"] < 0.3
    assert s["embedding"]["auc"] < 0.6 and s["confidence"]["current_mean"] > 0.9
    assert not project.marker.exists()


def test_rotated_inverted_and_photographed_digits_drift_and_retrain(
        server: MonitoredServer, project: Project, mnist: dict, model_file: Path,
        calibrated_h5: Path) -> None:
    before = logged(project)
    assert before == N, "runs after test_mnist_digits_do_not_drift"
    server.stop()                                        # a restart, in the middle
    again = MonitoredServer(calibrated_h5, project)
    try:
        again.wait_ready()
        x = mnist["x_test"][np.random.default_rng(2).choice(10000, N, replace=False)]
        third = N // 3
        invocations(again, np.rot90(x[:third], 1, axes=(1, 2)).copy())
        invocations(again, 255 - x[third:2 * third])
        photos(again, x[2 * third:])
        wait_for(lambda: logged(project) == 2 * N, 30, f"{2 * N} logged answers")
    finally:
        again.stop()

    files = predlog.log_files(project.log)               # rotated at its bound ...
    assert len(files) >= 3 and all(f.stat().st_size <= MAX_BYTES for f in files)
    assert logged(project) == 2 * N                      # ... nothing lost over the restart

    code, s, out = monitor(project, model_file, "--retrain")
    assert code == 1 and s["drift"] and out.startswith("DRIFT"), out
    assert s["drift_share"] >= 0.3 and s["embedding"]["drifted"], s
    assert s["unsure_rate"] > 0.2, s["unsure_rate"]   # rotated, inverted: often unsure
    assert project.marker.read_text() == "retrain started\n"
    assert "retrain command exited with 0" in out


def test_monitoring_runs_in_mlflow(project: Project) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project.params.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-mlops-monitoring")
    runs = client.search_runs([exp.experiment_id])
    assert [r.data.tags["monitored_model"] for r in runs] == ["cnn_32_64_64"]
    history = client.get_metric_history(runs[0].info.run_id, "drift")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 1.0)]   # one point a check
    assert {f.path for f in client.list_artifacts(runs[0].info.run_id, "checks/0001")} == {
        "checks/0001/report.html", "checks/0001/summary.json"}
    assert (project.params.parent / "mlruns" / "mnist-mlops-monitoring").is_dir()  # its own


@requires("chromium")   # skips without Chromium; fails when CI is set
def test_the_report_draws_its_charts_in_headless_chromium(project: Project) -> None:
    report = project.reports / "report.html"
    proc = subprocess.run([need("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-background-networking",
                           "--virtual-time-budget=15000", "--dump-dom", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert dom.count('class="main-svg"') >= 10, proc.stderr[-2000:]   # plotly drew them
    assert 'class="trace bars"' in dom or 'class="traces"' in dom
    for column in ("border", "confidence", "embedding_pc1", "digit"):
        assert f"Drift in column '{column}'" in dom
