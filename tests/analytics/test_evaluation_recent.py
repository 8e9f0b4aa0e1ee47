"""What notebook 04 computes: the walk-forward over the newest periods, the live table's rows as
variances, and the cumulative QLIKE loss per model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from btcstream.analytics.evaluation import (FORECAST_COLUMNS, LOSS_COLUMNS, SLOW_MODELS, cumulative_loss,
                                            evaluate_recent, from_forecasts_table, qlike)
from btcstream.analytics.forecasters import Ewma, HarRv, default_models
from btcstream.analytics.realized import ForecastDataError, RealizedSeries
from btcstream.names import FORECAST_MODELS


def series(periods: int = 400, seed: int = 3) -> RealizedSeries:
    generator = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=periods, freq="h", tz="UTC", name="period_start")
    variance = np.exp(generator.normal(-11.0, 0.6, periods))
    frame = pd.DataFrame({"variance": variance, "log_return": generator.normal(0, 1, periods) * np.sqrt(variance)},
                         index=index)
    return RealizedSeries(frame, "1h")


def test_evaluate_recent_forecasts_exactly_the_newest_periods_from_min_train_before() -> None:
    history = series()
    result = evaluate_recent(history, [Ewma(), HarRv((1, 24, 168))], forecasts=50, min_train=200, refit_every=10)

    assert result.steps == 50
    targets = sorted(result.forecasts["target_time"].unique())
    assert list(pd.DatetimeIndex(targets)) == list(history.frame.index[-50:])
    # the first forecast is made from exactly the 200 periods before it
    first = result.forecasts[result.forecasts["target_time"] == targets[0]]
    assert (first["made_at"] == history.frame.index[-51] + pd.Timedelta(hours=1)).all()
    assert result.refits == {"ewma": 5, "har_rv": 5}
    realized = result.forecasts.drop_duplicates("target_time")["realized"].to_numpy()
    np.testing.assert_array_equal(realized, history.frame["variance"].to_numpy()[-50:])


def test_evaluate_recent_refits_the_slow_models_less_often_and_zero_means_all() -> None:
    history = series(periods=260)
    result = evaluate_recent(history, default_models("1h"), forecasts=0, min_train=200, refit_every=5,
                             slow_refit_every=30)

    assert result.steps == 60 and set(SLOW_MODELS) <= set(FORECAST_MODELS)
    assert result.refits == {"ewma": 12, "har_rv": 12, "garch11": 2, "gradient_boosting": 2}


@pytest.mark.parametrize("arguments", [dict(forecasts=-1, min_train=10), dict(forecasts=5, min_train=0),
                                       dict(forecasts=5, min_train=10, refit_every=0)])
def test_evaluate_recent_refuses_impossible_settings_in_one_line(arguments: dict) -> None:
    with pytest.raises(ForecastDataError, match="expected forecasts >= 0"):
        evaluate_recent(series(), [Ewma()], **arguments)


def test_live_rows_become_variances_of_the_walk_forward_shape() -> None:
    hour = pd.Timestamp("2025-02-14T21:00", tz="UTC")
    rows = pd.DataFrame({"symbol": "BTCUSDT", "model": ["har_rv", "ewma", "ewma"],
                         "made_at": [hour - pd.Timedelta(minutes=2)] * 2 + [hour + pd.Timedelta(minutes=58)],
                         "for_hour": [hour, hour, hour + pd.Timedelta(hours=1)], "value": [0.004, 0.005, 0.006],
                         "realized": [0.003, 0.003, None], "updated_at": hour})

    got = from_forecasts_table(rows)

    assert list(got.columns) == list(FORECAST_COLUMNS)
    assert list(got["model"]) == ["ewma", "har_rv", "ewma"]  # by hour, then model as FORECAST_MODELS orders them
    np.testing.assert_allclose(got["forecast"], [0.005 ** 2, 0.004 ** 2, 0.006 ** 2])
    np.testing.assert_allclose(got["realized"][:2], [0.003 ** 2] * 2)
    assert math.isnan(got["realized"].iloc[2]) and got["target_time"].iloc[2] == hour + pd.Timedelta(hours=1)


def test_cumulative_loss_is_the_running_sum_of_qlike_over_the_periods_every_model_has() -> None:
    times = pd.date_range("2025-01-01", periods=4, freq="h", tz="UTC")
    forecasts = pd.DataFrame({
        "model": ["a"] * 4 + ["b"] * 3, "made_at": list(times) + list(times[:3]),
        "target_time": list(times) + list(times[:3]),
        "forecast": [1.0, 2.0, 4.0, 1.0, 2.0, 2.0, 2.0], "realized": [2.0, 2.0, np.nan, 1.0, 2.0, 2.0, np.nan]})

    got = cumulative_loss(forecasts)

    assert list(got.columns) == list(LOSS_COLUMNS)
    # hour 2 has no realized value, hour 3 no forecast of b: both left out
    assert list(got["target_time"]) == [times[0], times[1]] * 2 and list(got["model"]) == ["a", "a", "b", "b"]
    expected_a = np.cumsum([2.0 - math.log(2.0) - 1.0, 0.0])
    np.testing.assert_allclose(got.loc[got["model"] == "a", "cumulative_loss"], expected_a)
    np.testing.assert_allclose(got.loc[got["model"] == "b", "cumulative_loss"], [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(got["loss"], qlike(np.array([2.0, 2.0, 2.0, 2.0]), np.array([1.0, 2.0, 2.0, 2.0])))

    every_own = cumulative_loss(forecasts, common=False)
    assert len(every_own[every_own["model"] == "a"]) == 3  # hour 3 counts for a alone
