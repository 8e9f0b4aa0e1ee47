"""The workbench as its users open it: JupyterLab and the HTML report in a real browser.

Playwright drives the system Chromium (Debian's `chromium` package; Playwright's own browser
download is never used). On the real local stack, notebook 01 runs the pipeline into a fresh topic
and HDFS root and the report is written (papermill, as `btcstream report` does); then

- `btcstream lab` serves a copy of the notebooks with the settings pointing at that root, the
  browser opens 03_hourly_spread_volatility.ipynb, runs all cells as a user does (Run > Run All
  Cells) and the charts must render with the stored values and no error or stderr output;
- every report page and the front page open from file:// with each request leaving 127.0.0.1
  recorded and blocked: every chart must render all the same;
- notebook 02's live chart (a FigureWidget updated in place) keeps a zoom made between refreshes.

Screenshots go to tests/artifacts/ (ignored by git), also when a step fails.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import numpy as np
import pytest

from btcstream.settings import Settings
from btcstream.workbench import plots
from btcstream.workbench.report import HOURLY_NOTEBOOK, NOTEBOOK_DIR, NOTEBOOKS, PLOTLY_MIME, NotebookRun

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
LAB_START_TIMEOUT_S = 120.0
KERNEL_READY_TIMEOUT_S = 120.0
RUN_ALL_TIMEOUT_S = 240.0
PAGE_TIMEOUT_MS = 60_000
HOURLY_FIGURES = 5  # notebook 03: spread/volatility, price band, liquidity/volume, trades, spread vs volatility


def chromium_executable() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no system Chromium: install Debian's package (`apt-get install -y chromium`); .ci/run does it "
                "when it is missing. Playwright's own browser download is not used.")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox cannot run as root (CI containers).
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=chromium_executable(), args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def workbench_run(pipeline_report: tuple[Settings, list]) -> tuple[Settings, list[NotebookRun]]:
    """The pipeline run by notebook 01 into a fresh topic and HDFS root, and the report of all four
    notebooks (the session's `pipeline_report`, shared with tests/workbench/test_notebooks.py)."""
    return pipeline_report


def figure_count(executed: Path) -> int:
    notebook = nbformat.read(str(executed), as_version=4)
    return sum(PLOTLY_MIME in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


def screenshot(page, name: str, **options) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), **options)
    return path


# --- btcstream lab -----------------------------------------------------------------------------

class LabProcess:
    """`btcstream lab` as a user starts it, its output read line by line in a thread."""

    def __init__(self, notebook_dir: Path, settings: Settings) -> None:
        environment = {**os.environ, "BTCSTREAM_STORAGE_ROOT": settings.storage_root,
                       "BTCSTREAM_TOPIC": settings.topic, "BTCSTREAM_TRADES_TOPIC": settings.trades_topic, "BTCSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                       # JupyterLab remembers open tabs per workspace: a fresh one, not the user's.
                       "JUPYTERLAB_WORKSPACES_DIR": str(notebook_dir.parent / "workspaces")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "btcstream", "lab", "--no-browser", "--port", "0",
             "--notebook-dir", str(notebook_dir)],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("JupyterLab: "):
                return line.split()[1]
        pytest.fail(f"`btcstream lab` printed no URL within {timeout_s:.0f} s; its output:\n{''.join(self.lines)}")

    def stop(self) -> int:
        """SIGTERM as Ctrl-C's twin; the command stops JupyterLab and its kernels, then exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                pytest.fail("`btcstream lab` did not stop within 60 s of SIGTERM")
        return self.process.returncode


def wait_for_kernel(base: str, token: str, timeout_s: float) -> None:
    """Until the notebook's kernel is started, connected to the page and idle (the REST API says so)."""
    deadline = time.monotonic() + timeout_s
    kernels: list = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as response:
            kernels = json.load(response)
        if kernels and all(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels):
            return
        time.sleep(0.5)
    pytest.fail(f"the notebook's kernel was not ready within {timeout_s:.0f} s: {kernels}")


def open_and_run_all(page, base: str, token: str, notebook: str) -> None:
    """Open `notebook` in JupyterLab, wait for its kernel, dismiss the news prompt, then Run > Run All Cells."""
    page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=PAGE_TIMEOUT_MS)
    wait_for_kernel(base, token, KERNEL_READY_TIMEOUT_S)
    news = page.locator(".jp-Notification-Toast-Close, .Toastify__close-button")
    if news.count():
        news.first.click()  # JupyterLab asks once whether to fetch its news; not part of the view
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator("li[data-command='runmenu:run-all']").click()


