"""Walk-forward evaluation: the losses and the DM test against hand-computed values, no look-ahead for every
model, and kline files with bad rows reported and evaluated without a crash."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btcstream.analytics.evaluation import (FORECAST_COLUMNS, METRIC_COLUMNS, diebold_mariano, metrics,
                                            mincer_zarnowitz_r2, qlike, squared_error, walk_forward)
from btcstream.analytics.forecasters import Ewma, GradientBoosting, HarRv, default_models
from btcstream.analytics.realized import (ForecastDataError, daily_from_klines, hourly_from_klines,
                                          hourly_from_metrics, read_kline_csv)

SHIPPED = Path(__file__).resolve().parents[2] / "lib" / "btcstream" / "data" / "binance_btcusdt_1h.csv"
HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count"
HOUR_MS = 3_600_000


def test_qlike_and_mse_by_hand() -> None:
    assert qlike(2.0, 1.0) == pytest.approx(2.0 - math.log(2.0) - 1.0)  # 0.306853
    assert qlike(0.5, 1.0) == pytest.approx(0.5 - math.log(0.5) - 1.0)  # 0.193147: under-forecasts cost more
    assert qlike(3.0, 3.0) == 0.0
    np.testing.assert_allclose(squared_error([1.0, 4.0], [2.0, 2.0]), [1.0, 4.0])


def test_mincer_zarnowitz_r2_by_hand() -> None:
    # x = 1..4, y = 1, 3, 2, 4: cov sum 4, var sums 5 and 5, r = 0.8, R^2 = 0.64
    assert mincer_zarnowitz_r2(np.array([1.0, 3.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.64)
    assert mincer_zarnowitz_r2(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert math.isnan(mincer_zarnowitz_r2(np.array([1.0, 2.0]), np.array([1.0, 1.0])))


def test_diebold_mariano_by_hand() -> None:
    d = np.array([1.0, -1.0, 1.0, -1.0, 2.0])  # mean 0.4, gamma_0 = 7.2 / 5 = 1.44
    statistic, pvalue = diebold_mariano(d, lags=0)
    assert statistic == pytest.approx(0.4 / math.sqrt(1.44 / 5))  # 0.745356
    assert pvalue == pytest.approx(0.456057, abs=1e-6)
    # gamma_1 = -4.76 / 5 = -0.952; S = 1.44 + 2 * 0.5 * -0.952 = 0.488
    assert diebold_mariano(d, lags=1)[0] == pytest.approx(0.4 / math.sqrt(0.488 / 5))  # 1.280369


def synthetic(count: int, seed: int = 1) -> pd.DataFrame:
    """Hourly variances with persistence, and covariates, on a UTC grid."""
    generator = np.random.default_rng(seed)
    log_variance = np.empty(count)
    log_variance[0] = -9.0
    for index in range(1, count):
        log_variance[index] = -9.0 + 0.9 * (log_variance[index - 1] + 9.0) + 0.4 * generator.standard_normal()
    variance = np.exp(log_variance)
    return pd.DataFrame({"variance": variance,
                         "log_return": np.sqrt(variance) * generator.standard_normal(count),
                         "spread_bps": generator.normal(1.0, 0.2, count),
                         "trade_imbalance": generator.uniform(-1, 1, count),
                         "volume": generator.gamma(2.0, 50.0, count)},
                        index=pd.date_range("2024-03-01", periods=count, freq="h", tz="UTC", name="period_start"))


def test_no_forecast_made_at_t_changes_when_everything_after_t_does() -> None:
    frame = synthetic(300)
    cut = 240  # rows 0..cut are the past at made_at = start of row cut + 1 hour
    changed = frame.copy()
    generator = np.random.default_rng(99)
    changed.iloc[cut + 1:] = changed.iloc[cut + 1:] * generator.uniform(0.01, 100.0, changed.iloc[cut + 1:].shape)
    models = [Ewma(), HarRv((1, 24, 168)), *default_models("1h")[2:]]
    # refits both before and after the cut, so a statistic computed beyond the training window would show
    original = walk_forward(frame, models, min_train=200, refit_every=7, horizon="1h").forecasts
    altered = walk_forward(changed, models, min_train=200, refit_every=7, horizon="1h").forecasts
    made_at = frame.index[cut] + pd.Timedelta(hours=1)
    before = original[original["made_at"] <= made_at].drop(columns="realized")
    assert set(before["model"]) == {"ewma", "har_rv", "garch11", "gradient_boosting"}
    assert len(before) == 4 * (cut + 2 - 200)  # origins 200..cut+1 see rows up to cut at most
    pd.testing.assert_frame_equal(before, altered[altered["made_at"] <= made_at].drop(columns="realized"))
    later = original["made_at"] > made_at + pd.Timedelta(hours=2)
    assert not np.allclose(original.loc[later, "forecast"], altered.loc[later, "forecast"])  # the change is seen


def test_learned_model_statistics_come_from_the_training_window_only() -> None:
    frame = synthetic(400)
    changed = frame.copy()
    changed.iloc[300:, 0] *= 1000.0
    covariates = frame.drop(columns="variance")
    trained = GradientBoosting((1, 24, 168), max_iter=30).fit(frame["variance"].iloc[:300], covariates.iloc[:300])
    again = GradientBoosting((1, 24, 168), max_iter=30).fit(changed["variance"].iloc[:300],
                                                           changed.drop(columns="variance").iloc[:300])
    assert trained.training_end_ == frame.index[299]
    assert trained.residual_variance_ == again.residual_variance_ and trained.predict() == again.predict()


def test_walk_forward_rows_times_and_metrics() -> None:
    frame = synthetic(260)
    result = walk_forward(frame, [Ewma(), HarRv((1, 24, 168))], min_train=250,
                          refit_every={"ewma": 1, "har_rv": 4}, horizon="1h")
    forecasts = result.forecasts
    assert tuple(forecasts.columns) == FORECAST_COLUMNS and len(forecasts) == 20
    assert result.refits == {"ewma": 10, "har_rv": 3}
    first = forecasts.iloc[0]
    assert first["target_time"] == frame.index[250] and first["made_at"] == frame.index[249] + pd.Timedelta(hours=1)
    assert str(first["made_at"].tz) == "UTC"
    table = metrics(forecasts)
    assert tuple(table.columns) == METRIC_COLUMNS and list(table["model"]) == ["ewma", "har_rv"]
    assert np.isnan(table.loc[1, "dm_stat"]) and np.isfinite(table.loc[0, "dm_stat"])
    ewma = forecasts[forecasts["model"] == "ewma"]
    assert table.loc[0, "qlike"] == pytest.approx(qlike(ewma["realized"], ewma["forecast"]).mean())


def test_too_short_a_history_is_one_clear_error() -> None:
    with pytest.raises(ForecastDataError, match="--min-train"):
        walk_forward(synthetic(50), [Ewma()], min_train=60, horizon="1h")


def kline_row(hour: int, open_: object, high: object, low: object, close: object) -> str:
    start = 1_704_067_200_000 + hour * HOUR_MS
    return f"{start},{open_},{high},{low},{close},10.0,{start + HOUR_MS - 1},1000.0,100"


def test_bad_kline_rows_are_counted_by_reason_dropped_and_evaluated(tmp_path: Path) -> None:
    generator = np.random.default_rng(4)
    price = 40_000 * np.exp(np.cumsum(generator.normal(0, 0.004, 400)))
    rows = [HEADER]
    for hour, close in enumerate(price):
        if hour == 50:
            continue  # a missing hour
        open_ = price[hour - 1] if hour else close
        high, low = max(open_, close) * 1.002, min(open_, close) * 0.998
        if hour == 100:
            high = close * 3.0  # a spike: a bad print far above the market
        if hour == 150:
            rows.append(kline_row(hour, "n/a", high, low, close))  # non-numeric
            continue
        if hour == 200:
            high, low = low, high  # high < low
        rows.append(kline_row(hour, open_, high, low, close))
        if hour == 250:
            rows.append(kline_row(hour, open_, high, low, close))  # the same hour twice
    path = tmp_path / "klines.csv"
    path.write_text("\n".join(rows) + "\n")

    klines = read_kline_csv(path)

    assert klines.problems == {"missing_hour": 1, "spike": 1, "non_numeric": 1, "bad_bar": 1, "duplicate_time": 1}
    assert len(klines.bars) == 396 and klines.bars.index.is_unique and str(klines.bars.index.tz) == "UTC"
    series = hourly_from_klines(klines)
    assert series.frame["variance"].max() < 1e-3  # the spike did not reach the series
    assert series.frame["log_return"].isna().sum() == 1 + 4  # the first bar, and after each of the 4 gaps
    result = walk_forward(series, [Ewma(), HarRv((1, 24, 168))], min_train=300, refit_every=10)
    assert len(result.forecasts) == 2 * (len(series.frame) - 300)
    assert np.isfinite(metrics(result.forecasts)["qlike"]).all()


def test_the_shipped_history_has_only_missing_hours() -> None:
    klines = read_kline_csv(SHIPPED)
    assert klines.problems == {"missing_hour": 18}
    assert klines.bars.index[0] == pd.Timestamp("2020-09-01", tz="UTC")
    daily = daily_from_klines(klines)
    first_day = klines.bars.loc["2020-09-01"]
    returns = np.diff(np.log(first_day["close"].to_numpy()))  # 23 returns inside the day (the first has none)
    assert daily.frame["variance"].iloc[0] == pytest.approx(24.0 / 23.0 * float((returns ** 2).sum()))
    assert daily.problems["incomplete_day"] >= 1 and daily.horizon == "1d"


def test_hourly_metrics_frame_gives_final_hours_with_their_covariates() -> None:
    hours = pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC")
    metrics_frame = pd.DataFrame({"symbol": "BTCUSDT", "window_start": hours, "realized_volatility": [0.01, 0.02, None, 0.03],
                                  "open_mid": 100.0, "close_mid": [101.0, 99.0, 100.0, 100.0], "avg_spread_bps": 1.5,
                                  "trade_imbalance": 0.1, "buy_volume": 2.0, "sell_volume": 3.0,
                                  "is_final": [True, True, True, False]})
    series = hourly_from_metrics(metrics_frame)
    assert list(series.frame.index) == list(hours[:2])
    np.testing.assert_allclose(series.frame["variance"], [1e-4, 4e-4])
    np.testing.assert_allclose(series.frame["log_return"], [math.log(1.01), math.log(0.99)])
    assert series.frame["volume"].tolist() == [5.0, 5.0] and series.problems == {"not_final": 1, "bad_hour": 1}
