"""dvc.yaml's code dependencies match the code each stage runs: editing any module a stage
imports (directly or through another module) must make DVC rerun that stage."""

from __future__ import annotations

import ast
from pathlib import Path

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
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = "mnist_mlops." + body["cmd"].split("mnist_mlops.")[1].split()[0]
        listed = {str(d) for d in body["deps"] if str(d).startswith("src/mnist_mlops/")}
        needed = package_imports(module)
        assert listed == needed, (f"stage {name}: missing {sorted(needed - listed)}, "
                                  f"not imported {sorted(listed - needed)}")
