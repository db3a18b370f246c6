"""Parallel experiments on the default store, with real processes: queued DVC experiments
log to the project's own store, and concurrent writers (store creation, trainings,
`register` stages) do not corrupt it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import run, synthetic_project, tool_env
from .test_train import write_tiny_project

pytestmark = pytest.mark.slow   # real training, processes or servers

MODEL = "mlp_512x2"
REG = "mnist-digits"


def test_queued_experiments_run_in_parallel_on_the_project_store(tmp_path: Path) -> None:
    root, env = synthetic_project(tmp_path / "project")
    lrs = {f"lr-{lr}": lr for lr in ("0.002", "0.0005")}
    for name, lr in lrs.items():
        queue(root, env, name, lr)
    tasks = run_queue(root, env, jobs=2)
    # DVC's celery workers sometimes fail a task while setting it up when -j > 1
    # (treeverse/dvc#10673): no stage ever ran, so nothing of ours is under test; queued
    # once more, alone. A task whose stages ran and failed fails this test with its output.
    lost = [name for name, state in tasks.items() if state == "Failed"
            and not STAGE_RAN.search(queue_logs(root, env, name))]
    for name in lost:
        queue(root, env, f"{name}-again", lrs[name])
    if lost:
        tasks.update(run_queue(root, env, jobs=1))
    succeeded = {name.removesuffix("-again") for name, state in tasks.items()
                 if state == "Success"}
    assert succeeded == set(lrs), (tasks, {name: queue_logs(root, env, name)
                                           for name, state in tasks.items()
                                           if state != "Success"})

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")   # what `mlflow ui` here shows
    exp = client.get_experiment_by_name("mnist-mlops")
    assert exp.artifact_location.startswith((root / "mlruns").as_uri())
    parents = client.search_runs([exp.experiment_id], "tags.role = 'parent'")
    assert sorted(p.data.params["model.learning_rate"] for p in parents) == ["0.0005", "0.002"]
    assert {p.data.tags["dvc_exp"] for p in parents} != {"workspace"}
    for p in parents:
        assert p.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(p.info.run_id)} >= {"keras", "train"}
    versions = client.search_model_versions(f"name='{REG}'")
    assert sorted(v.run_id for v in versions) == sorted(p.info.run_id for p in parents)
    assert "champion" in client.get_registered_model(REG).aliases
    assert not list((root / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))


STAGE_RAN = re.compile(r"[Ss]tage '")    # what `dvc queue logs` shows once a stage ran


def queue(root: Path, env: dict[str, str], name: str, lr: str) -> None:
    run(["dvc", "exp", "run", "--queue", "-n", name, "-S",
         f"models.{MODEL}.learning_rate={lr}"], root, env)


def run_queue(root: Path, env: dict[str, str], jobs: int) -> dict[str, str]:
    """Start the queue's workers, wait until nothing is queued or running, stop them;
    each task's name and final state."""
    # the workers outlive `dvc queue start`: not on our pipes, or capturing its output
    # would wait for them; stopped at the end whatever happens
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=root, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    try:
        deadline = time.monotonic() + 900
        while True:
            status = run(["dvc", "queue", "status"], root, env).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(5)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # rows: task, name, created (two words), status
    return {row[1]: row[-1] for line in status.splitlines()[1:]
            if len(row := line.split()) >= 5 and row[0] != "Worker"}


def queue_logs(root: Path, env: dict[str, str], name: str) -> str:
    """A task's stage output, or DVC's word that there is none, and its workers' logs."""
    proc = run(["dvc", "queue", "logs", name], root, env, check=False)
    workers = "".join(f"\n--- {f.name}\n" + f.read_text(errors="replace")[-3000:]
                      for f in (root / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.out"))
    return proc.stdout[-6000:] + proc.stderr[-2000:] + workers


def test_concurrent_store_creation(tmp_path: Path) -> None:
    """Four processes open one fresh SQLite store at the same moment."""
    code = ("import sys; from mnist_mlops.core.config import MlflowParams; "
            "from mnist_mlops.tracking.mlflow_io import connect; "
            "print(connect(MlflowParams(tracking_uri=sys.argv[1])))")
    uri = f"sqlite:///{tmp_path}/fresh.db"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], cwd=tmp_path,
                              env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1    # one experiment, one id


def test_two_trainings_logging_at_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/shared.db"
    projects = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        projects.append(write_tiny_project(tmp_path / name))
    procs = [subprocess.Popen([sys.executable, "-m", "mnist_mlops.training.train", MODEL], cwd=p,
                              env=tool_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in projects]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist-mlops")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        if r.data.tags["role"] == "fold":
            assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [1, 2]


def test_racing_register_stages(tmp_path: Path) -> None:
    """Three `register` processes at once: one version per run, one champion, one history."""
    root, env = synthetic_project(tmp_path / "project")
    run(["dvc", "repro", f"evaluate@{MODEL}"], root, env)
    procs = [subprocess.Popen([sys.executable, "-m", "mnist_mlops.registry.register"], cwd=root,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[-2000:] for o in outs]
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    versions = client.search_model_versions(f"name='{REG}'")
    assert len(versions) == 1
    model = client.get_registered_model(REG)
    assert model.aliases["champion"] == versions[0].version
    assert model.tags["champion_history"] == str(versions[0].version)
    assert sum("promoted: no champion yet" in o for o in outs) == 1, outs
    assert sum("nothing to decide" in o for o in outs) == 2, outs
    record = json.loads((root / "reports" / "registry.json").read_text())
    assert record["champion"] == str(versions[0].version)
