"""`btcstream report`: execute the notebooks with papermill and export each as offline HTML.

The notebooks are the package's own (`btcstream.resources.notebook_dir()`), so an installed
btcstream reports from any directory. Each runs in its own kernel, started in the output
directory, with the parameters given (papermill injects them after the tagged `parameters` cell);
the executed `.ipynb` and an `.html` beside it go to `reports/` under the current directory.
The HTML pages load plotly.js and the notebook stylesheet from two files written once beside them
(`plotly.min.js`, `notebook.css`), so each page stays small and the interactive charts open offline
(the notebooks render figures with `btcstream.workbench.notebook.setup`). A notebook that fails
still leaves its executed `.ipynb` and HTML (with the error in it) and raises `ReportError` naming it.
Not for: what the notebooks compute (they only call into `btcstream`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from btcstream.errors import ReportError
from btcstream import resources

if TYPE_CHECKING:
    from nbconvert import HTMLExporter

log = logging.getLogger(__name__)

NOTEBOOK_DIR = resources.notebook_dir()
REPORT_DIR = Path("reports")  # relative: under the directory the command runs in
KERNEL_NAME = "python3"  # the kernel of the interpreter running btcstream (see jupyter kernelspec list)
PIPELINE_NOTEBOOK = "01_start_pipeline.ipynb"
STREAMING_NOTEBOOK = "02_streaming_queries.ipynb"
HOURLY_NOTEBOOK = "03_hourly_spread_volatility.ipynb"
NOTEBOOKS: tuple[str, ...] = (PIPELINE_NOTEBOOK, STREAMING_NOTEBOOK, HOURLY_NOTEBOOK)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS_FILE = "plotly.min.js"  # shared by every page of a report directory
STYLESHEET_FILE = "notebook.css"  # JupyterLab's notebook styles, shared the same way
_TEMPLATE_NAME = "btcstream_offline.html.j2"
# nbconvert's lab page, minus what needs a network (require.js, MathJax, mermaid from CDNs) and
# minus what every page would repeat: plotly.js (4-5 MB) and the lab CSS (about 250 kB).
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}
<script type="text/javascript" src="{{ resources.plotly_js_file }}"></script>
{%- endblock html_head_js_requirejs -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="{{ resources.stylesheet_file }}">
{%- endblock notebook_css -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
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
    output_dir = output_dir.resolve()  # absolute: papermill saves while the kernel runs in `cwd`
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / name
    parameters = dict(parameters or {})
    log.info("executing %s with %s", name, parameters or "its default parameters")
    started = time.monotonic()
    failure: Exception | None = None
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(output_dir), execution_timeout=CELL_TIMEOUT_S,
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
    """An HTML page next to the executed notebook: code and outputs as executed, charts interactive.

    Each figure (plotly's JSON output) is drawn by plotly.js, which the page loads from
    `plotly.min.js` beside it, styled by `notebook.css` beside it (both written here when missing
    or different). nbconvert's CDN scripts (require.js, MathJax, mermaid) are left out: the page
    needs no network, and without require.js plotly.js defines `window.Plotly` as the figures expect.
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
    body, _ = exporter.from_notebook_node(notebook, resources={"plotly_js_file": PLOTLY_JS_FILE,
                                                               "stylesheet_file": STYLESHEET_FILE})
    _write_if_changed(executed.parent / PLOTLY_JS_FILE, get_plotlyjs())
    _write_if_changed(executed.parent / STYLESHEET_FILE, _notebook_stylesheet(exporter))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def _notebook_stylesheet(exporter: HTMLExporter) -> str:
    """The CSS the lab template would inline in each page: its `notebook_css` block, without tags."""
    environment = exporter.environment
    template = environment.get_template("index.html.j2")
    page_resources = {"theme": exporter.theme,
                      "include_css": lambda name: environment.loader.get_source(environment, name)[0]}
    block = "".join(template.blocks["notebook_css"](template.new_context({"resources": page_resources})))
    return re.sub(r"</?style[^>]*>", "", block).strip() + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` unless it already holds exactly that (then its mtime is kept too).

    Written beside, then renamed, so a page opened meanwhile never reads half a file.
    """
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def build_report(parameters: Mapping[str, Mapping[str, Any]] | None = None, notebooks: Sequence[str] = NOTEBOOKS,
                 output_dir: Path = REPORT_DIR, kernel_name: str = KERNEL_NAME) -> list[NotebookRun]:
    """Execute `notebooks` in order (01 fills the stores that 02 and 03 read); stops at the first failure."""
    parameters = parameters or {}
    output_dir = output_dir.resolve()
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
