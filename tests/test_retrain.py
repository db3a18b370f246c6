"""The retrain loop across machines, for real: a bare git repository as `origin`, a local
folder as the DVC remote, two clones. The first retrains and pushes a branch; the second
pulls it and has everything without training; a retrain there trains nothing."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from mnist_mlops.jobs.retrain import apply_overrides

from .conftest import ROOT, run, synthetic_digits, synthetic_project

MODEL = "mlp_512x2"
CLI = str(Path(sys.executable).parent / "mnist-mlops")
GIT_ID = {"GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.invalid",
          "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.invalid"}


@pytest.mark.slow
def test_retrain_then_a_second_clone_needs_no_training(tmp_path: Path) -> None:
    seed, env = synthetic_project(tmp_path / "seed")
    env.update(GIT_ID)
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path, env)
    run(["git", "push", "-q", str(origin), "HEAD:refs/heads/main"], seed, env)
    run(["git", "--git-dir", str(origin), "symbolic-ref", "HEAD", "refs/heads/main"],
        tmp_path, env)

    one = tmp_path / "clone1"
    run(["git", "clone", "-q", str(origin), str(one)], tmp_path, env)
    first = run([CLI, "retrain", "--remote", str(storage), "--branch", "retrain/test",
                 "--push", "--report", str(tmp_path / "report1.md")], one, env, timeout=900)
    report = (tmp_path / "report1.md").read_text()
    # stages that do not need each other ran side by side: their order is DVC's otherwise
    ran = re.search(r"stages run: (.*)\.\n", report).group(1).split(", ")
    assert ran[:2] == ["download", "parse"], report
    assert set(ran) == {"download", "parse", "preprocess", "realworld", f"train@{MODEL}",
                        f"evaluate@{MODEL}", "register"}, report
    assert ran.index(f"train@{MODEL}") < ran.index(f"evaluate@{MODEL}") < ran.index("register")
    assert "## Metrics against `main`" in report and "test_accuracy" in report
    assert "promoted" in report and f"| {MODEL} |" in report
    assert "retrain/test" in run(["git", "ls-remote", str(origin)], tmp_path, env).stdout
    assert "Running stage 'train@" in first.stdout + first.stderr

    two = tmp_path / "clone2"
    clean = {k: v for k, v in env.items() if k != "MNIST_MIRROR"}   # no way to download
    run(["git", "clone", "-q", "-b", "retrain/test", str(origin), str(two)], tmp_path, clean)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], two, clean)
    run(["dvc", "pull"], two, clean)
    assert (two / "models" / f"{MODEL}.h5").is_file()
    assert (two / "data" / "interim" / "mnist.npz").is_file()
    status = run(["dvc", "status"], two, clean).stdout
    assert "Data and pipelines are up to date" in status, status

    x, _ = synthetic_digits(10, seed=9)
    picture = tmp_path / "digit.png"
    Image.fromarray(x[0]).resize((112, 112)).save(picture)
    proc = run([CLI, "predict", str(picture), "--json"], two, clean)
    (answer,) = json.loads(proc.stdout)
    assert answer["error"] is None and 0 <= answer["digit"] <= 9
    assert ("using the champion recorded in reports/registry.json instead: v1, "
            f"models/onnx/{MODEL}/model.onnx") in proc.stderr

    again = run([CLI, "retrain", "--branch", "retrain/again", "--report",
                 str(tmp_path / "report2.md")], two, clean, timeout=900)
    assert "Running stage" not in again.stdout + again.stderr
    assert "stages run: none (all up to date)" in (tmp_path / "report2.md").read_text()


def test_overrides_keep_the_params_file_as_written(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    params.write_text(original)
    apply_overrides(params, {"preprocess.subset": 3000, "train.max_epochs": 2})
    changed = [(a, b) for a, b in zip(original.splitlines(), params.read_text().splitlines(),
                                      strict=True) if a != b]
    assert len(changed) == 2, changed
    assert all("#" in b for _, b in changed)       # comments kept on the changed lines


@pytest.mark.slow
def test_run_cache_hands_a_training_to_another_clone(tmp_path: Path) -> None:
    """Scale-out: a job trains and pushes its run cache; another clone of the same commit
    (no dvc.lock from that job) reproduces nothing that was trained there."""
    seed, env = synthetic_project(tmp_path / "seed")
    storage = tmp_path / "dvc-storage"
    worker, final = tmp_path / "worker", tmp_path / "final"
    for clone in (worker, final):
        run(["git", "clone", "-q", str(seed), str(clone)], tmp_path, env)
        run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], clone, env)
    run(["dvc", "repro", f"train@{MODEL}"], worker, env)
    run(["dvc", "push", "--run-cache"], worker, env)

    offline = {k: v for k, v in env.items() if k != "MNIST_MIRROR"}
    run(["dvc", "pull", "--allow-missing", "--run-cache"], final, offline)
    out = run(["dvc", "repro", "--pull", f"train@{MODEL}"], final, offline).stdout
    assert "Running stage" not in out, out
    assert f"Stage 'train@{MODEL}' is cached - skipping run" in out, out
    assert (final / "models" / f"{MODEL}.h5").is_file()
    assert json.loads((final / "reports" / "train" / MODEL / "run.json").read_text()) == \
        json.loads((worker / "reports" / "train" / MODEL / "run.json").read_text())
