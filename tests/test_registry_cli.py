"""The commands people run by hand around the registry, on a real DVC project with tiny
synthetic data: `promote` and `rollback` leave `dvc status` clean and append to the champion
history, a clone without the tracking store predicts with the champion they chose, predict
says why it falls back, compare shows what ran, and register says what to do about a
training whose MLflow writes were never delivered."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import ARCHITECTURES

from .conftest import run, synthetic_project, tool_env
from .drawing import draw_digit

pytestmark = pytest.mark.slow   # real training, processes or servers

CLI = str(Path(sys.executable).parent / "mnist-mlops")
MODELS = ("mlp_512x2", "fc_1024_512")
REG = "mnist-digits"
UP_TO_DATE = "Data and pipelines are up to date."


def commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", message], root)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The pipeline run once (fc_1024_512 ships its fold ensemble), pushed to a local DVC
    remote and committed, as a teammate would find it."""
    root, env = synthetic_project(tmp_path_factory.mktemp("registry") / "repo", models=MODELS,
                                  **{"models.fc_1024_512.final": "ensemble"})
    run(["dvc", "repro"], root, env)
    run(["dvc", "remote", "add", "-d", "local", str(root.parent / "dvc-remote")], root, env)
    run(["dvc", "push", "-q"], root, env)
    commit(root, "pipeline")
    return root, env


def predict(where: Path, picture: Path) -> tuple[dict, str]:
    """`mnist-mlops predict --json` with no MLFLOW_TRACKING_URI: the project's own store."""
    proc = run([CLI, "predict", str(picture), "--json"], where, tool_env())
    return json.loads(proc.stdout)[0], proc.stderr


def status(root: Path, env: dict[str, str]) -> str:
    return run(["dvc", "status"], root, env).stdout.strip()


def test_promote_and_rollback_keep_dvc_clean_and_a_clone_without_the_store_follows_them(
        project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    stage_record = (root / "reports" / "registry.json").read_bytes()
    record = json.loads(stage_record)
    champ = record["champion"]
    model_of = {v: m for m, v in record["versions"].items()}
    other = next(v for v in model_of if v != champ)
    picture = root.parent / "seven.png"
    draw_digit(7, size=120).save(picture)

    promoted = run([CLI, "promote", "--version", other, "--force"], root, env)
    assert f"v{champ} -> v{other} (forced)" in promoted.stdout
    assert status(root, env) == UP_TO_DATE
    assert (root / "reports" / "registry.json").read_bytes() == stage_record
    assert "recorded in reports/registry-by-hand.json: commit it" in promoted.stderr
    commit(root, "promote")

    clone = root.parent / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], root.parent)
    run(["dvc", "pull", "-q"], clone, env)
    result, log = predict(clone, picture)          # its store is empty: the fallback
    # the recorded champion's ONNX file, which `dvc pull` fetched with its .h5
    assert result["model"]["source"] == f"models/onnx/{model_of[other]}/model.onnx", log
    assert result["model"]["version"] == other
    assert (f"cannot load models:/{REG}@champion from the tracking store sqlite:///"
            f"{clone}/mlflow.db (Registered Model with name={REG} not found); using the "
            "champion recorded in reports/registry-by-hand.json instead: "
            f"v{other}, models/onnx/{model_of[other]}/model.onnx") in log

    run([CLI, "rollback"], root, env)
    assert status(root, env) == UP_TO_DATE
    commit(root, "rollback")
    run(["git", "pull", "-q"], clone)
    result, _ = predict(clone, picture)
    assert result["model"] == {"source": f"models/onnx/{model_of[champ]}/model.onnx",
                               "version": champ, "architecture": model_of[champ],
                               "runtime": "onnx"}

    listed = run([CLI, "versions"], root, env).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [f"v{v}" for v in
                                                     sorted(model_of, key=int, reverse=True)]
    line_of = {line.split()[0]: line for line in listed}
    assert line_of[f"v{champ}"].endswith("@champion") and model_of[champ] in line_of[f"v{champ}"]
    assert "@champion" not in line_of[f"v{other}"]

    again = run([CLI, "rollback"], root, env, check=False)
    assert again.returncode == 2 and "no earlier champion to return to" in again.stderr
    tags = MlflowClient(f"sqlite:///{root}/mlflow.db").get_registered_model(REG).tags
    assert tags["champion_history"] == f"{champ},{other},{champ}"     # appended, not popped
    hand = json.loads((root / "reports" / "registry-by-hand.json").read_text())
    assert hand["action"] == "rollback" and hand["champion"] == champ
    assert [(c["action"], c["version"], c["from"]) for c in hand["champion_changes"]] == [
        ("register", champ, None), ("force", other, champ), ("rollback", champ, other)]
    repro = run(["dvc", "repro"], root, env)
    assert "Running stage" not in repro.stdout, repro.stdout


