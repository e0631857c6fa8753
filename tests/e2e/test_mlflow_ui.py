"""The MLflow UI shows a find job as users see it: `ticketx find` (a subprocess, as a user runs it) logs to a
real `mlflow server` on 127.0.0.1, and headless Chromium opens the link the command printed. The parent run
is listed; expanding it shows every level/arm run; a metric column added through the Columns menu shows
each run's value as the server stores it. The screenshot is kept in $TICKETX_E2E_ARTIFACTS (default
build/e2e/), and so are the page and the screenshot of a failed check.


Run with `make e2e` (installs Debian's chromium and the `e2e` extra when missing). Chromium is
/usr/bin/chromium unless $TICKETX_CHROMIUM names another binary.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from servers import Server
from ticketx.tracking import Tracker

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TICKETX_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TICKETX_E2E_ARTIFACTS", REPO / "build" / "e2e"))
# Flags for a sandboxed, offline machine: no background connections (refused here, many at a time).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
METRIC = "es_test_accuracy"
RECIPE = """
name = "uitoy"
[task]
plugin = "toy"
name = "gauss"
[train]
steps = 60
batch_size = 32
lr = 0.01
eval_every = 30
[prune]
levels = 2
rate = 0.5
"""


def browser_api():
    """Playwright's sync API, once Chromium is known to be there. Under `make e2e` (TICKETX_E2E=1) a missing
    piece fails the test; a bare `pytest` that collects this file skips it, naming the target."""
    missing = "" if Path(CHROMIUM).exists() else (
        f"no Chromium at {CHROMIUM}: `make e2e` installs Debian's chromium package "
        "(or set TICKETX_CHROMIUM to a Chromium binary)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, missing = None, missing or "playwright is not installed: `make e2e` installs it " \
                                                    "(pip install -e '.[e2e]')"
    if missing:
        (pytest.fail if os.environ.get("TICKETX_E2E") == "1" else pytest.skip)(missing)
    return sync_playwright


@pytest.fixture()
def server(tmp_path):
    srv = Server(tmp_path / "server")
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.stop()


def test_the_runs_page_shows_the_parent_its_level_runs_and_a_metric_column(server, tmp_path, toy_env):
    sync_playwright = browser_api()
    (tmp_path / "ui.toml").write_text(RECIPE)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    done = subprocess.run([sys.executable, "-m", "ticketx.cli", "find", "ui.toml", "--workers", "1",
                           "--out", "runs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs(?:\?\S*)?)\s", done.stdout)
    assert printed, f"find printed no runs-page link:\n{done.stdout[-2000:]}"
    assert "View run" not in done.stdout  # MLflow's per-run links are silenced; ticketx prints the one above
    link, experiment_id = printed.group(1), printed.group(2)

    client = Tracker(server.uri).client  # the truth the page must show, from the server
    runs = client.search_runs([experiment_id], max_results=100)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r.data.metrics[METRIC] for r in runs if r is not parent}
    assert parent.info.run_name == "find uitoy" and len(children) == 1 + 2 * 3  # dense, then 3 arms x 2 levels

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 900})
        page.set_default_timeout(60_000)
        try:
            page.goto(link)
            page.get_by_text(parent.info.run_name, exact=True).first.wait_for()  # the parent, children folded
            close_assistant(page)
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()  # unfold it
            for name in children:
                page.get_by_text(name, exact=True).first.wait_for()
            add_column(page, METRIC)
            page.locator(".ag-header-cell", has_text=METRIC).first.wait_for()
            shown = column_by_run(page, METRIC)
            page.screenshot(path=ARTIFACTS / "mlflow-runs.png")
        except Exception:
            page.screenshot(path=ARTIFACTS / "mlflow-runs-failed.png")
            (ARTIFACTS / "mlflow-runs-failed.html").write_text(page.content())
            raise
        finally:
            browser.close()

    assert shown.keys() >= children.keys() | {parent.info.run_name}, sorted(shown)
    for name, value in children.items():
        assert float(shown[name]) == pytest.approx(value, abs=1e-3), (name, shown[name], value)
    assert shown[parent.info.run_name] == "-"  # the parent logs no per-arm metric of this name
    assert (ARTIFACTS / "mlflow-runs.png").stat().st_size > 10_000


def close_assistant(page) -> None:
    """Close the MLflow Assistant side panel where this MLflow version opens one (it hides columns)."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.click()


def add_column(page, metric: str) -> None:
    """Tick `metric` in the Columns menu, as a user does (the table shows no metric column by default)."""
    page.get_by_role("button", name="Columns", exact=True).click()
    page.get_by_placeholder("Search columns").fill(metric)
    exact = page.locator('[class*="tree-title"]', has_text=re.compile(rf"^{re.escape(metric)}$"))
    page.locator('[class*="tree-treenode"]').filter(has=exact).locator('[class*="tree-checkbox"]').first.click()
    page.keyboard.press("Escape")


def column_by_run(page, metric: str) -> dict[str, str]:
    """Run name -> the text of its `metric` cell, row by row (ag-grid keeps pinned and scrolled cells apart)."""
    names, values = {}, {}
    for row in page.locator(".ag-row").all():
        index = row.get_attribute("row-index")
        for found, cell in ((names, '.ag-cell[col-id="attributes.`Run Name`"] a'),  # the link, not the colour
                            (values, f'.ag-cell[col-id="metrics.`{metric}`"]')):
            cell = row.locator(cell)
            if cell.count():
                found[index] = cell.inner_text().strip()
    return {names[i]: values[i] for i in names if i in values}
