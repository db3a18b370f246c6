"""The MLflow UI address the stages print opens the experiment on its runs, in a browser
that has never seen the UI (a real `mlflow server`, headless Chromium)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_mlops.tracking import mlflow_io

from .conftest import MlflowServer
from .needs import need, requires

RUN_NAME = "mlp_512x2-parent"
GENAI = ("Detect Issues", "Overview")   # what the GenAI view opens with


@pytest.fixture
def experiment(mlflow_server: MlflowServer) -> tuple[str, str]:
    """An experiment made as the stages make it, with one run; (its UI address, its id)."""
    client = MlflowClient(mlflow_server.uri)
    exp_id = mlflow_io.ensure_experiment(client, "mnist-mlops", mlflow_server.uri)
    run = client.create_run(exp_id, run_name=RUN_NAME)
    client.log_metric(run.info.run_id, "cv_val_accuracy_mean", 0.98)
    client.set_terminated(run.info.run_id)
    return mlflow_io.ui_url(mlflow_server.uri, exp_id), exp_id


def test_the_address_names_the_runs_page() -> None:
    url = mlflow_io.ui_url("sqlite:////p/mlflow.db", "3")
    assert url == ("mlflow ui --backend-store-uri sqlite:////p/mlflow.db, then "
                   "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")
    assert mlflow_io.ui_url("http://h:5000/", "3") == \
        "http://h:5000/#/experiments/3/runs?workflowType=machine_learning"


@pytest.fixture
def fresh_browser() -> Iterator[object]:
    """A new page of a browser with an empty profile (no remembered UI settings)."""
    chromium = need("chromium")   # skips without Chromium; fails when CI is set
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


@pytest.mark.slow
@requires("chromium")   # before the server starts: skips, or fails when CI is set
def test_the_printed_address_opens_the_runs_in_a_fresh_browser(
        experiment: tuple[str, str], mlflow_server: MlflowServer, fresh_browser: object,
        tmp_path: Path) -> None:
    url, exp_id = experiment
    page = fresh_browser
    page.goto(url)
    page.get_by_text(RUN_NAME).first.wait_for(timeout=60000)   # the runs table
    page.wait_for_timeout(2000)                                # any pop-up has come by now
    page.screenshot(path=str(tmp_path / "runs.png"))
    text = page.inner_text("body")
    assert not [w for w in GENAI if w in text], text[:2000]

    # the address without it: the same browser state opens the GenAI overview instead
    page.context.clear_cookies()
    page.evaluate("() => localStorage.clear()")
    page.goto(f"{mlflow_server.uri}/#/experiments/{exp_id}")
    page.get_by_text("Overview").first.wait_for(timeout=60000)
    page.screenshot(path=str(tmp_path / "default.png"))
