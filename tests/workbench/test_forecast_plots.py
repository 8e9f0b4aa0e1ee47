"""The forecast and alert figures draw exactly their input: the evaluation table's cells, sqrt of the
variances, the cumulative losses, and every alert at its own time with its numbers in the hover."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest

from btcstream.analytics.evaluation import METRIC_COLUMNS, cumulative_loss, from_forecasts_table
from btcstream.names import FORECAST_MODELS
from btcstream.workbench import plots
from helpers.hourly import HOURLY_START, hourly_frame
from helpers.live_tables import alerts_frame, forecasts_frame, utc


def serialised(figure) -> dict:
    """The figure as a notebook or HTML page stores it (base64 arrays decoded by `plots.trace_values`)."""
    return json.loads(pio.to_json(figure))


def utc_times(values) -> list[pd.Timestamp]:
    return [pd.Timestamp(v).tz_localize("UTC") for v in values]


@pytest.fixture
def live() -> pd.DataFrame:
    """Live table rows as variances: 6 hours, the last not realized yet."""
    return from_forecasts_table(forecasts_frame(HOURLY_START, hours=6))


def test_evaluation_table_has_one_row_per_model_and_shades_the_lowest_qlike() -> None:
    scores = pd.DataFrame([("ewma", 0.52, 1.26e-7, 0.095, 5.23, 1.6e-7), ("har_rv", 0.47, 1.44e-7, 0.095, np.nan, np.nan),
                           ("gradient_boosting", 0.46, 1.21e-7, 0.144, -0.84, 0.399)], columns=list(METRIC_COLUMNS))

    table = serialised(plots.evaluation_table(scores))["data"][0]

    columns = table["cells"]["values"]
    assert columns[0] == ["ewma", "har_rv", "gradient_boosting"]
    assert columns[1] == ["0.5200", "0.4700", "0.4600"] and columns[4] == ["5.23", "-", "-0.84"]
    assert table["cells"]["fill"]["color"][0] == ["white", "white", plots.BEST_ROW_FILL]
    assert len(table["header"]["values"]) == len(METRIC_COLUMNS)


def test_forecast_vs_realized_draws_the_square_roots_per_model_and_the_realized_line(live: pd.DataFrame) -> None:
    figure = serialised(plots.forecast_vs_realized(live))
    by_name = {trace["name"]: trace for trace in figure["data"]}

    assert list(by_name) == [plots.REALIZED_NAME, *FORECAST_MODELS]
    stored = forecasts_frame(HOURLY_START, hours=6)  # volatilities, as the table holds them
    for model in FORECAST_MODELS:
        rows = stored[stored["model"] == model].sort_values("for_hour")
        np.testing.assert_allclose(plots.trace_values(by_name[model]["y"]), rows["value"], rtol=1e-12)
        assert utc_times(by_name[model]["x"]) == list(rows["for_hour"])
    realized = stored.dropna(subset=["realized"]).drop_duplicates("for_hour")
    assert len(realized) == 5  # the hour in progress has forecasts only
    np.testing.assert_allclose(plots.trace_values(by_name[plots.REALIZED_NAME]["y"]), realized["realized"], rtol=1e-12)
    assert by_name["ewma"]["x"][0] == "2025-02-14T21:00:00"  # whole seconds: no nanosecond digits per point


def test_forecast_vs_realized_keeps_the_newest_periods(live: pd.DataFrame) -> None:
    figure = serialised(plots.forecast_vs_realized(live, last=2))

    for trace in figure["data"]:
        assert utc_times(trace["x"])[0] >= HOURLY_START + pd.Timedelta(hours=4)
    assert {len(trace["x"]) for trace in figure["data"] if trace["name"] != plots.REALIZED_NAME} == {2}


def test_cumulative_qlike_draws_each_models_running_sum(live: pd.DataFrame) -> None:
    losses = cumulative_loss(live)
    figure = serialised(plots.cumulative_qlike(losses))

    assert [trace["name"] for trace in figure["data"]] == list(FORECAST_MODELS)
    for trace in figure["data"]:
        rows = losses[losses["model"] == trace["name"]]
        assert len(rows) == 5
        np.testing.assert_allclose(plots.trace_values(trace["y"]), rows["cumulative_loss"], rtol=1e-12)
        assert np.all(np.diff(plots.trace_values(trace["y"])) >= 0)  # QLIKE >= 0: the sum never falls


def test_alerts_sit_on_the_price_at_their_times_with_their_numbers_in_the_hover() -> None:
    hourly = hourly_frame(hours=4, symbols=("BTCUSDT",))
    times = [utc("2025-02-14T21:30"), utc("2025-02-14T22:00"), utc("2025-02-14T23:15"), utc("2025-02-15T00:45")]
    alerts = alerts_frame(times)

    figure = serialised(plots.alerts_on_price(hourly, alerts, threshold=6.0))
    by_name = {trace["name"]: trace for trace in figure["data"]}

    price = by_name["BTCUSDT mid"]
    assert utc_times(price["x"]) == list(hourly["window_end"])
    np.testing.assert_allclose(plots.trace_values(price["y"]), hourly["close_mid"])
    shown_times, shown_z = [], []
    for metric in ("spread_bps", "volatility_1m", "trade_imbalance"):
        marker, z = by_name[f"alert: {metric}"], by_name[f"z: {metric}"]
        expected = alerts[alerts["metric"] == metric]
        assert utc_times(marker["x"]) == list(expected["time"]) == utc_times(z["x"])
        np.testing.assert_allclose(plots.trace_values(z["y"]), expected["z"])
        details = marker["customdata"]
        assert [row[1] for row in details] == [metric] * len(expected)
        np.testing.assert_allclose([[float(v) for v in row[2:]] for row in details],
                                   expected[["value", "baseline", "z"]].to_numpy())
        shown_times += utc_times(marker["x"])
        shown_z += list(plots.trace_values(z["y"]))
    assert sorted(shown_times) == times
    # 21:30 lies before the first hourly close (22:00): on the line's first value; 23:15 between two closes
    first = by_name["alert: spread_bps"]
    on_line = plots.trace_values(first["y"])
    close = hourly.set_index("window_end")["close_mid"]
    assert on_line[0] == close.iloc[0]
    np.testing.assert_allclose(plots.trace_values(by_name["alert: trade_imbalance"]["y"])[0],
                               close.iloc[1] + 0.25 * (close.iloc[2] - close.iloc[1]))
    assert sorted(shape["y0"] for shape in figure["layout"]["shapes"]) == [-6.0, 6.0]


def test_alerts_without_prices_still_show_their_z_scores() -> None:
    hourly = hourly_frame(hours=1).iloc[:0]
    alerts = alerts_frame([utc("2025-02-14T21:30")])

    figure = serialised(plots.alerts_on_price(hourly, alerts))

    (marker,) = [t for t in figure["data"] if t["name"] == "alert: spread_bps"]
    (z,) = [t for t in figure["data"] if t["name"] == "z: spread_bps"]
    assert np.isnan(plots.trace_values(marker["y"]).astype(float)).all()
    np.testing.assert_allclose(plots.trace_values(z["y"]), alerts["z"])


def test_figures_name_the_missing_columns() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        plots.forecast_vs_realized(pd.DataFrame({"model": [], "target_time": []}))
