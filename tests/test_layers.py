"""The package's import graph: no circle, and no import against the layers.

Every import counts, at the top of a module or inside a function: both run. A circle makes
two files one unit that neither can change alone; an import from a lower layer to a higher
one makes the foundation depend on what stands on it (docs/code.md draws the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "src" / "mnist_mlops"
# Bottom to top. A module may import its own subpackage and any subpackage of a lower
# layer; subpackages of one layer do not import each other.
LAYERS = (
    {"core"},
    {"data", "tracking"},
    {"inference"},
    {"training"},
    {"evaluation", "registry", "sweep", "monitoring"},
    {"serving", "jobs"},
    {"commands"},
)


def layer(subpackage: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if subpackage in names)


def module_path(dotted: str, root: Path) -> Path | None:
    """`mnist_mlops.data.parse` -> its file under `root` (a package: its __init__.py)."""
    base = root.parent.joinpath(*dotted.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imports_of(f: Path, root: Path) -> set[Path]:
    """The package's files that `f` imports, at any depth of the module."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").startswith("mnist_mlops"):
            subs = {module_path(f"{node.module}.{a.name}", root) for a in node.names} - {None}
            found |= subs or {module_path(node.module, root)} - {None}
        elif isinstance(node, ast.Import):
            found |= {module_path(a.name, root) for a in node.names
                      if a.name.startswith("mnist_mlops.")} - {None}
    found.discard(f)
    return found


def graph(root: Path = PACKAGE) -> dict[Path, set[Path]]:
    return {f: imports_of(f, root) for f in sorted(root.rglob("*.py"))}


def circles(edges: dict[Path, set[Path]]) -> list[list[Path]]:
    """Files that import each other in a loop (strongly connected, more than one file)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    out: list[list[Path]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(f: Path) -> str:
    """`f` as docs and messages name it: its path inside the package."""
    last = len(f.parts) - 1 - f.parts[::-1].index("mnist_mlops")
    return "/".join(f.parts[last + 1:])


def subpackage(f: Path) -> str | None:
    parts = Path(name(f)).parts
    return parts[0] if len(parts) > 1 else None


def against_the_layers(edges: dict[Path, set[Path]]) -> list[str]:
    bad = []
    for f, targets in edges.items():
        here = subpackage(f)
        for t in sorted(targets):
            there = subpackage(t)
            if here is None or there is None or here == there:
                continue
            if layer(there) >= layer(here):
                bad.append(f"{name(f)} (layer {layer(here)}) imports {name(t)} "
                           f"(layer {layer(there)})")
    return bad


def test_every_subpackage_has_a_layer() -> None:
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert found == set().union(*LAYERS)


def test_no_import_circle() -> None:
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(
        " <-> ".join(name(f) for f in group) for group in found)


def test_no_import_against_the_layers() -> None:
    bad = against_the_layers(graph())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.fixture
def knotted(tmp_path: Path) -> Path:
    """A copy of the package with one circle and one upward import added."""
    import shutil

    copy = tmp_path / "mnist_mlops"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "core" / "fsio.py").open("a") as f:
        f.write("\nfrom mnist_mlops.core import config  # noqa\n")
    with (copy / "data" / "idx.py").open("a") as f:
        f.write("\ndef late():\n    from mnist_mlops.serving import predict  # noqa\n")
    return copy


def test_the_checks_find_a_circle_and_an_upward_import(knotted: Path) -> None:
    """The checks can fail: on a copy with one knot of each kind, each names its files."""
    edges = graph(knotted)
    assert [[name(f) for f in g] for g in circles(edges)] == [["core/config.py",
                                                                "core/fsio.py"]]
    assert against_the_layers(edges) == [
        "data/idx.py (layer 1) imports serving/predict.py (layer 5)"]
