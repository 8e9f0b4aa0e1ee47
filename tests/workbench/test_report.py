"""The exported HTML pages are small and offline: plotly.js and the stylesheet are files beside them.

Fast: no kernel runs; the pages are exported from notebooks built here with nbformat. The front
page (index.html) says when, with what and how long each notebook ran; its chart previews are
drawn for real in tests/test_browser.py (they need the system Chromium).
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from btcstream.workbench.report import (PLOTLY_JS_FILE, PLOTLY_MIME, STYLESHEET_FILE, NotebookRun, export_html,
                                        write_index, write_previews)

SMALL_PAGE_BYTES = 200_000


def executed_notebook(path: Path, figures: int = 1) -> Path:
    """An executed-looking notebook: a markdown cell, then code cells each showing a plotly figure."""
    cells = [nbformat.v4.new_markdown_cell("# Hourly spread\n\n$x^2$ stays as written: no script renders it.")]
    for index in range(figures):
        figure = go.Figure(go.Scatter(x=[1, 2, 3], y=[4.0, 5.5, 5.0 + index], name=f"BTCUSDT {index}"))
        output = nbformat.v4.new_output("display_data", data={PLOTLY_MIME: json.loads(pio.to_json(figure)),
                                                               "text/plain": ["<Figure>"]})
        cells.append(nbformat.v4.new_code_cell("plots.hourly_spread_volatility(hourly).show()",
                                               execution_count=index + 1, outputs=[output]))
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))
    return path


def script_sources(html: str) -> list[str]:
    return re.findall(r"<script[^>]*\ssrc=[\"']([^\"']+)[\"']", html)


def stylesheet_links(html: str) -> list[str]:
    return re.findall(r"<link[^>]*\shref=[\"']([^\"']+)[\"']", html)


def test_page_loads_plotly_js_from_the_file_beside_it_and_stays_small(tmp_path: Path) -> None:
    html_path = export_html(executed_notebook(tmp_path / "03_hourly.ipynb", figures=2))
    html = html_path.read_text(encoding="utf-8")

    assert html_path == tmp_path / "03_hourly.html"
    assert script_sources(html) == [PLOTLY_JS_FILE]  # relative, so it opens offline from any folder
    assert stylesheet_links(html) == [STYLESHEET_FILE]
    assert (tmp_path / PLOTLY_JS_FILE).read_text(encoding="utf-8") == get_plotlyjs()
    assert "plotly.js v" not in html and len(get_plotlyjs()) > 1_000_000  # the library is not inlined
    assert html_path.stat().st_size < SMALL_PAGE_BYTES, html_path.stat().st_size
    assert html.count("Plotly.newPlot(") == 2
    assert not re.search(r"(src|href)=[\"']https?://", html), "nothing may be loaded from the network"
    assert "mathjax" not in html.lower() and "require.js" not in html and "mermaid" not in html.lower()


def test_stylesheet_holds_the_lab_styles_the_page_uses(tmp_path: Path) -> None:
    html = export_html(executed_notebook(tmp_path / "01.ipynb")).read_text(encoding="utf-8")
    stylesheet = (tmp_path / STYLESHEET_FILE).read_text(encoding="utf-8")

    assert "<style" not in stylesheet and "</style>" not in stylesheet
    for rule in (".jp-OutputArea-output {", "--jp-content-font-color1:", "a.anchor-link {"):  # index.css,
        assert rule in stylesheet and rule not in html  # the light theme, the template's own rules


def test_shared_files_are_written_once_and_repaired_when_different(tmp_path: Path) -> None:
    export_html(executed_notebook(tmp_path / "01.ipynb"))
    plotly_js = tmp_path / PLOTLY_JS_FILE
    os.utime(plotly_js, (1_000_000_000, 1_000_000_000))

    export_html(executed_notebook(tmp_path / "02.ipynb"))
    assert plotly_js.stat().st_mtime == 1_000_000_000  # same content: left alone

    plotly_js.write_text("/* truncated */", encoding="utf-8")
    export_html(executed_notebook(tmp_path / "03.ipynb"))
    assert plotly_js.read_text(encoding="utf-8") == get_plotlyjs()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".js", ".css")) == [STYLESHEET_FILE,
                                                                                        PLOTLY_JS_FILE]


def test_page_of_a_notebook_that_showed_a_widget_loads_no_widget_manager(tmp_path: Path) -> None:
    """Notebook 02's live chart is a widget while it runs; its saved state must not pull scripts from a CDN."""
    executed = executed_notebook(tmp_path / "02.ipynb")
    notebook = nbformat.read(str(executed), as_version=4)
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {"abc": {"model_name": "AnyModel", "model_module": "anywidget", "model_module_version": "~0.9.*",
                          "state": {}}}, "version_major": 2, "version_minor": 0}}
    nbformat.write(notebook, str(executed))

    html = export_html(executed).read_text(encoding="utf-8")
    assert "unpkg" not in html and "html-manager" not in html and "embed-amd" not in html
    assert "widget-state+json" not in html  # the state (megabytes for a FigureWidget) is not carried over
    assert not re.search(r"(src|href)=[\"']https?://", html)
    assert html.count("Plotly.newPlot(") == 1


def notebook_run(tmp_path: Path, name: str, seconds: float, parameters: dict) -> NotebookRun:
    executed = tmp_path / name
    return NotebookRun(name, executed, executed.with_suffix(".html"), seconds, parameters,
                       datetime(2025, 2, 14, 9, 30, 5, tzinfo=timezone.utc))


def test_front_page_says_when_each_notebook_ran_with_what_and_how_long(tmp_path: Path) -> None:
    runs = [notebook_run(tmp_path, "01_start_pipeline.ipynb", 71.4, {"duration_s": 30, "source": "replay"}),
            notebook_run(tmp_path, "03_hourly_spread_volatility.ipynb", 4.2, {})]
    preview = tmp_path / "03_hourly_spread_volatility.preview.png"

    html = write_index(runs, tmp_path, {runs[0].notebook: "no chart", runs[1].notebook: preview}).read_text()

    assert html.count("2025-02-14 09:30:05 UTC") == 2
    assert "71 s" in html and "4 s" in html
    assert "<dt>duration_s</dt><dd><code>30</code></dd>" in html and "<code>&#x27;replay&#x27;</code>" in html
    assert "defaults" in html  # 03 ran with its default parameters
    assert '<a href="03_hourly_spread_volatility.html"><img src="03_hourly_spread_volatility.preview.png"' in html
    assert "no chart" in html
    assert not re.search(r"(src|href)=[\"']https?://", html)


def test_previews_give_way_to_a_note_when_no_browser_can_draw_them(tmp_path: Path, monkeypatch) -> None:
    import kaleido

    def no_chromium(*args, **kwargs):
        raise RuntimeError("Chrome not found")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", no_chromium)
    with_chart = executed_notebook(tmp_path / "03.ipynb")
    without = tmp_path / "01.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), str(without))
    runs = [NotebookRun("01.ipynb", without, without.with_suffix(".html"), 1.0),
            NotebookRun("03.ipynb", with_chart, with_chart.with_suffix(".html"), 1.0)]

    previews = write_previews(runs)

    assert previews["01.ipynb"] == "no chart"
    assert previews["03.ipynb"].startswith("no preview (RuntimeError: Chrome not found")
