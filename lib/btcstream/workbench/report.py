"""`btcstream report`: execute the notebooks with papermill and export each as offline HTML.

The notebooks are the package's own (`btcstream.resources.notebook_dir()`), so an installed
btcstream reports from any directory. Each runs in its own kernel, started in the output
directory, with the parameters given (papermill injects them after the tagged `parameters` cell);
the executed `.ipynb` and an `.html` beside it go to `reports/` under the current directory.
The HTML pages load plotly.js and the notebook stylesheet from two files written once beside them
(`plotly.min.js`, `notebook.css`), so each page stays small and the interactive charts open offline
(the notebooks render figures with `btcstream.workbench.notebook.setup`). A notebook that fails
still leaves its executed `.ipynb` and HTML (with the error in it) and raises `ReportError` naming it.
The front page (`index.html`) says per notebook when it ran, with which parameters, how long it took,
and shows a small image of its first chart (`write_previews`: kaleido in the system Chromium).
Not for: what the notebooks compute (they only call into `btcstream`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
FORECAST_NOTEBOOK = "04_volatility_forecast.ipynb"
NOTEBOOKS: tuple[str, ...] = (PIPELINE_NOTEBOOK, STREAMING_NOTEBOOK, HOURLY_NOTEBOOK, FORECAST_NOTEBOOK)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS_FILE = "plotly.min.js"  # shared by every page of a report directory
STYLESHEET_FILE = "notebook.css"  # JupyterLab's notebook styles, shared the same way
_TEMPLATE_NAME = "btcstream_offline.html.j2"
# nbconvert's lab page, minus what needs a network (require.js, MathJax, mermaid and, for a notebook
# that showed a widget such as 02's live chart, the widget manager from CDNs) and
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
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""
CELL_TIMEOUT_S = 1800  # one cell may run the pipeline for duration_s; beyond this it is stuck


PREVIEW_SIZE = (560, 380)  # pixels of the front page's image of a notebook's first chart
PREVIEW_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where its outputs are, when it started (UTC) and how long it took."""

    notebook: str
    executed: Path
    html: Path
    seconds: float
    parameters: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


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
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    failure: Exception | None = None
    try:
        # The progress bar ("01_start_pipeline.ipynb: 4/9 cells") shows on a terminal only (disable=None).
        papermill.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(output_dir), execution_timeout=CELL_TIMEOUT_S,
                                   progress_bar={"desc": name, "disable": None, "leave": True},
                                   request_save_on_cell_execute=True,
                                   # A live chart's widget (notebook 02) gives way to a static figure; its
                                   # state (megabytes of plotly's widget code) would only bloat the files.
                                   store_widget_state=False)
    except PapermillExecutionError as error:
        failure = error
    seconds = time.monotonic() - started
    html = export_html(executed)
    if failure is not None:
        raise ReportError(f"{name} failed after {seconds:.0f} s (see {html}): {failure.ename}: {failure.evalue}")
    log.info("%s ran in %.1f s -> %s", name, seconds, html)
    return NotebookRun(name, executed, html, seconds, parameters, started_at)


def export_html(executed: Path) -> Path:
    """An HTML page next to the executed notebook: code and outputs as executed, charts interactive.

    Each figure (plotly's JSON output) is drawn by plotly.js, which the page loads from
    `plotly.min.js` beside it, styled by `notebook.css` beside it (both written here when missing
    or different). nbconvert's CDN scripts (require.js, MathJax, mermaid, the widget manager) are left out: the page
    needs no network, and without require.js plotly.js defines `window.Plotly` as the figures expect.
    """
    import jinja2
    import nbformat
    import plotly.io as pio
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    notebook = nbformat.read(str(executed), as_version=4)
    notebook.metadata.pop("widgets", None)  # no widget manager on the page: saved widget state is dead weight
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
    """Execute `notebooks` in order (01 fills the stores that 02, 03 and 04 read); stops at the first failure."""
    parameters = parameters or {}
    output_dir = output_dir.resolve()
    runs = []
    for number, name in enumerate(notebooks, start=1):
        log.info("report: notebook %d of %d", number, len(notebooks))
        runs.append(execute_notebook(name, parameters.get(name), output_dir, kernel_name))
    write_index(runs, output_dir, write_previews(runs))
    return runs


