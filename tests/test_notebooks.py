"""Notebooks executed by papermill; assertions on what they produced, not merely that they ran.

`test_hourly_notebook_draws_stored_metrics` runs notebook 03 over a file-sink dataset written here;
the integration tests run 01 -> 02 -> 03 against the real local stack (Kafka, HDFS, Spark).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from btcstream import plots
from btcstream.report import HOURLY_NOTEBOOK, PLOTLY_MIME, build_report
from btcstream.settings import Settings
from btcstream.storage.readers import read_hourly_metrics
from test_readers import hourly_frame, write_file_sink

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
    """Every (panel, symbol) trace of the spread/volatility figure holds exactly the stored column."""
    assert hourly["symbol"].nunique() >= 1
    by_key = {(trace["yaxis"], trace["name"]): trace for trace in figure["data"]}
    assert len(by_key) == 3 * hourly["symbol"].nunique()
    for axis, column in (("y", "avg_spread"), ("y2", "avg_spread_bps"), ("y3", "realized_volatility")):
        for symbol, rows in hourly.sort_values("window_start").groupby("symbol"):
            trace = by_key[(axis, symbol)]
            values = plots.trace_values(trace["y"])
            assert len(values) == len(rows) > 0
            np.testing.assert_allclose(values, rows[column].to_numpy(), rtol=1e-12)
            assert [pd.Timestamp(x).tz_localize("UTC") for x in trace["x"]] == list(rows["window_start"])


def assert_offline_html(html: Path, figure_count: int) -> None:
    text = html.read_text(encoding="utf-8")
    assert not re.findall(r"<script[^>]+src=[\"']https?://", text), "the report must not load scripts from the network"
    assert text.count("Plotly.newPlot(") == figure_count
    assert "plotly.js v" in text  # the library itself is inlined


def test_hourly_notebook_draws_stored_metrics(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/store"
    written = hourly_frame(hours=5)
    write_file_sink(tmp_path / "store/hourly_metrics", written, "window_start",
                    uncommitted=written.head(2).assign(avg_spread=99.0))

    (run,) = build_report({HOURLY_NOTEBOOK: {"storage_root": root, "symbols": ""}}, [HOURLY_NOTEBOOK], tmp_path / "out")

    assert errors(run.executed) == []
    shown = figures(run.executed)
    assert len(shown) == 4
    stored = read_hourly_metrics(Settings(storage_root=root))
    assert len(stored) == len(written)  # the uncommitted file is not among them
    assert_spread_volatility_figure_matches(shown[0], stored)
    assert_offline_html(run.html, figure_count=4)
    assert "BTCUSDT" in run.html.read_text() and (tmp_path / "out/index.html").exists()


def test_hourly_notebook_with_symbol_and_range(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/store"
    write_file_sink(tmp_path / "store/hourly_metrics", hourly_frame(hours=6), "window_start")

    (run,) = build_report({HOURLY_NOTEBOOK: {"storage_root": root, "symbols": "ethusdt",
                                             "start": "2025-02-14T23:00", "end": "2025-02-15T01:00"}},
                          [HOURLY_NOTEBOOK], tmp_path / "out")

    spread = figures(run.executed)[0]
    assert {trace["name"] for trace in spread["data"]} == {"ETHUSDT"}
    assert [x[:13] for x in spread["data"][0]["x"]] == ["2025-02-14T23", "2025-02-15T00"]
