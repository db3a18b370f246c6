"""params.yaml as DVC rewrites it: `dvc exp run -S key=value` loads the whole file with
ruamel.yaml, sets the values and writes it back (dvc.utils.hydra.apply_overrides), and
`dvc exp apply` brings that file into the workspace (`mnist-mlops exp-run`, what `make
quick` runs, sets its params with the same editor). Written in the form DVC's editor
writes, an experiment changes one line per value and keeps every comment."""

from __future__ import annotations

import difflib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT


def makefile_quick() -> list[str]:
    """The overrides of `make quick`: the command `make -n quick` would run."""
    out = subprocess.run(["make", "-n", "quick"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    line = next(x for x in out.splitlines() if x.startswith("mnist-mlops exp-run"))
    return overrides(line)


def test_make_quick_runs_the_packages_quick_profile() -> None:
    """One definition of the quick profile: `make quick` passes exactly the overrides that
    `retrain --profile quick` writes (jobs/profiles.py)."""
    from mnist_mlops.jobs.profiles import profile

    assert makefile_quick() == [f"{k}={v}" for k, v in profile("quick").items()]


def readme_experiments() -> list[list[str]]:
    """The overrides of each `dvc exp run -S ...` example in the README."""
    lines = re.findall(r"^dvc exp run .*$", (ROOT / "README.md").read_text(), re.M)
    found = [overrides(line.split("#")[0]) for line in lines]
    assert [o for o in found if o], "no `dvc exp run -S` example in the README"
    return [o for o in found if o]


def overrides(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-S", "--set-param")]


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="",
                                     n=0))
    removed = [x[1:] for x in diff if x.startswith("-") and not x.startswith("---")]
    added = [x[1:] for x in diff if x.startswith("+") and not x.startswith("+++")]
    return removed, added


@pytest.mark.parametrize("sets", [makefile_quick(), *readme_experiments()],
                         ids=lambda s: " ".join(s))
def test_an_experiment_changes_one_line_per_value(tmp_path: Path, sets: list[str]) -> None:
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = path.read_text()
    apply_overrides(path, sets)                       # what `dvc exp run -S` does
    after = path.read_text()
    removed, added = changed_lines(before, after)
    report = "\n".join(["removed:", *removed, "added:", *added])
    assert len(removed) == len(added) == len(sets), report
    for setting in sets:
        key, value = setting.split("=", 1)
        leaf = rf"\s*{re.escape(key.rsplit('.', 1)[1])}: {re.escape(value)}(\s|$)"
        assert [line for line in added if re.match(leaf, line)], (setting, report)
    assert before.count("#") == after.count("#")      # no comment lost


def test_dvcs_editor_writes_params_back_unchanged(tmp_path: Path) -> None:
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    with modify_yaml(path):
        pass
    assert changed_lines((ROOT / "params.yaml").read_text(), path.read_text()) == ([], [])


def test_comments_point_at_pages_of_this_repository() -> None:
    """Every file a params.yaml comment names exists in the repository, and every section
    it names (`docs/x.md "Section"`) is a heading of that page."""
    text = (ROOT / "params.yaml").read_text()
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    named = re.findall(r"(?<![\w/.])((?:\.\./)?[\w./-]+/[\w.-]+\.(?:py|md))", comments)
    assert named, "no file named in the comments"
    missing = [p for p in named if not (ROOT / p).resolve().is_relative_to(ROOT)
               or not (ROOT / p).exists()]
    assert not missing, missing
    sections = re.findall(r"([\w./-]+\.md|README) \"([^\"]+)\"", comments)
    assert sections, "no section named in the comments"
    for page, title in sections:
        headings = re.findall(r"^#+ (.+)$", (ROOT / page.replace("README", "README.md"))
                              .read_text(), re.M)
        assert title in headings, (page, title)
    assert "(README)" not in comments and "see README)" not in comments  # which section?
    assert yaml.safe_load(text)["models"]


def test_overrides_keep_their_type_through_dvc(tmp_path: Path) -> None:
    """What a sweep's winner, the quick profile and the retrain loop write: a float keeps
    its point (YAML reads `1e-05` as a string), and after DVC's editor has set them a list
    stays a list, an integer an integer, a float a float, null null."""
    from dvc.utils.hydra import apply_overrides

    from mnist_mlops.core.overrides import assignments, dvc_args

    assert dvc_args({"models.mlp_512x2.learning_rate": 1e-05}) == [
        "-S", "models.mlp_512x2.learning_rate=1.0e-05"]
    changes = {"models.mlp_512x2.learning_rate": 0.0005, "models.mlp_512x2.hidden_units":
               (64, 32), "train.max_epochs": 2, "models.mlp_512x2.dropout": None}
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    apply_overrides(path, assignments(changes))
    raw = yaml.safe_load(path.read_text())
    model = raw["models"]["mlp_512x2"]
    assert model["learning_rate"] == 0.0005 and model["hidden_units"] == [64, 32]
    assert model["dropout"] is None and raw["train"]["max_epochs"] == 2
