"""The OHLC volatility estimators against values computed by hand, and bad bars counted, never raised."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from btcstream.analytics.ohlc_volatility import (bad_bars, bar_volatility, close_to_close, garman_klass,
                                                 parkinson)

# By hand: ln(110/100) = 0.0953101798; squared 0.0090840304; 4 ln 2 = 2.7725887222;
# Parkinson = sqrt(0.0090840304 / 2.7725887222) = sqrt(0.0032763714) = 0.0572395964.
PARKINSON_110_100 = 0.0572395964
# ln(105/100) = 0.0487901642; squared 0.0023804801; 2 ln 2 - 1 = 0.3862943611;
# Garman-Klass = sqrt(0.5 * 0.0090840304 - 0.3862943611 * 0.0023804801) = sqrt(0.0036224491) = 0.0601867854.
GARMAN_KLASS_100_110_100_105 = 0.0601867854


def hourly_bars(opens, highs, lows, closes, hours=None, symbol="BTCUSDT") -> pd.DataFrame:
    start = pd.Timestamp("2021-01-01", tz="UTC")
    times = [start + pd.Timedelta(hours=h) for h in (hours if hours is not None else range(len(opens)))]
    return pd.DataFrame({"symbol": symbol, "interval": "1h", "open_time": times,
                         "close_time": [t + pd.Timedelta(hours=1) - pd.Timedelta(milliseconds=1) for t in times],
                         "open": opens, "high": highs, "low": lows, "close": closes})


def test_parkinson_by_hand() -> None:
    assert parkinson([110.0], [100.0])[0] == pytest.approx(PARKINSON_110_100, rel=1e-9)
    # H/L = 2: sqrt(ln(2)^2 / (4 ln 2)) = sqrt(ln(2) / 4) = 0.4162773056
    assert parkinson([2.0], [1.0])[0] == pytest.approx(0.4162773056, rel=1e-9)
    assert parkinson([100.0], [100.0])[0] == 0.0  # a flat bar


def test_garman_klass_by_hand() -> None:
    assert garman_klass([100.0], [110.0], [100.0], [105.0])[0] == pytest.approx(GARMAN_KLASS_100_110_100_105, rel=1e-9)
    # open = close: only the range term, sqrt(0.5) * ln(H/L) = 0.7071067812 * 0.0953101798 = 0.0673944745
    assert garman_klass([104.0], [110.0], [100.0], [104.0])[0] == pytest.approx(0.0673944745, rel=1e-9)
    # open = low, close = high, H/L = 2: ln(2)^2 * (0.5 - (2 ln 2 - 1)) = 0.4804530139 * 0.1137056389
    # = 0.0546302169, sqrt = 0.2337310782
    assert garman_klass([1.0], [2.0], [1.0], [2.0])[0] == pytest.approx(0.2337310782, rel=1e-9)


def test_close_to_close_log_returns_by_hand() -> None:
    returns = close_to_close([100.0, 110.0, 99.0])
    assert math.isnan(returns[0])
    assert returns[1] == pytest.approx(0.0953101798, rel=1e-9)  # ln(110 / 100)
    assert returns[2] == pytest.approx(-0.1053605157, rel=1e-9)  # ln(99 / 110) = ln(0.9)


@pytest.mark.parametrize(("o", "h", "l", "c", "why"), [
    (100.0, 99.0, 101.0, 100.0, "high < low"),
    (100.0, 110.0, 0.0, 105.0, "low = 0"),
    (-1.0, 110.0, 100.0, 105.0, "negative open"),
    (100.0, 110.0, 100.0, float("nan"), "missing close"),
    (100.0, 110.0, 100.0, 111.0, "close above high"),
    (99.0, 110.0, 100.0, 105.0, "open below low"),
])
def test_a_bad_bar_gives_nan_and_is_flagged(o, h, l, c, why) -> None:
    assert bad_bars([o], [h], [l], [c])[0], why
    assert math.isnan(garman_klass([o], [h], [l], [c])[0]), why


def test_bar_volatility_per_symbol_with_bad_bars_counted_and_gaps_breaking_returns(caplog) -> None:
    btc = hourly_bars([100.0, 101.0, 102.0, 103.0, 104.0], [110.0, 106.0, 101.0, 108.0, 109.0],
                      [100.0, 100.0, 103.0, 100.0, 103.0], [105.0, 102.0, 103.0, 104.0, 106.0],
                      hours=[0, 1, 2, 3, 5])  # bar 2 has high < low; hour 4 is missing (an outage)
    eth = hourly_bars([10.0, 11.0], [12.0, 12.0], [9.0, 10.0], [11.0, 11.5], symbol="ETHUSDT")
    bars = pd.concat([eth, btc]).sample(frac=1.0, random_state=3)  # any row order

    with caplog.at_level(logging.WARNING, logger="btcstream.analytics.ohlc_volatility"):
        result = bar_volatility(bars)

    frame = result.frame
    assert result.bad_bars == 1 and "1 of 7 bars are bad" in caplog.text
    assert list(frame["symbol"]) == ["BTCUSDT"] * 5 + ["ETHUSDT"] * 2
    btc_rows = frame[frame["symbol"] == "BTCUSDT"].reset_index(drop=True)
    assert btc_rows.loc[0, "parkinson"] == pytest.approx(PARKINSON_110_100, rel=1e-9)
    assert btc_rows.loc[0, "garman_klass"] == pytest.approx(GARMAN_KLASS_100_110_100_105, rel=1e-9)
    assert btc_rows["bad_bar"].tolist() == [False, False, True, False, False]
    assert btc_rows.loc[2, ["parkinson", "garman_klass", "log_return"]].isna().all()
    returns = btc_rows["log_return"].tolist()
    assert math.isnan(returns[0])  # the first bar of the symbol
    assert returns[1] == pytest.approx(math.log(102.0 / 105.0), rel=1e-12)
    assert math.isnan(returns[2]) and math.isnan(returns[3])  # next to the bad bar
    assert math.isnan(returns[4])  # hour 5 follows hour 3: across the gap, not an hourly return
    eth_rows = frame[frame["symbol"] == "ETHUSDT"].reset_index(drop=True)
    assert math.isnan(eth_rows.loc[0, "log_return"])  # not a return from BTC's last close
    assert eth_rows.loc[1, "log_return"] == pytest.approx(math.log(11.5 / 11.0), rel=1e-12)


def test_bar_volatility_of_no_bars_and_of_frames_without_close_time() -> None:
    empty = bar_volatility(hourly_bars([], [], [], []))
    assert empty.bad_bars == 0 and empty.frame.empty
    bars = hourly_bars([100.0, 101.0, 102.0], [110.0, 106.0, 103.0], [100.0, 100.0, 101.0], [101.0, 102.0, 103.0],
                       hours=[0, 1, 3]).drop(columns=["close_time", "interval"])
    returns = bar_volatility(bars).frame["log_return"].to_numpy()
    assert np.isnan(returns[0]) and returns[1] == pytest.approx(math.log(102.0 / 101.0)) and np.isnan(returns[2])


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="lack columns"):
        bar_volatility(pd.DataFrame({"symbol": ["BTCUSDT"], "open_time": [pd.Timestamp("2021-01-01", tz="UTC")]}))
