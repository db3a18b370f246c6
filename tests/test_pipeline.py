"""The whole DVC pipeline for real (quick profile, real MNIST from the local mirror) in a
temporary git repo, then the registry, the gate and serving against its MLflow store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import load_params
from mnist_mlops.training.backend import precision_policy

from .conftest import QUICK, ROOT, free_port, make_project, run, tool_env
from .needs import requires
from .test_plots_page import draw_offline

pytestmark = pytest.mark.slow   # real training, processes or servers

MODELS = ["fc_1024_512", "lenet_28_50", "mlp_512x2", "cnn_32_64_64", "cnn_28_dense128",
          "cnn_deep_dropout", "cnn_bn_aug"]
ENSEMBLES = {"cnn_bn_aug"}     # its recipe ships the fold ensemble (final: ensemble)
# the recipes that set their own `mixed_precision: auto` in the repo's params.yaml
AUTO_PRECISION = {name for name, m in load_params(ROOT / "params.yaml").models.items()
                  if m.mixed_precision == "auto"}
REG = "mnist-digits"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> Path:
    root = make_project(tmp_path_factory.mktemp("pipeline") / "repo",
                        {**QUICK, "register.floor": 0.5})
    run(["dvc", "repro"], root, tool_env(MNIST_MIRROR=str(mnist_mirror)), timeout=1500)
    return root


def env_for(project: Path, mirror: Path | None = None) -> dict[str, str]:
    extra = {"MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    if mirror:
        extra["MNIST_MIRROR"] = str(mirror)
    return tool_env(**extra)


def client_for(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project}/mlflow.db")


def stages_that_would_run(project: Path, mirror: Path) -> list[str]:
    out = run(["dvc", "repro", "--dry"], project, env_for(project, mirror)).stdout
    return re.findall(r"Running stage '([^']+)'", out)


def test_outputs_of_every_stage(project: Path) -> None:
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == sorted([
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"])
    folds = (project / "data" / "processed" / "folds.csv").read_text().splitlines()
    assert len(folds) == 1 + 1000
    accuracies = []
    for m in MODELS:
        assert (project / "models" / f"{m}.h5").is_file()
        metrics = json.loads((project / "metrics" / f"{m}.json").read_text())
        # one quick epoch is a single step for some recipes (batch 512) and too few for
        # BatchNorm's moving averages (cnn_bn_aug): those may stay at chance level
        assert 0 < metrics["test_accuracy"] <= 1 and 0 < metrics["cv_val_accuracy_mean"] <= 1
        accuracies.append(metrics["test_accuracy"])
        assert not any(k.startswith("infer_") for k in metrics)   # timings kept out of diffs
        speed = json.loads((project / "reports" / "evaluate" / m / "speed.json").read_text())
        assert speed["infer_images_per_s"] > 0
        assert (project / "reports" / "evaluate" / m / "confusion.png").is_file()
        assert 0 < metrics["realworld_accuracy"] <= 1
        assert ("test_accuracy_member_mean" in metrics) is (m in ENSEMBLES)
        # every model, the ensemble too, also as one ONNX graph that answers like Keras
        parity = json.loads((project / "models" / "onnx" / m / "parity.json").read_text())
        assert parity["ok"] and parity["images"] == 10000 and parity["max_diff"] <= 1e-4
        assert (project / "models" / "onnx" / m / "model.onnx").is_file()
        assert speed["infer_onnx_images_per_s"] > 0 and speed["onnx_export_s"] > 0
        # calibrated on the folds (train), measured on the test digits (evaluate)
        oof = json.loads((project / "reports" / "train" / m / "calibration.json").read_text())
        assert oof["images"] == 1000 and oof["unsure_right_given_up"] <= 0.05
        assert metrics["temperature"] == oof["temperature"] and 0 <= metrics["test_ece"] <= 1
        assert 0 <= metrics["test_ece_calibrated"] <= 1 and 0 <= metrics["test_unsure_rate"] <= 1
        for figure in ("train/" + m, "evaluate/" + m):
            assert (project / "reports" / figure / "reliability.png").is_file()
    assert max(accuracies) > 0.5                     # the quick profile does learn
    for kind in ("photo", "scan", "marker", "thin", "slant", "drawn"):   # count per kind
        pictures = list((project / "data" / "realworld" / kind).rglob("*.png"))
        assert len(pictures) == QUICK["realworld.count"], kind
        assert 0 <= metrics[f"realworld_plain_accuracy/{kind}"] <= 1
    decision = json.loads((project / "reports" / "registry.json").read_text())
    assert decision["promoted"] is True and len(decision["new_versions"]) == len(MODELS)
    assert_record_matches_aliases(project)


def assert_record_matches_aliases(project: Path) -> dict:
    """The current decision record (the register stage's reports/registry.json, or the one
    promote and rollback write beside it, whichever follows more champion changes) says
    what the registry says, whichever command ran last."""
    import contextlib

    from mnist_mlops.core.config import load_params
    from mnist_mlops.registry.records import recorded_champion

    with contextlib.chdir(project):
        found = recorded_champion(load_params())
    assert found is not None, "no decision record names a champion"
    record = found[1]
    client = client_for(project)
    aliases = {k: str(v) for k, v in client.get_registered_model(REG).aliases.items()}
    assert record["champion"] == aliases.get("champion")
    assert (record["challenger"] or {}).get("version") == aliases.get("challenger")
    assert record["champion_model"]["version"] == aliases.get("champion")
    history = client.get_registered_model(REG).tags["champion_history"].split(",")
    assert record["champion_history"] == history and history[-1] == aliases["champion"]
    return record


def test_mlflow_has_one_parent_run_per_model_with_nested_folds(project: Path) -> None:
    client = client_for(project)
    exp = client.get_experiment_by_name("mnist-mlops")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # UI: runs first
    parents = client.search_runs([exp.experiment_id], "tags.role = 'parent'")
    assert sorted(r.data.tags["model_name"] for r in parents) == sorted(MODELS)
    for p in parents:
        assert p.info.status == "FINISHED"
        (ds,) = p.inputs.dataset_inputs
        assert p.data.tags["data_sha256"].startswith(ds.dataset.digest)
        assert ds.dataset.name == "mnist-train" and len(ds.dataset.digest) == 32
        # evaluate adds its results without reopening the run: the duration is training's
        assert p.info.end_time - p.info.start_time < 100_000
        assert "test_accuracy" in p.data.metrics and "cv_val_accuracy_mean" in p.data.metrics
        kids = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{p.info.run_id}'")
        roles = ["fold", "fold"] + ([] if p.data.tags["model_name"] in ENSEMBLES else ["final"])
        assert sorted(k.data.tags["role"] for k in kids) == sorted(roles)
        # a recipe's own precision (params.yaml): auto takes bfloat16 under TensorFlow on a
        # CPU with bfloat16 instructions; the recipes that set none train in float32
        own = p.data.tags["model_name"] in AUTO_PRECISION
        assert p.data.tags["precision"] == (precision_policy("auto") if own else "float32")


def test_registry_one_version_per_model_and_one_champion(project: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    client = client_for(project)
    versions = client.search_model_versions(f"name='{REG}'")
    assert sorted(v.tags["model_name"] for v in versions) == sorted(MODELS)
    aliases = client.get_registered_model(REG).aliases  # one version per alias, by design
    assert set(aliases) == {"champion", "challenger"}
    # the challenger is chosen by CV accuracy; the test set then judges it
    best = max(versions, key=lambda v: float(v.tags["cv_val_accuracy_mean"]))
    assert str(aliases["champion"]) == str(best.version) == str(aliases["challenger"])
    others = [v for v in versions if str(v.version) != str(best.version)]
    assert all(v.tags["gate_decision"].startswith("not the challenger") for v in others)
    for v in versions:
        assert {"architecture", "test_accuracy", "cv_val_accuracy_mean", "cv_val_accuracy_std",
                "data_sha256", "git_commit"} <= set(v.tags)
        assert v.tags["model_name"] in v.description and "Test accuracy" in v.description
        assert v.tags["onnx"] == "true" and float(v.tags["onnx_max_diff"]) <= 1e-4
        flavors = mlflow.models.get_model_info(f"models:/{REG}/{v.version}").flavors
        assert {"onnx", "python_function"} <= set(flavors)
        assert flavors["python_function"]["loader_module"] == "mlflow.onnx"
        assert float(v.tags["temperature"]) > 0 and 0 < float(v.tags["unsure_below"]) < 1
    assert "Gate: promoted" in client.get_model_version(REG, aliases["champion"]).description
    # the registered model carries its calibration (in its ONNX file, from the .h5)
    from mnist_mlops.inference.predictor import Predictor

    cal = Predictor(f"models:/{REG}@champion").calibration
    assert cal is not None and f"{cal.temperature:.6g}" == best.tags["temperature"]


def test_second_repro_does_nothing(project: Path, mnist_mirror: Path) -> None:
    before = len(client_for(project).search_model_versions(f"name='{REG}'"))
    out = run(["dvc", "repro"], project, env_for(project, mnist_mirror)).stdout
    assert "Data and pipelines are up to date" in out
    run(["dvc", "repro", "-f", "-s", "register"], project, env_for(project, mnist_mirror))
    assert len(client_for(project).search_model_versions(f"name='{REG}'")) == before
    decision = assert_record_matches_aliases(project)
    assert decision["new_versions"] == [] and decision["promoted"] is False
    assert decision["challenger"] is not None           # still there, as in the registry


def test_param_changes_rerun_only_what_depends_on_them(project: Path, mnist_mirror: Path
                                                       ) -> None:
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        raw = yaml.safe_load(original)
        raw["models"]["mlp_512x2"]["learning_rate"] = 0.002
        raw["download"]["mirrors"] = ["https://example.invalid/"]  # not a data change
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        # A dry run lists the stages whose own inputs changed (downstream ones follow when
        # their inputs change): one model's params touch that model's training alone.
        assert stages_that_would_run(project, mnist_mirror) == ["train@mlp_512x2"]
        raw["preprocess"]["seed"] = 7
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        assert stages_that_would_run(project, mnist_mirror) == ["preprocess",
                                                                 "train@mlp_512x2"]
    finally:
        params_file.write_text(original)


def test_champion_alias_loads_and_predicts_raw_uint8(project: Path) -> None:
    import mlflow

    from mnist_mlops.data.dataset import load_dataset

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"models:/{REG}@champion")     # MLflow's onnx flavour
    data = load_dataset(project / "data" / "interim" / "mnist.npz")
    x, y = data["x_test"][:500][..., None], data["y_test"][:500]
    out = model.predict(x)
    pred = np.asarray(out["probabilities"]).argmax(axis=1)
    assert out["embedding"].shape[0] == 500
    champion = client_for(project).get_model_version_by_alias(REG, "champion")
    assert (pred == y).mean() >= float(champion.tags["test_accuracy"]) - 0.05

    # the predict command's default model is that same champion
    from PIL import Image

    picture = project / "digit.png"
    Image.fromarray(255 - data["x_test"][0]).resize((200, 200)).save(picture)
    cli = str(Path(sys.executable).parent / "mnist-mlops")
    out = run([cli, "predict", str(picture), "--json"], project, env_for(project)).stdout
    (result,) = json.loads(out)
    assert result["error"] is None and result["digit"] in {int(pred[0]), int(y[0])}
    assert result["model"] == {"source": f"models:/{REG}@champion",
                               "version": str(champion.version),
                               "architecture": champion.tags["architecture"],
                               "runtime": "onnx"}
    keras = run([cli, "predict", str(picture), "--json", "--runtime", "keras"], project,
                env_for(project)).stdout
    (by_keras,) = json.loads(keras)
    assert by_keras["model"]["runtime"] == "keras" and by_keras["digit"] == result["digit"]
    assert abs(by_keras["probability"] - result["probability"]) < 1e-4


def test_cli_compare_promote_rollback(project: Path) -> None:
    env = env_for(project)
    cli = [str(Path(sys.executable).parent / "mnist-mlops")]
    out = run([*cli, "compare", "--markdown", "report.md"], project, env).stdout
    for m in MODELS:
        assert m in out
    md = (project / "report.md").read_text()
    main_table, by_kind = md.split("\n\n")       # the runs, then real-world accuracy by kind
    assert main_table.startswith("| model |") and main_table.count("\n") == 1 + len(MODELS)
    assert by_kind.startswith("| model | real-world | photo (plain) |")
    client = client_for(project)
    champ = str(client.get_model_version_by_alias(REG, "champion").version)
    worst = min(client.search_model_versions(f"name='{REG}'"),
                key=lambda v: float(v.tags["test_accuracy"]))
    worst_v = str(worst.version)

    def champion() -> str:
        return str(client.get_model_version_by_alias(REG, "champion").version)

    refused = run([*cli, "promote", "--version", worst_v], project, env, check=False)
    assert refused.returncode == 2 and champion() == champ
    assert f"not promoting v{worst_v}: test accuracy" in refused.stderr
    assert re.search("below the floor|does not beat champion", refused.stderr)
    assert "--force" in refused.stderr

    forced = run([*cli, "promote", "--version", worst_v, "--force"], project, env)
    assert champion() == worst_v and "(forced)" in forced.stdout
    record = assert_record_matches_aliases(project)
    assert record["action"] == "promote" and record["forced"] is True
    assert record["promoted"] is True and record["gate_passed"] is False
    assert client.get_model_version(REG, worst_v).tags["gate_decision"].startswith(
        "forced by hand against the gate: test accuracy")

    # back to the better model by hand: floor and margin pass, so the gate pairs the two
    # models on the test images (McNemar) and on the real-world set
    run([*cli, "promote", "--version", champ], project, env)
    record = assert_record_matches_aliases(project)
    assert champion() == champ and record["forced"] is False and record["promoted"] is True
    paired = record["paired_test"]
    assert paired["better"] > paired["worse"] and paired["p_value"] < 0.05
    assert "significant" in record["reason"]
    assert all(0 < v <= 1 for v in record["realworld_accuracy"].values())
    assert set(record["realworld_accuracy_by_kind"]) == {"photo", "scan", "marker", "thin",
                                                         "slant", "drawn"}
    tags = client.get_model_version(REG, champ).tags
    assert tags["gate_discordant"] == f"{paired['better']}/{paired['worse']}"

    again = run([*cli, "promote", "--version", champ], project, env, check=False)
    assert again.returncode == 2 and "already" in again.stderr
    run([*cli, "rollback"], project, env)
    record = assert_record_matches_aliases(project)
    assert champion() == worst_v and record["action"] == "rollback"
    run([*cli, "rollback"], project, env)
    assert champion() == champ and assert_record_matches_aliases(project)["champion"] == champ
    bad = run([*cli, "promote", "--version", "99"], project, env, check=False)
    assert bad.returncode != 0 and "has no version 99" in bad.stderr
    assert "existing versions: 1, 2, 3, 4, 5, 6, 7" in bad.stderr


def test_mlflow_models_serve_champion(project: Path) -> None:
    from mnist_mlops.data.dataset import load_dataset

    port = free_port()
    env = env_for(project)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{REG}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        data = load_dataset(project / "data" / "interim" / "mnist.npz")
        x, y = data["x_test"][:64][..., None], data["y_test"][:64]
        body = json.dumps({"inputs": x.tolist()}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})
                reply = json.loads(urllib.request.urlopen(req, timeout=30).read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        # the champion's MLflow model is the ONNX graph: both of its outputs, by name
        pred = np.asarray(reply["predictions"]["probabilities"]).argmax(axis=1)
        assert (pred == y).mean() > 0.7
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_worse_model_is_refused_by_the_gate(project: Path, mnist_mirror: Path) -> None:
    """Retrain one model with a recipe that cannot learn: registered, but not promoted."""
    client = client_for(project)
    champ = client.get_model_version_by_alias(REG, "champion").version
    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["models"]["mlp_512x2"].update(optimizer="sgd", learning_rate=1e-7)
    raw["register"]["floor"] = 0.0  # so that the margin, not the floor, is what refuses it
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["dvc", "repro"], project, env_for(project, mnist_mirror), timeout=900)
    decision = json.loads((project / "reports" / "registry.json").read_text())
    assert decision["challenger"]["model"] == "mlp_512x2"
    assert decision["promoted"] is False and "does not beat champion" in decision["reason"]
    assert len(client.search_model_versions(f"name='{REG}'")) == len(MODELS) + 1
    assert str(client.get_model_version_by_alias(REG, "champion").version) == str(champ)
    assert str(client.get_model_version_by_alias(REG, "challenger").version) == \
        decision["challenger"]["version"]
    assert_record_matches_aliases(project)


@requires("chromium")
def test_every_vega_plot_of_the_pipeline_draws_offline(project: Path, tmp_path: Path) -> None:
    """Each model's fold curves and confusion matrix: 14 interactive plots, no network."""
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project, env_for(project))
    assert draw_offline(tmp_path / "plots" / "index.html") == [True] * (2 * len(MODELS))


def test_plots_show_one_learning_curve_chart_per_model(project: Path) -> None:
    out = run(["dvc", "plots", "show", "--json"], project, env_for(project)).stdout
    data = json.loads(out)["data"]
    assert not [k for k in data if "history" in k]            # no chart per fold file
    curves = {k: v for k, v in data.items() if k.endswith("curves.csv")}
    assert len(curves) == len(MODELS)
    for path, (chart,) in curves.items():
        fits = {row["fit"] for row in chart["content"]["data"]["values"]}
        refit = set() if path.split("/")[-2] in ENSEMBLES else {"final refit (training)"}
        assert fits == {"fold 0 (validation)", "fold 1 (validation)", *refit}
        assert chart["content"]["encoding"]["color"]["field"] == "fit"
