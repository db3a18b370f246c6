"""dvc.yaml's code dependencies match the code each stage runs: editing any module a stage
imports (directly or through another module) must make DVC rerun that stage."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from .conftest import ROOT

PACKAGE = ROOT / "src" / "mnist_mlops"


def package_imports(module: str) -> set[str]:
    """The package's modules that `module` imports, transitively (function-level imports
    included: they run too), and those it ships by path (`with_name("x.py")`, such as the
    MLflow model's loader file)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not (PACKAGE / f"{name}.py").is_file():
            continue
        seen.add(name)
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "mnist_mlops":
                    todo += [a.name for a in node.names]
                elif node.module.startswith("mnist_mlops."):
                    todo.append(node.module.split(".")[1])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "with_name"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                todo.append(str(node.args[0].value).removesuffix(".py"))  # a file it ships
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names
                         if a.name.startswith("mnist_mlops.")]
    return seen


def test_every_stage_depends_on_the_code_it_runs() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split("mnist_mlops.")[1].split()[0]
        listed = {Path(d).stem for d in body["deps"] if str(d).startswith("src/mnist_mlops/")}
        needed = package_imports(module)
        assert listed == needed, (f"stage {name}: missing {sorted(needed - listed)}, "
                                  f"not imported {sorted(listed - needed)}")
