"""Charts draw exactly the stored numbers: traces not empty, data behind each trace equals the input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest

from btcstream.workbench import plots
from helpers.hourly import hourly_frame


@pytest.fixture
def hourly() -> pd.DataFrame:
    # Shuffled, as a reader over several files could return it before sorting.
    return hourly_frame(hours=5).sample(frac=1.0, random_state=7).reset_index(drop=True)


def traces(figure) -> list[dict]:
    """The traces as they are serialised into a notebook or HTML (base64 arrays decoded)."""
    return json.loads(pio.to_json(figure))["data"]


def utc_hours(values) -> list[pd.Timestamp]:
    return [pd.Timestamp(v).tz_localize("UTC") for v in values]


def expected(hourly: pd.DataFrame, symbol: str) -> pd.DataFrame:
    return hourly[hourly["symbol"] == symbol].sort_values("window_start")


def test_spread_volatility_panels_hold_the_stored_values(hourly: pd.DataFrame) -> None:
    figure = plots.hourly_spread_volatility(hourly)
    data = traces(figure)

    assert len(data) == 3 * 2  # three panels, two symbols
    by_axis_and_name = {(t["yaxis"], t["name"]): t for t in data}
    for axis, column in (("y", "avg_spread"), ("y2", "avg_spread_bps"), ("y3", "realized_volatility")):
        for symbol in ("BTCUSDT", "ETHUSDT"):
            trace = by_axis_and_name[(axis, symbol)]
            rows = expected(hourly, symbol)
            np.testing.assert_allclose(plots.trace_values(trace["y"]), rows[column].to_numpy())
            assert utc_hours(trace["x"]) == list(rows["window_start"])
    assert "spread" in figure.layout.title.text.lower() and "UTC" in figure.layout.xaxis3.title.text
    assert figure.layout.yaxis.title.text and figure.layout.yaxis2.title.text == "spread (bps)"


def test_price_band_draws_low_high_and_mean_per_symbol(hourly: pd.DataFrame) -> None:
    data = traces(plots.price_band(hourly))

    assert len(data) == 3 * 2
    for symbol in ("BTCUSDT", "ETHUSDT"):
        rows = expected(hourly, symbol)
        named = {t["name"]: t for t in data if t["name"].startswith(symbol)}
        np.testing.assert_allclose(plots.trace_values(named[f"{symbol} high"]["y"]), rows["high_price"])
        np.testing.assert_allclose(plots.trace_values(named[f"{symbol} low-high"]["y"]), rows["low_price"])
        np.testing.assert_allclose(plots.trace_values(named[f"{symbol} mean mid"]["y"]), rows["avg_price"])
        assert named[f"{symbol} low-high"]["fill"] == "tonexty"


def test_liquidity_volume_and_scatter(hourly: pd.DataFrame) -> None:
    liquidity = {(t["yaxis"], t["name"]): t for t in traces(plots.liquidity_volume(hourly))}
    scatter = {t["name"]: t for t in traces(plots.spread_vs_volatility(hourly))}

    for symbol in ("BTCUSDT", "ETHUSDT"):
        rows = expected(hourly, symbol)
        np.testing.assert_allclose(plots.trace_values(liquidity[("y", symbol)]["y"]), rows["avg_liquidity"])
        np.testing.assert_allclose(plots.trace_values(liquidity[("y2", symbol)]["y"]), rows["avg_volume_24h"])
        np.testing.assert_allclose(plots.trace_values(scatter[symbol]["x"]), rows["realized_volatility"])
        np.testing.assert_allclose(plots.trace_values(scatter[symbol]["y"]), rows["avg_spread_bps"])


def test_each_symbol_keeps_its_colour_across_figures(hourly: pd.DataFrame) -> None:
    first = {t.name: t.line.color for t in plots.hourly_spread_volatility(hourly).data}
    only_btc = hourly[hourly["symbol"] == "BTCUSDT"]
    second = {t.name: t.line.color for t in plots.liquidity_volume(only_btc).data}
    assert first["BTCUSDT"] == second["BTCUSDT"] != first["ETHUSDT"]


def test_summary_table_matches_an_independent_groupby(hourly: pd.DataFrame) -> None:
    table = plots.summary_table(hourly)

    btc = hourly[hourly["symbol"] == "BTCUSDT"]
    assert table.loc["BTCUSDT", "hours"] == 5
    assert table.loc["BTCUSDT", "ticks"] == btc["tick_count"].sum()
    assert table.loc["BTCUSDT", "mean_spread_bps"] == pytest.approx(btc["avg_spread_bps"].mean())
    assert table.loc["BTCUSDT", "max_volatility"] == pytest.approx(btc["realized_volatility"].max())
    assert table.loc["BTCUSDT", "first_hour_utc"] == btc["window_start"].min()
    assert "BTCUSDT" in plots.style_summary(table).to_html()


def test_empty_input_gives_empty_figures_not_errors() -> None:
    empty = hourly_frame(hours=1).iloc[0:0]
    assert plots.summary_table(empty).empty
    assert len(plots.hourly_spread_volatility(empty).data) == 0


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="avg_spread_bps"):
        plots.spread_vs_volatility(pd.DataFrame({"symbol": [], "window_start": []}))


def test_window_chart_from_a_streaming_view() -> None:
    windows = pd.DataFrame({"symbol": ["BTCUSDT"] * 3,
                            "window_start": pd.date_range("2025-02-14 10:00", periods=3, freq="15min", tz="UTC"),
                            "avg_spread_bps": [0.1, 0.2, 0.3], "realized_volatility": [0.001, 0.002, 0.0]})
    figure = plots.window_spread_volatility(windows, "15 minutes")
    data = traces(figure)
    np.testing.assert_allclose(plots.trace_values(data[0]["y"]), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(plots.trace_values(data[1]["y"]), [0.001, 0.002, 0.0])
    assert "15 minutes" in figure.layout.title.text
