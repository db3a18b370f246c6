"""Resume for real: a training process SIGKILLed mid-fold continues where it stopped and
ends with exactly the metrics and model of a training that was never interrupted."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import load_params
from mnist_mlops.training.checkpoint import Checkpoint, fingerprint

from .conftest import ROOT, Spawned, tool_env
from .test_train import write_tiny_project

MODEL = "mlp_512x2"   # has dropout: its RNG state must survive the restart too
EPOCHS = 6


def tiny(root: Path) -> Path:
    root.mkdir()
    write_tiny_project(root, max_epochs=None, verbose=2)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["models"][MODEL]["epochs"] = EPOCHS
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def train_cmd(root: Path) -> tuple[list[str], dict[str, str]]:
    return ([sys.executable, "-m", "mnist_mlops.training.train", MODEL],
            tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db"))


def model_outputs(root: Path) -> dict[str, list]:
    import keras

    from mnist_mlops.data.dataset import load_dataset

    model = keras.saving.load_model(root / "models" / f"{MODEL}.h5", compile=False)
    x = load_dataset(root / "data" / "interim" / "mnist.npz")["x_test"][..., None]
    return {"weights": model.get_weights(), "proba": np.asarray(model.predict(x, verbose=0))}


def cv_without_timing(root: Path) -> dict:
    cv = json.loads((root / "reports" / "train" / MODEL / "cv.json").read_text())
    cv.pop("train_time_s")
    return cv


@pytest.mark.slow
def test_sigkill_mid_fold_resumes_to_identical_results(tmp_path: Path) -> None:
    straight, resumed = tiny(tmp_path / "straight"), tiny(tmp_path / "resumed")
    cmd, env = train_cmd(straight)
    once = Spawned(cmd, straight, env)
    assert once.wait() == 0, once.output[-3000:]

    cmd, env = train_cmd(resumed)
    first = Spawned(cmd, resumed, env)
    first.wait_for_line("fold 2/2 epoch 2/")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    assert not (resumed / "models" / f"{MODEL}.h5").exists()
    (ckpt_dir,) = (resumed / ".checkpoints" / MODEL).iterdir()
    assert (ckpt_dir / "fit-fold-1.npz").is_file() and (ckpt_dir / "done-fold-0.npz").is_file()

    second = Spawned(cmd, resumed, env)
    assert second.wait() == 0, second.output[-3000:]
    out = second.output
    assert "resuming the interrupted training (fold-0 finished)" in out
    assert "fold 1/2 epoch" not in out            # the finished fold is not retrained
    resumed_at = int(out.split("fold 2/2: resuming after epoch ")[1].split("/")[0])
    # fold 2's epoch-2 line is logged just before that epoch's checkpoint is written, so
    # the kill may land between the two: epoch 1's checkpoint is there for sure (above)
    assert resumed_at >= 1
    assert f"fold 2/2 epoch {resumed_at}/" not in out  # nor its finished epochs
    assert not (resumed / ".checkpoints" / MODEL).exists()  # cleaned after success

    assert cv_without_timing(resumed) == cv_without_timing(straight)
    a, b = model_outputs(straight), model_outputs(resumed)
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a["proba"], b["proba"])

    client = MlflowClient(f"sqlite:///{resumed}/mlflow.db")
    exp = client.get_experiment_by_name("mnist-mlops")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [
        MODEL, f"{MODEL}/final-refit", f"{MODEL}/fold-0", f"{MODEL}/fold-1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        if r.info.run_name != MODEL:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
            assert steps == list(range(1, EPOCHS + 1)), (r.info.run_name, steps)
    run_json = json.loads((resumed / "reports" / "train" / MODEL / "run.json").read_text())
    parent = next(r for r in runs if r.info.run_name == MODEL)
    assert run_json["run_id"] == parent.info.run_id and run_json["model_uri"]


def test_checkpoint_of_another_configuration_is_discarded(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    params = load_params(ROOT / "params.yaml")
    p, tp = params.model(MODEL), params.train
    fp_a = fingerprint(p, tp, "data-a", code="code")
    assert fingerprint(p, tp, "data-a", code="code") == fp_a
    changed = {
        "params": fingerprint(params.model("lenet_28_50"), tp, "data-a", code="code"),
        "train": fingerprint(p, type(tp)(seed=7), "data-a", code="code"),
        "data": fingerprint(p, tp, "data-b", code="code"),
        "code": fingerprint(p, tp, "data-a", code="other code"),
    }
    assert fp_a not in changed.values() and len(set(changed.values())) == 4
    assert fingerprint(p, type(tp)(verbose=0), "data-a", code="code") == \
        fingerprint(p, type(tp)(verbose=2), "data-a", code="code")  # log level only

    with Checkpoint(tmp_path, MODEL, fp_a) as ck:
        ck.state["fits"]["fold-0"] = {"val_loss": 1.0}
        ck.save_state()
    with Checkpoint(tmp_path, MODEL, fp_a) as ck:
        assert ck.resumed and ck.fit_done("fold-0") == {"val_loss": 1.0}
    with caplog.at_level("WARNING"), Checkpoint(tmp_path, MODEL, changed["data"]) as ck:
        assert not ck.resumed
    assert "other params, data or code; starting afresh" in caplog.text
    assert not (tmp_path / MODEL / fp_a).exists()


def test_one_configuration_trains_in_one_process_at_a_time(tmp_path: Path) -> None:
    from mnist_mlops.core.runtime import UserError

    with Checkpoint(tmp_path, MODEL, "abc"), pytest.raises(UserError, match="another process"):
        Checkpoint(tmp_path, MODEL, "abc").__enter__()
    with Checkpoint(tmp_path, MODEL, "abc"), Checkpoint(tmp_path, MODEL, "def"):
        assert (tmp_path / MODEL / "abc").is_dir()  # a running one is never discarded


def test_an_epoch_written_behind_is_on_disk_before_the_next_and_a_failed_write_is_raised(
        tmp_path: Path) -> None:
    """save_progress returns before its write; the write is the epoch's state as it was
    (later changes to the model do not leak into it), and a write that fails is raised at
    the next wait, not lost."""
    from mnist_mlops.training.checkpoint import FitProgress
    from mnist_mlops.training.models import new_model

    params = load_params(ROOT / "params.yaml")
    p, tp = params.model("mlp_512x2"), params.train
    model = new_model(p, tp, 0, 100)
    with Checkpoint(tmp_path, MODEL, "abc") as ck:
        ck.save_progress("fold-0", model, FitProgress(epochs_done=1, history={"loss": [2.0]}))
        before = [np.asarray(v).copy() for v in model.variables]
        for v in model.variables:                       # the next epoch changes them
            v.assign(np.zeros(v.shape, dtype=v.dtype))
        fresh = new_model(p, tp, 0, 100)
        prog = ck.load_progress("fold-0", fresh)        # waits for the write
        assert prog is not None and prog.epochs_done == 1 and prog.history == {"loss": [2.0]}
        assert all(np.array_equal(a, np.asarray(v)) for a, v in zip(before, fresh.variables,
                                                                     strict=True))
        (ck.dir / "fit-fold-1.npz").mkdir()             # a write that cannot land
        ck.save_progress("fold-1", model, FitProgress(epochs_done=1))
        with pytest.raises(OSError):
            ck.wait_writes()
    # ... and one still in flight when the stage leaves is raised as it leaves
    with pytest.raises(OSError), Checkpoint(tmp_path, MODEL, "abc") as ck:
        ck.save_progress("fold-1", model, FitProgress(epochs_done=3))
    assert (tmp_path / MODEL / "abc" / "fit-fold-1.npz").is_dir()   # nothing half-written


@pytest.mark.slow
def test_changed_params_after_a_kill_start_afresh_and_end_orphaned_runs(tmp_path: Path
                                                                        ) -> None:
    root = tiny(tmp_path / "project")
    cmd, env = train_cmd(root)
    first = Spawned(cmd, root, env)
    first.wait_for_line("fold 1/2 epoch 2/")
    deadline = time.monotonic() + 60      # the journal delivers behind the training
    while not {MODEL, f"{MODEL}/fold-0"} <= {n for ns in runs_by_status(root).values()
                                             for n in ns}:
        assert time.monotonic() < deadline, "the stage's runs never reached the store"
        time.sleep(0.05)
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    # What the store holds as the process died: the parent still running, the first fold's
    # run too unless that fold had ended before the kill
    dead = runs_by_status(root)
    assert MODEL in dead["RUNNING"] and set(dead) <= {"RUNNING", "FINISHED"}
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["models"][MODEL]["learning_rate"] = 0.002
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    second = Spawned(cmd, root, env)
    assert second.wait() == 0, second.output[-3000:]
    assert "other params, data or code; starting afresh" in second.output
    assert "left RUNNING by a process that died" in second.output
    after = runs_by_status(root)
    assert set(after) == {"KILLED", "FINISHED"}, after
    assert after["KILLED"] == dead["RUNNING"]
    assert len(after["FINISHED"]) == 4 + len(dead.get("FINISHED", []))


def runs_by_status(root: Path) -> dict[str, list[str]]:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mnist-mlops").experiment_id])
    by_status: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: r.info.run_name):
        by_status.setdefault(r.info.status, []).append(r.info.run_name)
    return by_status