def first_figure(executed: Path) -> dict | None:
    """The first plotly figure an executed notebook shows, as its JSON; None when it shows none."""
    import nbformat

    notebook = nbformat.read(str(executed), as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIME)
            if figure is not None:
                return figure
    return None


def preview_path(run: NotebookRun) -> Path:
    return run.executed.with_suffix(".preview.png")


def write_previews(runs: Sequence[NotebookRun]) -> dict[str, Path | str]:
    """Per notebook, a small PNG of its first chart, or why there is none.

    Plotly's static export (kaleido) draws in a headless Chromium, the system's one (Debian's
    `chromium` package), started once for all the images; plotly.js comes from the plotly package
    and MathJax is left out, so nothing is fetched from the network. Without kaleido or a
    Chromium the front page says so instead of showing an image.
    """
    figures = {run.notebook: first_figure(run.executed) for run in runs}
    previews: dict[str, Path | str] = {name: "no chart" for name, figure in figures.items() if figure is None}
    wanted = [run for run in runs if figures[run.notebook] is not None]
    if not wanted:
        return previews
    try:
        import kaleido

        width, height = PREVIEW_SIZE
        kaleido.write_fig_from_object_sync(
            [{"fig": _preview_figure(figures[run.notebook]), "path": preview_path(run),
              "opts": {"format": "png", "width": width, "height": height, "scale": 1}} for run in wanted],
            kopts={"mathjax": False, "timeout": PREVIEW_TIMEOUT_S})
    except Exception as error:  # noqa: BLE001 - a missing browser must not fail the report itself
        reason = f"no preview ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
        log.warning("report: %s; the charts are in the pages", reason)
        return {**previews, **{run.notebook: reason for run in wanted}}
    for run in wanted:
        previews[run.notebook] = preview_path(run) if preview_path(run).exists() else "no preview (not written)"
    return previews


def _preview_figure(figure: dict) -> dict:
    """The figure at thumbnail size: no legend or title, tight margins (its page shows the full chart)."""
    layout = {**figure.get("layout", {}), "showlegend": False, "margin": {"l": 40, "r": 10, "t": 30, "b": 30},
              "height": PREVIEW_SIZE[1], "width": PREVIEW_SIZE[0]}
    layout.pop("title", None)
    return {**figure, "layout": layout}


_INDEX_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.6rem 1rem;vertical-align:top;text-align:left}
th{background:#f6f6f6}.when{white-space:nowrap}code{font-size:.85rem}img{border:1px solid #ddd;width:280px}.note{color:#777;font-style:italic}
dl{margin:0;display:grid;grid-template-columns:auto auto;gap:.1rem .6rem}dt{font-family:monospace;color:#555}dd{margin:0}"""


def write_index(runs: Sequence[NotebookRun], output_dir: Path = REPORT_DIR,
                previews: Mapping[str, Path | str] | None = None) -> Path:
    """`reports/index.html`: per notebook when it ran, with which parameters, how long, and its first chart."""
    from html import escape

    previews = previews or {}
    rows = []
    for run in runs:
        parameters = "".join(f"<dt>{escape(str(name))}</dt><dd><code>{escape(repr(value))}</code></dd>"
                             for name, value in run.parameters.items())
        preview = previews.get(run.notebook, "no preview")
        shown = (f'<a href="{escape(run.html.name)}"><img src="{escape(preview.name)}" '
                 f'alt="first chart of {escape(run.notebook)}"></a>' if isinstance(preview, Path)
                 else f'<span class="note">{escape(preview)}</span>')
        rows.append(f'<tr><td><a href="{escape(run.html.name)}">{escape(run.notebook)}</a></td>'
                    f'<td class="when">{run.started_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC</td>'
                    f'<td>{run.seconds:.0f} s</td>'
                    f'<td>{f"<dl>{parameters}</dl>" if parameters else "<span class=note>defaults</span>"}</td>'
                    f'<td>{shown}</td></tr>')
    index = output_dir / "index.html"
    index.write_text("<!doctype html><html lang='en'><meta charset='utf-8'><title>btcstream report</title>"
                     f"<style>{_INDEX_STYLE}</style><h1>btcstream report</h1>"
                     f"<p>Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
                     "Every page opens offline (plotly.js is in the folder).</p>"
                     "<table><tr><th>notebook</th><th>ran at</th><th>took</th><th>parameters</th>"
                     f"<th>first chart</th></tr>{''.join(rows)}</table></html>\n", encoding="utf-8")
    return index
