"""dvc.yaml's code dependencies match the code each stage runs: editing any module a stage
imports (directly or through another module) must make DVC rerun that stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "mnist_mlops"


def module_file(dotted: str) -> Path | None:
    """`mnist_mlops.data.parse` -> src/mnist_mlops/data/parse.py (None for a package)."""
    f = SRC.joinpath(*dotted.split(".")).with_suffix(".py")
    return f if f.is_file() else None


def package_imports(module: str) -> set[str]:
    """The package's modules (as repo-relative paths) that dotted `module` imports,
    transitively (function-level imports included: they run too), and those it ships by
    path (`with_name("x.py")`, such as the MLflow model's loader file)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        f = module_file(name)
        if f is None or str(f) in seen:
            continue
        seen.add(str(f))
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("mnist_mlops"):
                    todo.append(node.module)
                    todo += [f"{node.module}.{a.name}" for a in node.names]  # submodules
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "with_name"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                sibling = str(node.args[0].value).removesuffix(".py")
                todo.append(f"{name.rsplit('.', 1)[0]}.{sibling}")   # a file it ships
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("mnist_mlops.")]
    return {str(Path(p).relative_to(ROOT)) for p in seen}


def test_every_stage_depends_on_the_code_it_runs() -> None:
    """Every stage but train@ depends on all it imports (train@: see below)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "train":
            continue
        body = stage.get("do", stage)
        module = "mnist_mlops." + body["cmd"].split("mnist_mlops.")[1].split()[0]
        listed = {str(d) for d in body["deps"] if str(d).startswith("src/mnist_mlops/")}
        needed = package_imports(module)
        assert listed == needed, (f"stage {name}: missing {sorted(needed - listed)}, "
                                  f"not imported {sorted(listed - needed)}")


# Modules that model code may import without being model code itself: they validate params
# (whose values are dependencies of their own), write files atomically, or wire processes.
NEUTRAL = {"src/mnist_mlops/core/config.py", "src/mnist_mlops/core/config_errors.py",
           "src/mnist_mlops/core/fsio.py", "src/mnist_mlops/core/runtime.py"}


def model_code() -> set[str]:
    from mnist_mlops.training.checkpoint import MODEL_CODE

    return {f"src/mnist_mlops/{rel}" for rel in MODEL_CODE}


def dotted(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def test_train_depends_on_exactly_the_model_code() -> None:
    """train@<model> lists MODEL_CODE, which the checkpoint fingerprint hashes too."""
    body = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    listed = {str(d) for d in body["deps"] if str(d).startswith("src/mnist_mlops/")}
    assert listed == model_code()


def test_model_code_is_closed_under_imports() -> None:
    """What model code imports is model code (or neutral): a module that can change the
    model cannot hide outside the list."""
    closure = set().union(*(package_imports(dotted(m)) for m in model_code()))
    assert closure - NEUTRAL - model_code() == set()


def test_the_train_stage_reaches_the_fit_loop_through_model_code() -> None:
    """The stage module itself only wires services: the loop, layers and data it trains
    with are all in MODEL_CODE."""
    reached = package_imports("mnist_mlops.training.train")
    assert model_code() <= reached


def _edit(path: Path, old: str, new: str) -> None:
    """Replace the first `old` in a copied project's source file (it must be there)."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _train_status(root: Path, stage: str) -> dict:
    import json

    from .conftest import run

    return json.loads(run(["dvc", "status", "--json", stage], root).stdout or "{}")


@pytest.mark.slow
def test_rewording_tracking_or_serving_code_retrains_nothing(tmp_path: Path) -> None:
    """Real DVC on a copy of the project: a stage recorded by `dvc commit`, then edits.
    Log lines reworded in the tracking, serving and stage-wiring code leave `train@` up to
    date and the checkpoint fingerprint unchanged; a changed layer or fit loop changes
    both."""
    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.checkpoint import code_digest

    from .conftest import make_project, run

    root = make_project(tmp_path / "project")
    paths = load_params(root / "params.yaml").paths
    stage, name = "train@mlp_512x2", "mlp_512x2"
    for f in (paths.dataset, paths.folds, paths.model_file(name)):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"stand-in")
    out = root / paths.train_dir(name)
    for f in ("summary.txt", "run.json", "cv.json", "calibration.json", "history/fold_0.csv",
              "curves.csv", "curves.png", "reliability.png"):
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_text("stand-in\n")
    run(["dvc", "commit", "-f", stage], root)
    assert _train_status(root, stage) == {}
    package = root / "src" / "mnist_mlops"
    digest = code_digest(package)

    _edit(package / "tracking" / "journal.py", 'log.warning("', 'log.warning("(reworded) ')
    _edit(package / "serving" / "predict.py", 'log.warning("', 'log.warning("(reworded) ')
    _edit(package / "training" / "train.py", 'log.info("', 'log.info("(reworded) ')
    _edit(package / "core" / "runtime.py", 'log.error("', 'log.error("(reworded) ')
    assert _train_status(root, stage) == {}, "a reworded log line reruns train@"
    assert code_digest(package) == digest, "a reworded log line discards checkpoints"

    models = package / "training" / "models.py"
    _edit(models, "L.Dropout(p.dropout),", "L.Dropout(p.dropout / 2),")
    assert stage in _train_status(root, stage), "a changed layer leaves train@ up to date"
    assert code_digest(package) != digest, "a changed layer resumes an old checkpoint"
    run(["git", "checkout", "--", "src/mnist_mlops/training/models.py"], root)
    assert _train_status(root, stage) == {}

    _edit(package / "training" / "fit.py", 'record["val_loss"] < prog.best_loss',
          'record["val_loss"] <= prog.best_loss')
    assert stage in _train_status(root, stage), "a changed fit loop leaves train@ up to date"
    assert code_digest(package) != digest, "a changed fit loop resumes an old checkpoint"


@pytest.mark.slow
def test_editing_the_monitor_or_sweep_schema_reruns_no_stage(tmp_path: Path) -> None:
    """Real DVC on a copy of the project, every stage recorded by `dvc commit` over
    stand-in outputs: edits to the monitor and sweep schemas leave the whole pipeline up to
    date (no stage reads them); an edit to the pipeline's own schema does not."""
    import json

    from dvc.repo import Repo

    from .conftest import make_project, run

    root = make_project(tmp_path / "project")
    with Repo(str(root)) as repo:
        outs = [Path(str(out.fs_path)) for out in repo.index.outs]
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("stand-in\n")
    run(["dvc", "commit", "-f", "-q"], root)

    def changed() -> set[str]:
        return set(json.loads(run(["dvc", "status", "--json"], root).stdout or "{}"))

    assert changed() == set()
    package = root / "src" / "mnist_mlops"
    _edit(package / "monitoring" / "settings.py", "window: int = Field(500, ge=30)",
          "window: int = Field(400, ge=30)")
    _edit(package / "sweep" / "settings.py", 'pruner: Literal["median", "hyperband", "none"]'
          ' = "median"', 'pruner: Literal["median", "hyperband", "none"] = "hyperband"')
    assert changed() == set(), "an edit of the monitor or sweep schema reruns a stage"

    _edit(package / "core" / "config.py", "retries: int = Field(3, ge=1)",
          "retries: int = Field(4, ge=1)")
    assert {"download", "parse", "register"} <= changed()
