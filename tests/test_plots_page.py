"""`dvc plots show` draws every Vega plot with the network off: the template the repo's DVC
config names carries Vega inline (evaluation/plots_page.py), checked in headless Chromium
on a real DVC project's page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mnist_mlops.evaluation.plots_page import page

from .conftest import ROOT, plots_template, run, tool_env
from .needs import need, requires

TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"


def test_the_repo_config_names_the_committed_template() -> None:
    assert ROOT / ".dvc" / plots_template() == TEMPLATE
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.count("{plot_divs}") == 1 and text.count("{refresh_tag}") == 1
    assert "cdn.jsdelivr" not in text and "{scripts}" not in text   # no CDN scripts


@pytest.mark.slow
def test_the_committed_template_is_what_the_pinned_bundle_writes() -> None:
    assert TEMPLATE.read_text(encoding="utf-8") == page(), \
        "out of date: run `make plots-template` and commit .dvc/plots/offline.html"


def plots_project(root: Path) -> Path:
    """A DVC project with this repo's plot templates and config, and the two kinds of
    Vega plot the pipeline draws: fold curves (`folds`) and a confusion matrix."""
    env = tool_env()
    root.mkdir(parents=True)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots", dirs_exist_ok=True)
    run(["dvc", "config", "plots.html_template", plots_template()], root, env)
    (root / "curves.csv").write_text("fit,epoch,accuracy\n" + "".join(
        f"fold {f} (validation),{e},{0.5 + 0.1 * e + 0.01 * f}\n"
        for f in range(2) for e in range(1, 4)))
    (root / "predictions.csv").write_text("actual,predicted\n" + "".join(
        f"{d},{d if i % 4 else (d + 1) % 10}\n" for i, d in enumerate(list(range(10)) * 3)))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": [
        {"curves.csv": {"template": "folds", "x": "epoch", "y": "accuracy"}},
        {"predictions.csv": {"template": "confusion", "x": "actual", "y": "predicted"}}]}))
    return root


def draw_offline(page_file: Path) -> list[bool]:
    """Open a `dvc plots show` page in headless Chromium with the network off; for each
    Vega plot on it, whether it drew. Fails on a script error or a request off this disk."""
    sync_api = pytest.importorskip("playwright.sync_api")
    n_vega = page_file.read_text(encoding="utf-8").count("vegaEmbed('#")
    asked: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=need("chromium"), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"])
        try:
            tab = browser.new_context(offline=True).new_page()
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.route("**/*", lambda r: (r.continue_() if r.request.url.startswith("file:")
                                         else (asked.append(r.request.url), r.abort())))
            tab.goto(page_file.as_uri())
            tab.wait_for_function(
                f"document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length "
                f">= {n_vega}", timeout=30_000)
            drawn = tab.eval_on_selector_all(
                ".vega-embed", "els => els.map(e => !!e.querySelector('canvas, svg'))")
        finally:
            browser.close()
    assert not errors and not asked, (errors, asked)   # nothing fetched from the network
    assert len(drawn) == n_vega
    return drawn


@pytest.mark.slow
@requires("chromium")
def test_plots_draw_with_the_network_off(tmp_path: Path) -> None:
    root = plots_project(tmp_path / "project")
    run(["dvc", "plots", "show", "-o", "out"], root, tool_env())
    assert draw_offline(root / "out" / "index.html") == [True, True]