def base_and_token(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    assert parsed.hostname == "127.0.0.1" and parsed.path == "/lab" and re.fullmatch(r"token=[0-9a-f]{32,}",
                                                                                     parsed.query), url
    return f"{parsed.scheme}://{parsed.netloc}", parsed.query.split("=", 1)[1]


LIVE_CHART_SETUP = """
import pandas as pd
import plotly.graph_objects as go
from btcstream.workbench import notebook, plots

def windows(count):
    start = pd.Timestamp("2025-02-14", tz="UTC")
    return pd.DataFrame([{"symbol": "BTCUSDT", "window_start": start + pd.Timedelta(minutes=15 * i),
                          "avg_spread_bps": 0.1 + (i % 3) / 100, "realized_volatility": i / 1000}
                         for i in range(count)])

live = go.FigureWidget(plots.window_spread_volatility(windows(12)))
live.update_layout(uirevision=notebook.LIVE_UI_REVISION)
live
"""
LIVE_CHART_REFRESH = """
import time
from pathlib import Path

while not Path("zoomed").exists():  # the test zooms in, then creates this file
    time.sleep(0.2)
notebook.refresh_live_figure(live, plots.window_spread_volatility(windows(16)))
"""


def test_live_chart_keeps_the_users_zoom_across_refreshes(local_stack: Settings, browser, tmp_path: Path) -> None:
    """Notebook 02's live chart as JupyterLab draws it: a FigureWidget updated in place by
    `notebook.refresh_live_figure`, so a zoom made between two refreshes is still there after."""
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source.strip()) for source in (LIVE_CHART_SETUP, LIVE_CHART_REFRESH)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}),
        str(notebook_dir / "live_chart.ipynb"))
    lab = LabProcess(notebook_dir, local_stack)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    plot = "document.querySelector('.jp-Notebook .js-plotly-plot')"
    try:
        base, token = base_and_token(lab.url(LAB_START_TIMEOUT_S))
        open_and_run_all(page, base, token, "live_chart.ipynb")
        page.wait_for_selector(".jp-Notebook .js-plotly-plot .main-svg", timeout=PAGE_TIMEOUT_MS)
        page.evaluate(f"() => {{ {plot}.dataset.testMark = 'first drawing'; }}")
        unzoomed = page.evaluate(f"() => {plot}._fullLayout.xaxis.range")

        area = page.locator(".jp-Notebook .js-plotly-plot .nsewdrag").first.bounding_box()
        page.mouse.move(area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(area["x"] + area["width"] * 0.6, area["y"] + area["height"] * 0.52, steps=15)
        page.mouse.up()  # a horizontal drag: zoom into the middle of the time axis
        page.wait_for_function(f"(before) => {plot}._fullLayout.xaxis.range[0] !== before[0]", arg=unzoomed,
                               timeout=PAGE_TIMEOUT_MS)
        zoomed = page.evaluate(f"() => {plot}._fullLayout.xaxis.range")
        (notebook_dir / "zoomed").write_text("")

        try:
            page.wait_for_function(f"() => {plot}._fullData[0].x.length === 16", timeout=PAGE_TIMEOUT_MS)
        except Exception:
            screenshot(page, "live_chart_FAILED.png", full_page=True)
            raise AssertionError("the live chart did not take the refreshed data") from None
        mark, after = page.evaluate(f"() => [{plot}.dataset.testMark, {plot}._fullLayout.xaxis.range]")
        assert mark == "first drawing", "the chart was replaced instead of updated in place"
        assert after == zoomed != unzoomed, "the refresh lost the user's zoom"
        screenshot(page, "live_chart_after_refresh.png")
    finally:
        page.close()
        code = lab.stop()
    assert code == 0, "".join(lab.lines)


def test_jupyterlab_runs_notebook_03_and_draws_the_stored_metrics(workbench_run, browser, tmp_path: Path) -> None:
    from btcstream.storage.readers import read_hourly_metrics

    settings, _ = workbench_run
    stored = read_hourly_metrics(settings, engine="pyarrow").sort_values("window_start")
    assert len(stored) >= 2, "notebook 01 should have closed and stored a few hours"
    notebook_dir = tmp_path / "notebooks"  # a copy: running cells in the browser saves outputs into it
    shutil.copytree(NOTEBOOK_DIR, notebook_dir)

    lab = LabProcess(notebook_dir, settings)
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    try:
        base, token = base_and_token(lab.url(LAB_START_TIMEOUT_S))
        open_and_run_all(page, base, token, HOURLY_NOTEBOOK)
        code_cells = page.locator(".jp-Notebook .jp-CodeCell")
        try:
            page.wait_for_function(
                """(n) => {
                    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
                    return prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))
                        && document.querySelectorAll('.jp-Notebook .js-plotly-plot .main-svg').length >= 4;
                }""", arg=code_cells.count(), timeout=RUN_ALL_TIMEOUT_S * 1000)
        except Exception:
            screenshot(page, "jupyterlab_notebook03_FAILED.png", full_page=True)
            raise AssertionError("notebook 03 did not finish in JupyterLab within "
                                 f"{RUN_ALL_TIMEOUT_S:.0f} s; see tests/artifacts/jupyterlab_notebook03_FAILED.png:\n"
                                 + page.locator(".jp-Notebook").inner_text()[-3000:]) from None

        problems = page.locator(".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert problems.count() == 0, "error or stderr output in the notebook:\n" + "\n".join(problems.all_inner_texts())
        figures = page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea .js-plotly-plot')]
            .map(plot => ({layoutTitle: (plot.layout.title || {}).text || '',
                           // _fullData: the traces as plotly.js drew them (typed arrays decoded from base64)
                           traces: plot._fullData.map(t => ({name: t.name, yaxis: t.yaxis || 'y', y: Array.from(t.y || [])})),
                           drawn: plot.querySelectorAll('.scatterlayer .trace').length}))""")
        titles = [figure["layoutTitle"] for figure in figures]
        assert len(set(titles)) == HOURLY_FIGURES, titles
        spread = next(f for f in figures if f["layoutTitle"] == "Hourly spread and realized volatility")
        symbols = sorted(stored["symbol"].unique())
        live = sorted(stored.loc[~stored["is_final"], "symbol"].unique())  # the hour in progress, drawn apart
        assert sorted((t["yaxis"], t["name"]) for t in spread["traces"]) == sorted(
            [(axis, symbol) for axis in ("y", "y2", "y3") for symbol in symbols]
            + [(axis, f"{symbol} {plots.PROVISIONAL}") for axis in ("y", "y2", "y3") for symbol in live])
        for axis, column in (("y", "avg_spread"), ("y2", "avg_spread_bps"), ("y3", "realized_volatility")):
            trace = next(t for t in spread["traces"] if t["yaxis"] == axis and t["name"] == "BTCUSDT")
            np.testing.assert_allclose(trace["y"], stored.loc[stored["symbol"] == "BTCUSDT", column], rtol=1e-9)
        assert all(figure["drawn"] >= 1 for figure in figures), figures  # plotly.js drew every figure's traces

        page.locator(".jp-Notebook .js-plotly-plot").first.scroll_into_view_if_needed()
        page.mouse.wheel(0, -120)
        screenshot(page, "jupyterlab_notebook03.png")
    finally:
        page.close()
        code = lab.stop()
    output = "".join(lab.lines)
    assert code == 0, output
    assert output.count("token=") == 1, f"the URL with its token is printed once:\n{output}"
    for service in ("kafka", "hdfs-namenode", "hdfs-datanode"):
        assert re.search(rf"^{service}: +up", output, re.M), output


# --- the HTML report ---------------------------------------------------------------------------

def test_report_pages_render_every_chart_offline(workbench_run, browser) -> None:
    _, runs = workbench_run
    report_dir = runs[0].html.parent
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    left_the_machine: list[str] = []
    page_errors: list[str] = []

    def only_local(route) -> None:
        url = urlparse(route.request.url)
        if url.scheme in ("file", "data", "blob") or url.hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            left_the_machine.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        for run in runs:
            expected = figure_count(run.executed)
            page.goto(run.html.as_uri(), timeout=PAGE_TIMEOUT_MS)
            try:
                page.wait_for_function("(n) => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n",
                                       arg=expected, timeout=PAGE_TIMEOUT_MS)
            except Exception:
                screenshot(page, f"report_{run.html.stem}_FAILED.png", full_page=True)
                raise AssertionError(f"{run.html.name}: fewer than {expected} charts rendered offline") from None
            # Drawn traces per chart: lines/markers, bars, or a table (notebook 04's model scores).
            drawn = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
                .map(plot => plot.querySelectorAll('.scatterlayer .trace, .barlayer .trace, .table-control-view').length)""")
            assert len(drawn) == expected and all(count >= 1 for count in drawn), (run.html.name, drawn)
            assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']").count() == 0, \
                f"{run.html.name} shows stderr output"
            if run.notebook == HOURLY_NOTEBOOK:
                page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
                screenshot(page, "report_notebook03.png")
        page.goto((report_dir / "index.html").as_uri(), timeout=PAGE_TIMEOUT_MS)
        for notebook in NOTEBOOKS:
            assert page.get_by_text(notebook).count() >= 1, f"index.html does not list {notebook}"
        assert page.locator("td", has_text=re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")).count() == len(runs)
        assert page.get_by_text("duration_s").count() >= 1  # the parameters each notebook ran with
        with_charts = sum(figure_count(run.executed) > 0 for run in runs)
        previews = page.evaluate("() => [...document.images].map(image => image.naturalWidth)")
        assert len(previews) == with_charts and all(width > 0 for width in previews), previews  # kaleido's PNGs
        screenshot(page, "report_index.png", full_page=True)
    finally:
        context.close()
    assert left_the_machine == [], f"requests that left 127.0.0.1: {left_the_machine}"
    assert page_errors == [], page_errors
