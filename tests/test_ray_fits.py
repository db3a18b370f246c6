"""train.executor: ray on a real two-node Ray cluster on this machine (Ray's own helper for
several nodes on one host, one CPU each): the same model as the local executor, the same
MLflow record, a killed worker survived, and the errors a user meets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import load_params
from mnist_mlops.core.fsio import sha256_files
from mnist_mlops.training.checkpoint import fingerprint

from .conftest import ROOT, tool_env
from .test_train import write_tiny_project

MODEL = "mlp_512x2"
EPOCHS = 10         # long enough for a worker to be killed between two epochs of a fold


def stage(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `train@<model>` stage, as dvc.yaml runs it."""
    return subprocess.run([sys.executable, "-m", "mnist_mlops.training.train", MODEL],
                          cwd=root, capture_output=True, text=True, timeout=600,
                          env=tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db",
                                       **env))


def project(root: Path, executor: str, **train: object) -> Path:
    root.mkdir(parents=True)
    write_tiny_project(root, executor=executor, max_epochs=EPOCHS, verbose=2, **train)
    return root


def weights(root: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(root / "models" / f"{MODEL}.h5", compile=False).get_weights()


def answers(root: Path) -> np.ndarray:
    """The trained model's predicted digits for the project's test images."""
    import keras

    from mnist_mlops.data.dataset import load_dataset

    x = load_dataset(root / load_params(root / "params.yaml").paths.dataset)["x_test"]
    model = keras.models.load_model(root / "models" / f"{MODEL}.h5", compile=False)
    return model.predict(x[..., None].astype("float32"), verbose=0).argmax(axis=1)


def fold_runs(root: Path) -> list:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("mnist-mlops")
    [parent] = client.search_runs([exp.experiment_id], "tags.role = 'parent'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    for run in children:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), run.info.run_name
    return children


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = project(tmp_path_factory.mktemp("local") / "p", "local")
    proc = stage(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_two_nodes_train_what_the_local_executor_trains(tmp_path: Path, local_run: Path,
                                                        ray_cluster: str) -> None:
    root = project(tmp_path / "p", "ray")
    proc = stage(root, RAY_ADDRESS=ray_cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 node(s)" in proc.stderr
    for ours, local in zip(weights(root), weights(local_run), strict=True):
        np.testing.assert_array_equal(ours, local)
    np.testing.assert_array_equal(answers(root), answers(local_run))
    runs, local_runs = fold_runs(root), fold_runs(local_run)
    assert sorted(r.info.run_name for r in runs) == sorted(r.info.run_name for r in local_runs)
    assert len({r.data.tags["ray_node"] for r in runs}) == 2      # both nodes got work
    by_name = {r.info.run_name: r.data.metrics for r in local_runs}
    for r in runs:
        assert r.data.metrics["loss"] == by_name[r.info.run_name]["loss"]
    assert not (root / ".checkpoints" / MODEL).exists()            # committed, cleaned up


@pytest.mark.slow
def test_an_ensemble_on_a_ray_the_stage_starts_is_the_local_ensemble(tmp_path: Path) -> None:
    """No RAY_ADDRESS: a Ray of the stage's own; no refit: the shipped model is built from
    the folds' weights as they came back from the workers."""
    local = project(tmp_path / "local", "local", final="ensemble")
    on_ray = project(tmp_path / "ray", "ray", final="ensemble")
    for root in (local, on_ray):
        proc = stage(root, RAY_ADDRESS="")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "a Ray started here" in proc.stderr and proc.stderr.count("sent to Ray") == 2
    for ours, theirs in zip(weights(on_ray), weights(local), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def ray_task_pids(name: str) -> list[int]:
    """Processes running a Ray task of this stage (Ray titles them ray::<task name>)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(f"ray::train@{MODEL}:{name}"):
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
def test_a_worker_killed_mid_fold_is_retried_from_its_last_epoch(
        tmp_path: Path, local_run: Path, ray_cluster: str) -> None:
    root = project(tmp_path / "p", "ray")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_mlops.training.train", MODEL], cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db",
                     RAY_ADDRESS=ray_cluster))
    killed, deadline = None, time.monotonic() + 300
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            # fold 1's first epochs are on the shared disk, and its worker still runs
            if list((root / ".checkpoints" / MODEL).glob("*/fit-fold-0.npz")):
                for pid in ray_task_pids("fold-0"):
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
            time.sleep(0.02)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "fold 1 finished before its worker could be killed"
    assert proc.returncode == 0, err[-3000:]
    assert f"{MODEL} fold 1/2: resuming after epoch" in err
    for ours, local in zip(weights(root), weights(local_run), strict=True):
        np.testing.assert_array_equal(ours, local)
    assert {r.info.run_name for r in fold_runs(root)} == {
        f"{MODEL}/fold-0", f"{MODEL}/fold-1", f"{MODEL}/final-refit"}


def finished_fits(root: Path) -> list[str]:
    """The fits the stage's checkpoint records as finished (state.json, written last)."""
    for state in (root / ".checkpoints" / MODEL).glob("*/state.json"):
        try:
            return sorted(json.loads(state.read_text())["fits"])
        except ValueError:       # caught between two writes: not yet
            return []
    return []


@pytest.mark.slow
def test_a_stage_stopped_mid_way_keeps_finished_fits_and_sends_only_the_rest(
        tmp_path: Path, local_run: Path, ray_cluster: str) -> None:
    root = project(tmp_path / "p", "ray")
    env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db", RAY_ADDRESS=ray_cluster)
    cmd = [sys.executable, "-m", "mnist_mlops.training.train", MODEL]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not finished_fits(root):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)           # as `dvc` or a scheduler stops a stage
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    done = finished_fits(root)
    assert 1 <= len(done) < 3, done
    again = stage(root, RAY_ADDRESS=ray_cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("sent to Ray") == 3 - len(done)
    for ours, local in zip(weights(root), weights(local_run), strict=True):
        np.testing.assert_array_equal(ours, local)


@pytest.mark.slow
def test_a_fit_that_fails_on_its_worker_stops_the_stage_with_its_own_error(
        tmp_path: Path, ray_cluster: str) -> None:
    root = project(tmp_path / "p", "ray")
    from mnist_mlops.training.train import checkpoint_key, model_and_train

    params = load_params(root / "params.yaml")
    digest = sha256_files([root / params.paths.dataset, root / params.paths.folds])
    ckpt = root / ".checkpoints" / MODEL / checkpoint_key(*model_and_train(params, MODEL),
                                                          digest)
    ckpt.mkdir(parents=True)       # fold 2's epoch checkpoint, from some other model
    np.savez(ckpt / "fit-fold-1.npz", v0=np.zeros(3), meta=np.frombuffer(b"{}", np.uint8))
    proc = stage(root, RAY_ADDRESS=ray_cluster)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{MODEL} fold 2/2 (on Ray): " in last and "fit-fold-1.npz does not match" in last
    assert "Traceback" not in proc.stderr
    assert not (root / "models" / f"{MODEL}.h5").exists()


@pytest.mark.slow   # a stage process
def test_no_cluster_at_the_address_is_one_error_before_any_training(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "ray")
    with socket.socket() as held:       # bound, never listening: nothing answers there
        held.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        proc = stage(root, RAY_ADDRESS=address)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"no Ray cluster answers at RAY_ADDRESS={address}" in proc.stderr
    assert "Traceback" not in proc.stderr and "sent to Ray" not in proc.stderr
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()


def test_workers_get_the_users_thread_counts_but_not_a_stages_share_of_this_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_mlops.core.runtime import TF_THREAD_VARS, thread_share
    from mnist_mlops.training.ray_fits import worker_env

    for var in TF_THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    for var, value in thread_share(2, {}).items():          # what --share-cores sets
        monkeypatch.setenv(var, value)
    env = worker_env()
    assert env["KERAS_BACKEND"] == "tensorflow"
    assert not set(TF_THREAD_VARS) & set(env), env
    monkeypatch.delenv("MNIST_MLOPS_SHARED_CORES")          # the user's own counts
    assert {var: worker_env()[var] for var in TF_THREAD_VARS} == {
        var: os.environ[var] for var in TF_THREAD_VARS}


@pytest.mark.parametrize("address", ["head-without-port", "ray://:10001", "host:notaport"])
def test_an_address_that_is_not_one_is_refused_naming_the_forms(address: str) -> None:
    from mnist_mlops.core.runtime import UserError
    from mnist_mlops.training.ray_fits import check_reachable

    with pytest.raises(UserError, match=f"RAY_ADDRESS={re.escape(address)} is not a Ray "
                                        "address: give host:port"):
        check_reachable(address)


@pytest.mark.slow
def test_a_fit_no_node_can_take_is_refused_before_it_waits_for_ever(
        tmp_path: Path, ray_cluster: str) -> None:
    root = project(tmp_path / "p", "ray")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"]["ray"]["num_gpus"] = 1.0            # the cluster has none
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = stage(root, RAY_ADDRESS=ray_cluster)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no Ray node can take a fit asking for 1 CPU and 1 GPU" in proc.stderr
    assert "the nodes have: 1 CPU, 0 GPU; 1 CPU, 0 GPU" in proc.stderr
    assert "sent to Ray" not in proc.stderr and not (root / "mlflow.db").exists()


@pytest.mark.slow   # a stage process
def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "ray")
    shadow = tmp_path / "no-ray" / "ray"       # an `import ray` that fails as if absent
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    proc = stage(root, PYTHONPATH=f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Ray is not installed" in proc.stderr and "'.[ray]'" in proc.stderr
    assert not (root / ".checkpoints").exists()


def test_ray_resources_change_neither_the_checkpoint_key_nor_the_stage(tmp_path: Path) -> None:
    """What a Ray fit asks for is not what it computes: no retraining, a checkpoint resumes.
    The executor itself is in the key (a checkpoint resumes under the executor that wrote
    it) and, like the resources, not a DVC param of the stage."""
    params = load_params(project(tmp_path / "p", "ray") / "params.yaml")
    tp, p = params.train, params.model(MODEL)
    more = tp.model_copy(update={"ray": tp.ray.model_copy(update={"num_cpus": 4.0})})
    local = tp.model_copy(update={"executor": "local"})
    assert fingerprint(p, tp, "d", "c") == fingerprint(p, more, "d", "c")
    assert fingerprint(p, tp, "d", "c") != fingerprint(p, local, "d", "c")
    train_stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    assert not [k for k in train_stage["params"] if "executor" in k or "ray" in k]
