from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mnist_mlops.core.config import ConfigError, load_params, parse_params
from mnist_mlops.training.recipe import effective_epochs, effective_train, final_kind

from .conftest import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(dotted: str, value: object) -> dict:
    raw = copy.deepcopy(RAW)
    node = raw
    *parents, leaf = dotted.split(".")
    for k in parents:
        node = node[k]
    node[leaf] = value
    return raw


def test_repo_params_load_and_cover_the_six_models_and_the_projects_own() -> None:
    p = load_params(ROOT / "params.yaml")
    assert list(p.models) == ["fc_1024_512", "lenet_28_50", "mlp_512x2", "cnn_32_64_64",
                              "cnn_28_dense128", "cnn_deep_dropout", "cnn_bn_aug"]
    assert p.models["cnn_deep_dropout"].batch_size == 512
    assert p.models["cnn_28_dense128"].loss == "sparse"
    assert {final_kind(m, p.train) for n, m in p.models.items() if n != "cnn_bn_aug"} == {
        p.train.final}                                   # the tutorials follow train.final
    assert final_kind(p.models["cnn_bn_aug"], p.train) == "ensemble"
    assert p.paths.model_file("x") == Path("models/x.h5")


@pytest.mark.parametrize(("dotted", "value", "needle"), [
    ("train.seedd", 1, "train.seedd"),
    ("models.mlp_512x2.hiden_units", [1], "models.mlp_512x2.hiden_units"),
    ("models.mlp_512x2.architecture", "resnet", "unknown architecture 'resnet'"),
    ("models.mlp_512x2.lr_schedule", "step", "models.mlp_512x2.lr_schedule"),
    ("models.mlp_512x2.final", "vote", "models.mlp_512x2.final"),
    ("models.mlp_512x2.optimizer", "adamw", "models.mlp_512x2.optimizer is 'adamw'"),
    ("models.mlp_512x2.scaling", "zscore", "models.mlp_512x2.scaling"),
    ("models.mlp_512x2.batch_size", 0, "models.mlp_512x2.batch_size"),
    ("models.mlp_512x2.batch_size", "64", "must be an integer"),
    ("models.mlp_512x2.dropout", 1.5, "models.mlp_512x2.dropout"),
    ("models.mlp_512x2.hidden_units", [512], "takes 2 hidden layer size(s)"),
    ("models.lenet_28_50.dropout", 0.3, "has no dropout layer"),
    ("preprocess.strategy", "random", "preprocess.strategy"),
    ("preprocess.folds", 1, "preprocess.folds"),
    ("train.final", "average", "train.final"),
    ("train.deterministic", "yes", "must be true or false"),
    ("train.xla", "on", "train.xla is 'on'; expected one of 'auto', True, False"),
    ("train.xla", 1, "train.xla is 1"),               # YAML 1 is not true
    ("train.mixed_precision", "bf16", "train.mixed_precision is 'bf16'; expected one of "
     "'auto', False, True, 'float16', 'bfloat16'"),
    ("train.mixed_precision", 1, "train.mixed_precision is 1"),
    ("download.files", {"x.gz": "abc"}, "download.files.x.gz"),
    ("bogus", 1, "unknown top-level key 'bogus'"),
])
def test_bad_values_name_the_key(dotted: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(with_change(dotted, value))
    assert needle in str(err.value)


def test_unknown_model_lookup_lists_known_names() -> None:
    p = parse_params(RAW)
    with pytest.raises(ConfigError, match="params.yaml defines: fc_1024_512"):
        p.model("resnet50")


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("paths: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_max_epochs_caps_recipe() -> None:
    p = parse_params(with_change("train.max_epochs", 3))
    assert effective_epochs(p.models["cnn_deep_dropout"], p.train) == 3
    p = parse_params(RAW)
    assert effective_epochs(p.models["cnn_deep_dropout"], p.train) == 60


def test_a_recipes_own_precision_wins_over_train_s() -> None:
    """Like `final`: cnn_deep_dropout's recipe trains under `auto` whatever train says, a
    recipe that sets none takes train's."""
    p = parse_params(with_change("train.mixed_precision", "bfloat16"))
    assert effective_train(p.models["cnn_deep_dropout"], p.train).mixed_precision == "auto"
    assert effective_train(p.models["fc_1024_512"], p.train).mixed_precision == "bfloat16"
    assert effective_train(p.models["fc_1024_512"], p.train).seed == p.train.seed
    p = parse_params(with_change("models.cnn_deep_dropout.mixed_precision", None))
    assert effective_train(p.models["cnn_deep_dropout"], p.train).mixed_precision is False


def test_env_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = parse_params(RAW)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert p.mlflow.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    # from a DVC temp workspace, the project's own store
    exp_copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    exp_copy.mkdir(parents=True)
    monkeypatch.chdir(exp_copy)
    assert p.mlflow.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert p.mlflow.resolved_tracking_uri() == "http://127.0.0.1:5000"


@pytest.mark.parametrize(("dotted", "value", "needle"), [
    ("train.verbose", True, "train.verbose is True"),         # YAML true is not 1
    ("train.verbose", 3, "train.verbose is 3"),
    ("models.mlp_512x2.name", "other", "models.mlp_512x2.name is not a key"),
    ("models.mlp_512x2.hidden_units", [512, 0], "models.mlp_512x2.hidden_units.1 must be >= 1"),
    ("realworld.count", 15, "realworld.count must be a multiple of 10"),
    ("realworld.kinds", ["photo", "crayon"], "realworld.kinds.1 is 'crayon'; expected one of "
     "'photo', 'scan', 'marker', 'thin', 'slant', 'drawn' or 'user'"),
    ("realworld.kinds", ["scan", "scan"], "realworld.kinds lists scan more than once"),
    ("realworld.kinds", [], "realworld.kinds must not be empty"),
    ("paths.raw", "", "paths.raw must be a non-empty path string"),
    ("models", {}, "models must not be empty"),
    ("models.cnn_deep_dropout.mixed_precision", "yes",
     "models.cnn_deep_dropout.mixed_precision is 'yes'; expected one of None, 'auto', False"),
])
def test_more_bad_values_name_the_key(dotted: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(with_change(dotted, value))
    assert needle in str(err.value)


def test_params_are_frozen_and_empty_sections_take_their_defaults() -> None:
    import pydantic

    p = parse_params(with_change("register", None))
    assert p.register.margin == 0.001 and p.models["mlp_512x2"].name == "mlp_512x2"
    with pytest.raises(pydantic.ValidationError):
        p.train.seed = 1          # type: ignore[misc]
    assert p.models["mlp_512x2"].hidden_units == (512, 512)   # tuples: nothing to mutate


def test_cli_prints_the_schema_that_params_yaml_satisfies(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """`mnist-mlops params --schema` needs no params file; the schema accepts the repo's
    params.yaml and refuses a typo, as the loader does."""
    import json

    import jsonschema

    from mnist_mlops.commands import main

    monkeypatch.chdir(tmp_path)                       # no params.yaml here
    assert main(["params", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.validate(RAW, schema)
    with pytest.raises(jsonschema.ValidationError, match="seedd"):
        jsonschema.validate(with_change("train.seedd", 1), schema)
    assert main(["--params", str(ROOT / "params.yaml"), "params"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["models"]["cnn_bn_aug"]["lr_schedule"] == "cosine"
    assert resolved["paths"]["checkpoints"] == ".checkpoints"


def test_a_bad_param_exits_2_from_a_stage_and_from_the_cli(tmp_path: Path) -> None:
    """One exit status for bad input everywhere: a stage and a command given the same
    invalid params.yaml both stop with 2 and one line naming the key."""
    import subprocess
    import sys

    from .conftest import tool_env

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("train.seedd", 1)))
    cli = str(Path(sys.executable).parent / "mnist-mlops")
    for cmd in ([sys.executable, "-m", "mnist_mlops.data.preprocess"], [cli, "params"]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=tool_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert "train.seedd" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["serve", "--port", "70000"], "argument --port: 70000 is out of range"),
    (["serve", "--workers", "0"], "argument --workers: 0 is out of range: must be >= 1"),
    (["serve", "--max-batch", "0"], "argument --max-batch: 0 is out of range"),
    (["serve", "--body-timeout", "-1"], "argument --body-timeout: -1 is out of range"),
    (["serve", "--max-wait-ms", "abc"], "argument --max-wait-ms: 'abc' is not a number"),
    (["predict", "x.png", "--threshold", "2"], "must be > 0 and < 1"),
    (["sweep", "mlp_512x2", "--n-trials", "-1"], "argument --n-trials: -1 is out of range"),
    (["promote", "--version", "0"], "argument --version: 0 is out of range"),
])
def test_an_option_out_of_range_is_a_usage_error(args: list[str], says: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Said by the parser, exit 2, before any params, model or port is touched (a port over
    65535 was a traceback, a threshold of 2 a silent 'no digit found')."""
    from mnist_mlops.commands import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