def test_the_fallback_says_why_the_store_could_not_load_the_champion(
        project: tuple[Path, dict[str, str]]) -> None:
    """The store knows the champion, but its artifacts are gone (mlruns/ not copied)."""
    root, _ = project
    picture = root.parent / "four.png"
    draw_digit(4, size=120).save(picture)
    shutil.move(root / "mlruns", root.parent / "mlruns-away")
    try:
        result, log = predict(root, picture)
    finally:
        shutil.move(root.parent / "mlruns-away", root / "mlruns")
    warning = next(line for line in log.splitlines() if "cannot load" in line)
    assert "not in the tracking store" not in warning
    assert "No such artifact" in warning, warning
    assert warning.endswith(f"instead: v{result['model']['version']}, "
                            f"{result['model']['source']}"), warning


def test_a_clone_without_the_champions_files_says_what_to_fetch(
        project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    clone = root.parent / "clone-no-pull"
    run(["git", "clone", "-q", str(root), str(clone)], root.parent)
    (clone / "reports" / "registry-by-hand.json").unlink(missing_ok=True)  # the stage's then
    record = json.loads((clone / "reports" / "registry.json").read_text())
    champ, name = record["champion"], record["champion_model"]["model"]
    picture = root.parent / "two.png"
    draw_digit(2, size=120).save(picture)
    cmd = [CLI, "predict", str(picture)]
    unpulled = run(cmd, clone, tool_env(), check=False)
    assert unpulled.returncode == 2 and "Traceback" not in unpulled.stderr
    assert (f"error: cannot load models:/{REG}@champion from the tracking store sqlite:///"
            f"{clone}/mlflow.db (Registered Model with name={REG} not found), and the champion "
            f"recorded in reports/registry.json is v{champ} ({name}), but models/{name}.h5 and "
            f"reports/train/{name}/run.json are not here: `dvc pull train@{name}`"
            ) in unpulled.stderr
    run(["dvc", "pull", "-q", f"train@{name}"], clone, env)
    run_file = clone / "reports" / "train" / name / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "run_id": "0" * 32}))
    other_run = run(cmd, clone, tool_env(), check=False)  # as if retrained, not registered
    assert other_run.returncode == 2
    assert (f"is v{champ} ({name}), but models/{name}.h5 is from another training run: "
            "check out the commit that trained it and `dvc pull`") in other_run.stderr


def test_compare_shows_the_architectures_size_and_the_epochs_trained(
        project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    out = run([CLI, "compare"], root, env).stdout
    runs, by_kind = out.split("\n\n")        # the runs, then real-world accuracy by kind
    rows = {line.split()[0]: line for line in runs.splitlines()[2:]}
    assert f"{ARCHITECTURES['fc_1024_512'].params:,} (ensemble of 2)" in rows["fc_1024_512"]
    assert "2 (recipe 20)" in rows["fc_1024_512"] and "2 (recipe 10)" in rows["mlp_512x2"]
    assert "epochs=" not in out
    assert by_kind.split()[:4] == ["model", "real-world", "photo", "(plain)"]
    assert {line.split()[0] for line in by_kind.splitlines()[2:]} == set(MODELS)


def test_register_says_how_to_deliver_a_trainings_undelivered_mlflow_writes(
        project: tuple[Path, dict[str, str]]) -> None:
    """train@ keeps its outputs when the store is unreachable at its end, with no model URI
    in run.json (tests/test_journal.py makes that for real); register then stops."""
    root, env = project
    record = root / "reports" / "registry.json"
    before, status_before = record.read_bytes(), status(root, env)
    run_file = root / "reports" / "train" / "mlp_512x2" / "run.json"
    kept = run_file.read_text()
    run_file.write_text(json.dumps({**json.loads(kept), "model_uri": None}))
    try:
        proc = run(["dvc", "repro", "-s", "register"], root, env, check=False)
        # the failed registration left the previous record as it was (persist: true)
        assert record.read_bytes() == before
    finally:
        run_file.write_text(kept)
    assert status(root, env) == status_before
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "non-TensorFlow" not in out
    assert ("mlp_512x2: its training run's MLflow writes were never delivered (the tracking "
            "store was unreachable when train@mlp_512x2 ended)") in out
    assert "run `dvc repro`: it delivers them from .checkpoints/ without retraining" in out
