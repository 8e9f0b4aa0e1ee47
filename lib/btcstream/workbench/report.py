"""`btcstream report`: execute the notebooks with papermill and export each as standalone HTML.

Each notebook runs in its own kernel with the parameters given (papermill injects them after the
tagged `parameters` cell); the executed `.ipynb` and an `.html` beside it go to `reports/`.
The HTML carries plotly.js inline (the notebooks render figures with `btcstream.workbench.notebook.setup`),
so the interactive charts open offline. A notebook that fails still leaves its executed
`.ipynb` and HTML (with the error in it) and raises `ReportError` naming it.
Not for: what the notebooks compute (they only call into `btcstream`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from btcstream.errors import ReportError
from btcstream.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
REPORT_DIR = PROJECT_ROOT / "reports"
KERNEL_NAME = "python3"  # the kernel of the interpreter running btcstream (see jupyter kernelspec list)
PIPELINE_NOTEBOOK = "01_start_pipeline.ipynb"
STREAMING_NOTEBOOK = "02_streaming_queries.ipynb"
HOURLY_NOTEBOOK = "03_hourly_spread_volatility.ipynb"
NOTEBOOKS: tuple[str, ...] = (PIPELINE_NOTEBOOK, STREAMING_NOTEBOOK, HOURLY_NOTEBOOK)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
_TEMPLATE_NAME = "btcstream_offline.html.j2"
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}
<script type="text/javascript">{{ resources.plotly_js }}</script>
{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
"""
CELL_TIMEOUT_S = 1800  # one cell may run the pipeline for duration_s; beyond this it is stuck


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where its outputs are and how long it took."""

    notebook: str
    executed: Path
    html: Path
    seconds: float
    parameters: Mapping[str, Any] = field(default_factory=dict)


def execute_notebook(name: str, parameters: Mapping[str, Any] | None = None, output_dir: Path = REPORT_DIR,
                     kernel_name: str = KERNEL_NAME, notebook_dir: Path = NOTEBOOK_DIR) -> NotebookRun:
    """Run `notebook_dir/name` with papermill into `output_dir`, then export it to HTML."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_dir / name
    if not source.exists():
        raise ReportError(f"notebook {source} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / name
    parameters = dict(parameters or {})
    log.info("executing %s with %s", name, parameters or "its default parameters")
    started = time.monotonic()
    failure: Exception | None = None
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(notebook_dir), execution_timeout=CELL_TIMEOUT_S,
                                   progress_bar=False, request_save_on_cell_execute=True)
    except PapermillExecutionError as error:
        failure = error
    seconds = time.monotonic() - started
    html = export_html(executed)
    if failure is not None:
        raise ReportError(f"{name} failed after {seconds:.0f} s (see {html}): {failure.ename}: {failure.evalue}")
    log.info("%s ran in %.1f s -> %s", name, seconds, html)
    return NotebookRun(name, executed, html, seconds, parameters)


def export_html(executed: Path) -> Path:
    """A standalone HTML next to the executed notebook: code and outputs as executed, charts interactive.

    Each figure (plotly's JSON output) is drawn by plotly.js inlined once in the page head, and
    nbconvert's CDN scripts (require.js, MathJax) are left out: the page needs no network, and
    without require.js plotly.js defines `window.Plotly` as the figures expect.
    """
    import jinja2
    import nbformat
    import plotly.io as pio
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    notebook = nbformat.read(str(executed), as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIME)
            if figure is not None:
                output["data"]["text/html"] = pio.to_html(figure, include_plotlyjs=False, include_mathjax=False,
                                                          full_html=False, validate=False)
    exporter = HTMLExporter(template_name="lab", template_file=_TEMPLATE_NAME,
                            extra_loaders=[jinja2.DictLoader({_TEMPLATE_NAME: _OFFLINE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(notebook, resources={"plotly_js": get_plotlyjs()})
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def build_report(parameters: Mapping[str, Mapping[str, Any]] | None = None, notebooks: Sequence[str] = NOTEBOOKS,
                 output_dir: Path = REPORT_DIR, kernel_name: str = KERNEL_NAME) -> list[NotebookRun]:
    """Execute `notebooks` in order (01 fills the stores that 02 and 03 read); stops at the first failure."""
    parameters = parameters or {}
    runs = [execute_notebook(name, parameters.get(name), output_dir, kernel_name) for name in notebooks]
    write_index(runs, output_dir)
    return runs


def write_index(runs: Sequence[NotebookRun], output_dir: Path = REPORT_DIR) -> Path:
    """`reports/index.html`: one link per notebook with its run time and parameters."""
    from html import escape

    items = "\n".join(
        f'<li><a href="{escape(run.html.name)}">{escape(run.notebook)}</a> — {run.seconds:.0f} s'
        f' <code>{escape(repr(dict(run.parameters)))}</code></li>' for run in runs)
    index = output_dir / "index.html"
    index.write_text("<!doctype html><meta charset='utf-8'><title>btcstream report</title>"
                     f"<h1>btcstream report</h1><p>Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>"
                     f"<ul>{items}</ul>\n", encoding="utf-8")
    return index
