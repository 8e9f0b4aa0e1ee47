"""Notebooks executed by papermill; assertions on what they produced, not merely that they ran.

`test_hourly_notebook_draws_stored_metrics` runs notebook 03 over a Delta table written here;
the integration tests run 01 -> 02 -> 03 against the real local stack (Kafka, HDFS, Spark).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from btcstream.workbench import plots
from btcstream.workbench.report import (HOURLY_NOTEBOOK, NOTEBOOK_DIR, NOTEBOOKS, PLOTLY_JS_FILE, PLOTLY_MIME,
                                        build_report)
from btcstream.settings import Settings
from btcstream.storage.readers import read_hourly_metrics
from helpers.delta_tables import write_stray_file, write_table
from helpers.hourly import hourly_frame

pytestmark = pytest.mark.notebook


def figures(executed: Path) -> list[dict]:
    """The plotly figures a notebook displayed, in order, as the JSON it stored."""
    notebook = nbformat.read(str(executed), as_version=4)
    return [output["data"][PLOTLY_MIME] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if PLOTLY_MIME in output.get("data", {})]


def errors(executed: Path) -> list[str]:
    notebook = nbformat.read(str(executed), as_version=4)
    return [f"{o['ename']}: {o['evalue']}" for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def assert_spread_volatility_figure_matches(figure: dict, hourly: pd.DataFrame) -> None:
    """Every (panel, symbol) trace of the spread/volatility figure holds exactly the stored column, and
    the hours still in progress (`is_final` false) are drawn again as their own provisional trace."""
    assert hourly["symbol"].nunique() >= 1
    by_key = {(trace["yaxis"], trace["name"]): trace for trace in figure["data"]}
    live = hourly[~hourly["is_final"].astype(bool)] if "is_final" in hourly.columns else hourly.iloc[:0]
    assert len(by_key) == 3 * hourly["symbol"].nunique() + 3 * live["symbol"].nunique()
    for axis, column in (("y", "avg_spread"), ("y2", "avg_spread_bps"), ("y3", "realized_volatility")):
        for frame, suffix in ((hourly, ""), (live, f" {plots.PROVISIONAL}")):
            for symbol, rows in frame.sort_values("window_start").groupby("symbol"):
                trace = by_key[(axis, symbol + suffix)]
                values = plots.trace_values(trace["y"])
                assert len(values) == len(rows) > 0
                np.testing.assert_allclose(values, rows[column].to_numpy(), rtol=1e-12)
                assert [pd.Timestamp(x).tz_localize("UTC") for x in trace["x"]] == list(rows["window_start"])


def assert_offline_html(html: Path, figure_count: int) -> None:
    text = html.read_text(encoding="utf-8")
    assert not re.findall(r"<script[^>]+src=[\"']https?://", text), "the report must not load scripts from the network"
    assert text.count("Plotly.newPlot(") == figure_count
    assert f'src="{PLOTLY_JS_FILE}"' in text and "plotly.js v" not in text  # loaded from the file beside, once
    assert "plotly.js v" in (html.parent / PLOTLY_JS_FILE).read_text(encoding="utf-8")[:200]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_thin_stripped_and_documented(name: str) -> None:
    from papermill.inspection import inspect_notebook

    notebook = nbformat.read(str(NOTEBOOK_DIR / name), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell for cell in code if "parameters" in cell.metadata.get("tags", [])] == [code[0]]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    parameters = inspect_notebook(str(NOTEBOOK_DIR / name))
    assert parameters and all(p["inferred_type_name"] != "None" and p["help"] for p in parameters.values())
    assert sum(len(cell.source.splitlines()) for cell in code[1:]) <= 30  # logic lives in btcstream


def test_hourly_notebook_draws_stored_metrics(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/store"
    written = hourly_frame(hours=5)
    write_table(Settings(storage_root=root), "hourly_metrics", written)
    write_stray_file(Settings(storage_root=root), "hourly_metrics", written.head(2).assign(avg_spread=99.0))

    (run,) = build_report({HOURLY_NOTEBOOK: {"storage_root": root, "symbols": ""}}, [HOURLY_NOTEBOOK], tmp_path / "out")

    assert errors(run.executed) == []
    shown = figures(run.executed)
    assert len(shown) == 5
    stored = read_hourly_metrics(Settings(storage_root=root))
    assert len(stored) == len(written)  # the file no commit names is not among them
    assert_spread_volatility_figure_matches(shown[0], stored)
    assert_offline_html(run.html, figure_count=5)
    assert "BTCUSDT" in run.html.read_text() and (tmp_path / "out/index.html").exists()


def test_hourly_notebook_reads_an_earlier_version_with_as_of(tmp_path: Path) -> None:
    """Time travel from the notebook: `as_of` = a version shows the table as it was then."""
    settings = Settings(storage_root=f"file://{tmp_path}/store")
    hours = hourly_frame(hours=6)
    first = write_table(settings, "hourly_metrics", hours[hours["window_start"] < hours["window_start"].min()
                                                            + pd.Timedelta(hours=3)])
    write_table(settings, "hourly_metrics", hours[hours["window_start"] >= hours["window_start"].min()
                                                   + pd.Timedelta(hours=3)])
    runs = build_report({HOURLY_NOTEBOOK: {"storage_root": settings.storage_root, "as_of": str(first)}},
                        [HOURLY_NOTEBOOK], tmp_path / "then")
    then = read_hourly_metrics(settings, as_of=first)

    assert errors(runs[0].executed) == [] and 0 < len(then) < len(hours)
    assert f"{len(then)} hourly rows" in text_outputs(runs[0].executed)
    assert f"as of {first}" in text_outputs(runs[0].executed)
    assert_spread_volatility_figure_matches(figures(runs[0].executed)[0], then)


def test_report_command_passes_parameters_to_one_notebook(tmp_path: Path, capsys) -> None:
    from btcstream.cli import main

    root = f"file://{tmp_path}/store"
    write_table(Settings(storage_root=root), "hourly_metrics", hourly_frame(hours=6))

    code = main(["report", "--only", "03", "--output-dir", str(tmp_path / "out"), "-p", "03", "storage_root", root,
                 "-p", "03", "symbols", "ethusdt", "-p", "03", "start", "2025-02-14T23:00",
                 "-p", "03", "end", "2025-02-15T01:00"])

    assert code == 0 and "index.html" in capsys.readouterr().out
    spread = figures(tmp_path / "out" / HOURLY_NOTEBOOK)[0]
    assert {trace["name"] for trace in spread["data"]} == {"ETHUSDT"}
    assert [x[:13] for x in spread["data"][0]["x"]] == ["2025-02-14T23", "2025-02-15T00"]
    assert not (tmp_path / "out" / "01_start_pipeline.ipynb").exists()


# --- the whole workbench against the real local stack ------------------------------------------

def independent_window_metrics(raw: pd.DataFrame, minutes: int) -> pd.DataFrame:
    """Per symbol and window: mean spread_bps, tick count, realized volatility (last mid of each minute)."""
    rows = []
    for (symbol, start), ticks in raw.groupby(["symbol", raw["event_time"].dt.floor(f"{minutes}min")]):
        ordered = ticks.sort_values(["event_time", "update_id"])
        mids = ordered.groupby(ordered["event_time"].dt.floor("min"))["mid_price"].last().to_numpy()
        returns = np.log(mids[1:] / mids[:-1])
        rows.append({"symbol": symbol, "window_start": start, "avg_spread_bps": ticks["spread_bps"].mean(),
                     "tick_count": len(ticks), "realized_volatility": float(np.sqrt(np.sum(returns ** 2)))})
    return pd.DataFrame(rows).sort_values(["symbol", "window_start"]).reset_index(drop=True)


def stderr_outputs(executed: Path) -> list[str]:
    """What the notebook shows as stderr (a red block in JupyterLab and in the report)."""
    notebook = nbformat.read(str(executed), as_version=4)
    return [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if output.get("output_type") == "stream" and output.get("name") == "stderr"]


def text_outputs(executed: Path) -> str:
    notebook = nbformat.read(str(executed), as_version=4)
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") if output.get("output_type") == "stream"
                         else output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.integration
def test_notebooks_run_the_pipeline_and_chart_what_it_stored(pipeline_report: tuple[Settings, list]) -> None:
    from btcstream.storage.readers import read_forecasts, read_latest_alerts, read_raw_ticks, read_trades

    test_settings, runs = pipeline_report
    pipeline_run, streaming_run, hourly_run, forecast_run = runs
    for run in runs:
        assert errors(run.executed) == [], run.notebook
        assert stderr_outputs(run.executed) == [], run.notebook  # no JVM start-up noise: it goes to a log file
        assert_offline_html(run.html, figure_count=len(figures(run.executed)))
    report_dir = runs[0].html.parent
    assert sum(run.html.stat().st_size for run in runs) < 2_000_000  # plotly.js is not repeated in each page
    assert [path.name for path in report_dir.glob("*.js")] == [PLOTLY_JS_FILE]

    # 01: every tick the producer sent is in raw_data exactly once; hours were closed and stored.
    raw = read_raw_ticks(test_settings, engine="pyarrow")
    # The demo streams the replay exchange's WebSocket feed: quotes (book updates) and aggregate trades.
    summary = re.findall(r"sent quotes=(\d+) trades=(\d+)\+(\d+) from REST", text_outputs(pipeline_run.executed))[-1]
    sent, trades_sent = int(summary[0]), int(summary[1]) + int(summary[2])
    assert sent > 100 and len(raw) == sent and (raw["feed"] == "websocket").all()
    assert not raw.duplicated(["symbol", "update_id"]).any()
    trades = read_trades(test_settings, engine="pyarrow")
    assert trades_sent > 10 and len(trades) == trades_sent and not trades.duplicated(["symbol", "trade_id"]).any()
    assert raw["event_time"].min() >= pd.Timestamp("2021-05-19", tz="UTC")  # the replay of that day
    assert "btcstream_ingest" in text_outputs(pipeline_run.executed)  # the progress table was shown
    hourly = read_hourly_metrics(test_settings, engine="pyarrow")
    assert len(hourly) >= 3

    # 02: the live view's final chart equals an independent pandas computation over raw_data; then the
    # newest alerts (or a line saying there are none).
    (window_figure,) = figures(streaming_run.executed)
    newest_alerts = read_latest_alerts(test_settings)
    assert ("No alerts yet under" in text_outputs(streaming_run.executed)) == newest_alerts.empty
    expected = independent_window_metrics(raw, 15)
    trace_by_axis = {trace["yaxis"]: trace for trace in window_figure["data"] if trace["name"] == "BTCUSDT"}
    np.testing.assert_allclose(plots.trace_values(trace_by_axis["y"]["y"]), expected["avg_spread_bps"], rtol=1e-9)
    np.testing.assert_allclose(plots.trace_values(trace_by_axis["y2"]["y"]), expected["realized_volatility"],
                               rtol=1e-9, atol=1e-15)

    # 03: the charts hold exactly the stored hourly_metrics, read here over WebHDFS.
    shown = figures(hourly_run.executed)
    assert len(shown) == 5
    # The trade columns: per hour as many trades as the trades table holds, shown in the trades chart.
    per_hour = trades.groupby(trades["trade_time"].dt.floor("h")).size()
    stored_counts = hourly.set_index("window_start")["trade_count"]
    assert (stored_counts.reindex(per_hour.index) == per_hour).all() and per_hour.sum() == len(trades)
    counts = next(t for t in shown[3]["data"] if t["name"] == "BTCUSDT" and t.get("yaxis", "y") == "y")
    np.testing.assert_array_equal(plots.trace_values(counts["y"]), hourly.sort_values("window_start")["trade_count"])
    # Hours whose end + allowed lateness is not behind the newest stored tick are still in progress:
    # stored as live rows (the newest hour at least), shown as provisional.
    # The event clock is the newest stored event time, quote or trade.
    clock = max(raw["event_time"].max(), trades["trade_time"].max()) - test_settings.allowed_lateness_span
    live = hourly["window_end"] > clock
    assert list(~hourly["is_final"]) == list(live) and live.sum() >= 1
    assert f"{live.sum()} provisional, hour in progress" in text_outputs(hourly_run.executed)
    assert_spread_volatility_figure_matches(shown[0], hourly)
    band = {trace["name"]: trace for trace in shown[1]["data"]}
    np.testing.assert_allclose(plots.trace_values(band["BTCUSDT high"]["y"]), hourly["high_price"])

    # 04: the live forecasts chart holds the stored forecasts of BTCUSDT (or it says there are none yet).
    forecasts = read_forecasts(test_settings, symbols=["BTCUSDT"])
    shown = figures(forecast_run.executed)
    if forecasts.empty:
        assert "No live forecasts of BTCUSDT" in text_outputs(forecast_run.executed)
    else:
        live = next(f for f in shown if "live forecasts and realized" in f["layout"]["title"]["text"])
        for trace in live["data"]:
            if trace["name"] != plots.REALIZED_NAME:
                rows = forecasts[forecasts["model"] == trace["name"]].sort_values("for_hour")
                np.testing.assert_allclose(plots.trace_values(trace["y"]), rows["value"], rtol=1e-12)
