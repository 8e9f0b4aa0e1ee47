"""What keeps the notebooks thin: one setup call, and notebook parameters turned into typed values.

A notebook's `parameters` cell holds plain literals (strings, numbers, booleans) so papermill can
inject and document them; these helpers turn them into Settings, time ranges and symbol lists.
Not for: reading data (`btcstream.storage.readers`), charts (`btcstream.workbench.plots`) or running the
pipeline (`btcstream.workbench.pipeline`).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from btcstream.errors import PipelineError, SettingsError
from btcstream.settings import Settings, load_settings
from btcstream.storage.readers import TimeRange

if TYPE_CHECKING:  # a notebook that only reads tables never loads pyspark
    import plotly.graph_objects as go
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from btcstream.workbench.pipeline import Pipeline

# Plotly's JSON: JupyterLab draws it, the tests read the data behind each figure from it, and
# `btcstream.workbench.report` turns it into offline HTML (pages share one plotly.min.js beside them).
PLOTLY_RENDERERS = "plotly_mimetype"
NOTEBOOK_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CATCH_UP_TIMEOUT_S = 180.0  # longest wait for a live view to take in what the topic holds
LIVE_UI_REVISION = "btcstream-live"  # constant: plotly.js keeps zoom and hover across data updates


def setup(log_level: str = "INFO") -> None:
    """Configure logging (to the cell's output) and plotly's renderers; call once at the top."""
    import plotly.io as pio

    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)  # stdout: the report shows it as plain output, not as an error
    handler.setFormatter(logging.Formatter(NOTEBOOK_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    for noisy in ("py4j", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its event-loop timing warnings are noise here
    pio.renderers.default = PLOTLY_RENDERERS


def settings_for(storage_root: str = "", **overrides: object) -> Settings:
    """The project's settings (config file + BTCSTREAM_* environment) with non-empty overrides applied."""
    changes = {name: value for name, value in overrides.items() if value not in ("", None)}
    if storage_root:
        changes["storage_root"] = storage_root
    if "symbols" in changes and isinstance(changes["symbols"], str):
        changes["symbols"] = tuple(symbols_list(str(changes["symbols"])) or ())
    return load_settings().replace(**changes) if changes else load_settings()


def symbols_list(text: str) -> list[str] | None:
    """`"btcusdt, ETHUSDT"` -> `["BTCUSDT", "ETHUSDT"]`; an empty string means every symbol (None)."""
    symbols = [part.strip().upper() for part in text.split(",") if part.strip()]
    return symbols or None


def utc_time(text: str) -> datetime | None:
    """An ISO time as aware UTC (no offset means UTC); an empty string means unbounded (None)."""
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SettingsError("time", text, "expected an ISO time such as 2025-02-14T10:00 (UTC)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def time_range(start: str = "", end: str = "") -> TimeRange:
    """The [start, end) range of two ISO strings, either possibly empty."""
    return TimeRange(utc_time(start), utc_time(end))


def spark_session(settings: Settings, app_name: str = "btcstream-notebook") -> SparkSession:
    """The kernel's SparkSession, its JVM's console output in `<state_dir>/logs/<app_name>.log`.

    Without this the JVM's start-up notes (incubator modules, loopback hostname, native-hadoop,
    log4j profile) and its warnings come out as a red stderr block under the cell and in the report;
    in the log file they are still there for whoever needs them.
    """
    from btcstream.clients.spark import jvm_log_file, spark_session as build_session

    return build_session(settings, app_name, jvm_log=jvm_log_file(settings, app_name))


def watch(pipeline: Pipeline, duration_s: float, every_s: float = 10.0) -> None:
    """Show the pipeline's query progress as a table refreshed in place for `duration_s` seconds."""
    from IPython.display import display

    handle = display(pipeline.progress(), display_id=True)
    try:
        pipeline.run_for(duration_s, every_s, on_progress=handle.update)
    except BaseException:  # a failed part or an interrupt: leave nothing running behind
        pipeline.stop(drain=False)
        raise


def watch_view(query: StreamingQuery, read: Callable[[], pd.DataFrame], draw: Callable[[pd.DataFrame], go.Figure],
               duration_s: float, every_s: float = 5.0, catch_up: bool = True) -> pd.DataFrame:
    """Keep the chart `draw(read())` up to date every `every_s` while `query` runs, then stop it; returns the last frame.

    While it runs the chart is a plotly `FigureWidget` whose traces are updated in place
    (`refresh_live_figure`), so a zoom, a pan or a hover survives each refresh. At the end the
    widget gives way to a static figure of the last frame, drawn in the view the user left it in:
    that is what the saved notebook keeps, so papermill's output and the HTML report show it.
    With `catch_up`, waits (up to CATCH_UP_TIMEOUT_S) until the query has taken in all the data
    its source holds before the last drawing, so the final chart covers the whole topic.
    """
    import plotly.graph_objects as go
    from IPython.display import display

    live = go.FigureWidget(draw(read()))
    live.update_layout(uirevision=LIVE_UI_REVISION)
    handle = display(live, display_id=True)
    deadline = time.monotonic() + duration_s
    try:
        while time.monotonic() < deadline:
            time.sleep(min(every_s, max(deadline - time.monotonic(), 0.0)))
            _raise_if_failed(query)
            refresh_live_figure(live, draw(read()))
        if catch_up:
            wait_until_idle(query, CATCH_UP_TIMEOUT_S)
        frame = read()
        refresh_live_figure(live, draw(frame))
        handle.update(_bundle(go.Figure(live)), raw=True)
        return frame
    finally:
        query.stop()


def refresh_live_figure(live: go.FigureWidget, figure: go.Figure) -> None:
    """Give the widget `live` the data of `figure` in place, in one message to the browser.

    Traces present in both (same name and axes) keep their identity and get the new values;
    a new symbol adds its traces. The layout's ranges, and so the user's zoom, are not touched;
    `uirevision` tells plotly.js to keep the view while the data changes.
    """
    def key(trace: Any) -> tuple:
        return trace.name, getattr(trace, "xaxis", None), getattr(trace, "yaxis", None)

    with live.batch_update():
        if [key(trace) for trace in live.data] == [key(trace) for trace in figure.data]:
            for mine, new in zip(live.data, figure.data):
                mine.update(new.to_plotly_json(), overwrite=True)
        else:
            live.data = ()
            live.add_traces(list(figure.data))
        live.layout.annotations = figure.layout.annotations  # subplot titles name the window length
        live.layout.title = figure.layout.title


def wait_until_idle(query: StreamingQuery, timeout_s: float) -> bool:
    """True once a query has run a batch and sees no unprocessed data twice in a row; False on timeout."""
    deadline = time.monotonic() + timeout_s
    idle_checks = 0
    while time.monotonic() < deadline:
        _raise_if_failed(query)
        status = query.status
        idle = query.lastProgress is not None and not status["isDataAvailable"] and not status["isTriggerActive"]
        idle_checks = idle_checks + 1 if idle else 0
        if idle_checks >= 2:
            return True
        time.sleep(0.5)
    return False


def _bundle(shown: Any) -> dict:
    """The MIME bundle of a figure (or anything with one), so a display can be updated in place.

    Plotly figures display themselves (`_ipython_display_`), which would append a new output on
    every refresh; their bundle, displayed raw, keeps one output that each refresh replaces.
    """
    bundle = shown._repr_mimebundle_() if hasattr(shown, "_repr_mimebundle_") else None
    if isinstance(bundle, tuple):
        bundle = bundle[0]
    return bundle or {"text/plain": repr(shown)}


def _raise_if_failed(query: StreamingQuery) -> None:
    failure = query.exception()
    if failure is not None:
        raise PipelineError(f"streaming query {query.name} failed: {str(failure).strip().splitlines()[0]}")
