"""Notebook 04 executed by papermill: the walk-forward figures from klines, and the live forecasts and
alerts exactly as stored (Delta tables written here on a file:// root), or a line saying there are none."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from btcstream.names import FORECAST_MODELS
from btcstream.settings import Settings
from btcstream.storage.readers import read_alerts, read_forecasts
from btcstream.workbench import plots
from btcstream.workbench.report import FORECAST_NOTEBOOK, PLOTLY_JS_FILE, PLOTLY_MIME, build_report
from helpers.delta_tables import write_table
from helpers.hourly import HOURLY_START, hourly_frame
from helpers.live_tables import alerts_frame, forecasts_frame, utc, write_alerts, write_forecasts

pytestmark = pytest.mark.notebook

# Small and quick: 48 forecasts per model after 200 hours of the shipped history.
QUICK = {"evaluate_periods": 48, "min_train": 200, "refit_every": 24, "slow_refit_every": 48, "chart_periods": 0}


def figures(executed: Path) -> list[dict]:
    notebook = nbformat.read(str(executed), as_version=4)
    return [output["data"][PLOTLY_MIME] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if PLOTLY_MIME in output.get("data", {})]


def outputs_text(executed: Path) -> str:
    notebook = nbformat.read(str(executed), as_version=4)
    errors = [f"{o['ename']}: {o['evalue']}" for c in notebook.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    return "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def utc_times(values) -> list[pd.Timestamp]:
    return [pd.Timestamp(v).tz_localize("UTC") for v in values]


def assert_evaluation_table(figure: dict) -> None:
    (table,) = figure["data"]
    assert table["type"] == "table" and table["cells"]["values"][0] == list(FORECAST_MODELS)
    qlike = [float(value) for value in table["cells"]["values"][1]]
    assert all(value > 0 for value in qlike)  # a mean of 48 QLIKE losses, none of them a perfect forecast


def test_forecast_notebook_draws_the_stored_forecasts_and_alerts(tmp_path: Path) -> None:
    settings = Settings(storage_root=f"file://{tmp_path}/store")
    write_forecasts(settings, forecasts_frame(HOURLY_START, hours=6, symbols=("BTCUSDT", "ETHUSDT")))
    alert_times = [utc("2025-02-14T21:30"), utc("2025-02-14T23:15"), utc("2025-02-15T01:05")]
    write_alerts(settings, alerts_frame(alert_times))
    write_alerts(settings, alerts_frame([utc("2025-02-14T22:10")], symbol="ETHUSDT"))  # another symbol: not drawn
    write_table(settings, "hourly_metrics", hourly_frame(hours=5))

    (run,) = build_report({FORECAST_NOTEBOOK: {**QUICK, "storage_root": settings.storage_root, "symbol": "BTCUSDT"}},
                          [FORECAST_NOTEBOOK], tmp_path / "out")

    text = outputs_text(run.executed)
    assert "48 forecasts per model of the next 1h" in text
    assert "24 live forecasts of BTCUSDT (20 realized)" in text and "3 alerts of BTCUSDT" in text
    shown = figures(run.executed)
    assert len(shown) == 7  # walk-forward: table, chart, losses; live: table, chart, losses; alerts
    assert_evaluation_table(shown[0])
    walk_forward = {trace["name"]: trace for trace in shown[1]["data"]}
    assert set(walk_forward) == {plots.REALIZED_NAME, *FORECAST_MODELS}
    assert {len(trace["x"]) for trace in shown[1]["data"]} == {48}

    # The live table: its rows and values as stored, one per realized hour in the losses.
    assert shown[3]["data"][0]["cells"]["values"][0] == list(FORECAST_MODELS)
    stored = read_forecasts(settings, symbols=["BTCUSDT"])
    live = {trace["name"]: trace for trace in shown[4]["data"]}
    for model in FORECAST_MODELS:
        rows = stored[stored["model"] == model].sort_values("for_hour")
        np.testing.assert_allclose(plots.trace_values(live[model]["y"]), rows["value"], rtol=1e-12)
        assert utc_times(live[model]["x"]) == list(rows["for_hour"])
    realized = stored.dropna(subset=["realized"]).drop_duplicates("for_hour")
    np.testing.assert_allclose(plots.trace_values(live[plots.REALIZED_NAME]["y"]), realized["realized"], rtol=1e-12)
    assert {len(trace["x"]) for trace in shown[5]["data"]} == {5}

    # The alerts: each stored BTCUSDT alert at its time, on the BTCUSDT price only.
    alerts = read_alerts(settings, symbols=["BTCUSDT"])
    markers = [trace for trace in shown[6]["data"] if trace["name"].startswith("alert: ")]
    assert sorted(t for trace in markers for t in utc_times(trace["x"])) == list(alerts["time"]) == alert_times
    assert [trace["name"] for trace in shown[6]["data"] if trace["name"].endswith(" mid")] == ["BTCUSDT mid"]
    html = run.html.read_text(encoding="utf-8")
    assert html.count("Plotly.newPlot(") == 7 and f'src="{PLOTLY_JS_FILE}"' in html


def test_forecast_notebook_without_live_tables_says_so_and_draws_the_klines_figures(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/nothing-yet"

    (run,) = build_report({FORECAST_NOTEBOOK: {**QUICK, "storage_root": root, "symbol": "btcusdt"}},
                          [FORECAST_NOTEBOOK], tmp_path / "out")

    text = outputs_text(run.executed)
    assert f"No live forecasts of BTCUSDT under {root}/forecasts yet" in text
    assert f"No alerts of BTCUSDT under {root}/alerts yet" in text
    shown = figures(run.executed)
    assert len(shown) == 3
    assert_evaluation_table(shown[0])
    assert [trace["name"] for trace in shown[2]["data"]] == list(FORECAST_MODELS)  # cumulative QLIKE per model
