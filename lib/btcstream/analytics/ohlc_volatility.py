"""Volatility from OHLC bars (klines) where no ticks exist: Parkinson, Garman-Klass, close-to-close returns.

Per bar, with natural logs, H/L/O/C the bar's high, low, open and close:

- Parkinson (1980), from the range:       sigma_P  = sqrt( ln(H/L)^2 / (4 ln 2) )
- Garman-Klass (1980), range and body:   sigma_GK = sqrt( 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2 )
- close-to-close log return:             r_t      = ln(C_t / C_{t-1})

Each is a per-bar volatility, not annualised (times sqrt(24 * 365) for an annual figure from hourly
bars; crypto trades every day). Both range estimators assume a driftless random walk observed
continuously: with discrete trading the observed range is too short and they read low, the more so the
fewer trades a bar holds. Their squares are comparable with the square of the tick realized volatility
of the same hour (`hourly_metrics.realized_volatility = sqrt(sum of squared mid log returns)`).

A bad bar (a price that is missing, not finite or <= 0, high < low, or open/close outside [low, high])
gives NaN in every column and is counted, never raised. A close-to-close return needs the previous
bar of the same symbol exactly one bar earlier; across a gap in the history it is NaN (a two-hour
return is not an hourly one). Not for: reading klines (`btcstream.storage.klines`) or charts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

LN2 = float(np.log(2.0))
PARKINSON_DENOMINATOR = 4.0 * LN2  # E[ln(H/L)^2] = 4 ln 2 * sigma^2 for Brownian motion
GARMAN_KLASS_BODY_WEIGHT = 2.0 * LN2 - 1.0  # about 0.386
ESTIMATE_COLUMNS: tuple[str, ...] = ("parkinson", "garman_klass", "log_return")
REQUIRED_COLUMNS: tuple[str, ...] = ("symbol", "open_time", "open", "high", "low", "close")


@dataclass(frozen=True)
class BarVolatility:
    """The estimates of every bar (`frame`) and how many bars were bad (NaN estimates)."""

    frame: pd.DataFrame  # symbol, [interval,] open_time, parkinson, garman_klass, log_return, bad_bar
    bad_bars: int


def bad_bars(open_: Any, high: Any, low: Any, close: Any) -> np.ndarray:
    """True for bars no estimator can use: a price missing, not finite or <= 0, high < low, or open/close
    outside [low, high]."""
    o, h, l, c = (_floats(values) for values in (open_, high, low, close))
    finite_positive = (np.isfinite(o) & np.isfinite(h) & np.isfinite(l) & np.isfinite(c)
                       & (o > 0) & (h > 0) & (l > 0) & (c > 0))
    consistent = (h >= l) & (o >= l) & (o <= h) & (c >= l) & (c <= h)
    return ~(finite_positive & consistent)


def parkinson(high: Any, low: Any) -> np.ndarray:
    """Per-bar Parkinson volatility sqrt(ln(H/L)^2 / (4 ln 2)); NaN where high < low or a price is not > 0."""
    h, l = _floats(high), _floats(low)
    usable = np.isfinite(h) & np.isfinite(l) & (h > 0) & (l > 0) & (h >= l)
    range_log = np.log(np.divide(h, l, out=np.ones_like(h), where=usable))
    return np.where(usable, np.sqrt(range_log ** 2 / PARKINSON_DENOMINATOR), np.nan)


def garman_klass(open_: Any, high: Any, low: Any, close: Any) -> np.ndarray:
    """Per-bar Garman-Klass volatility sqrt(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2); NaN for a bad bar.

    For a consistent bar |ln(C/O)| <= ln(H/L), so the variance is >= (0.5 - 0.386) ln(H/L)^2 >= 0.
    """
    o, h, l, c = (_floats(values) for values in (open_, high, low, close))
    usable = ~bad_bars(o, h, l, c)
    range_log = np.log(np.divide(h, l, out=np.ones_like(h), where=usable))
    body_log = np.log(np.divide(c, o, out=np.ones_like(c), where=usable))
    variance = 0.5 * range_log ** 2 - GARMAN_KLASS_BODY_WEIGHT * body_log ** 2
    return np.where(usable, np.sqrt(np.maximum(variance, 0.0)), np.nan)


def close_to_close(close: Any) -> np.ndarray:
    """Log returns ln(C_t / C_{t-1}) of consecutive closes (the first is NaN; NaN next to a close not > 0)."""
    c = _floats(close)
    usable = np.isfinite(c) & (c > 0)
    logs = np.where(usable, np.log(np.where(usable, c, 1.0)), np.nan)
    returns = np.full(len(c), np.nan)
    returns[1:] = logs[1:] - logs[:-1]
    return returns


def bar_volatility(bars: pd.DataFrame) -> BarVolatility:
    """Parkinson, Garman-Klass and the close-to-close log return of every bar, per symbol (and interval).

    `bars` is a klines frame (`btcstream.storage.klines.read_klines`): symbol, open_time, open, high,
    low, close, and optionally interval and close_time (then the bar length is close_time - open_time
    + 1 ms, else the most common step between bars). Rows come back sorted by symbol, interval, open_time.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}; have {list(bars.columns)}")
    keys = ["symbol", "interval"] if "interval" in bars.columns else ["symbol"]
    ordered = bars.sort_values([*keys, "open_time"], kind="stable").reset_index(drop=True)
    bad = bad_bars(ordered["open"], ordered["high"], ordered["low"], ordered["close"])
    frame = ordered[[*keys, "open_time"]].copy()
    frame["parkinson"] = np.where(bad, np.nan, parkinson(ordered["high"], ordered["low"]))
    frame["garman_klass"] = garman_klass(ordered["open"], ordered["high"], ordered["low"], ordered["close"])
    frame["log_return"] = _consecutive_returns(ordered, keys, bad)
    frame["bad_bar"] = bad
    count = int(bad.sum())
    if count:
        log.warning("%d of %d bars are bad (missing or non-positive price, high < low, open/close outside "
                    "[low, high]): their estimates are NaN", count, len(frame))
    return BarVolatility(frame=frame, bad_bars=count)


def _consecutive_returns(ordered: pd.DataFrame, keys: list[str], bad: np.ndarray) -> np.ndarray:
    """close_to_close within each group, NaN where the previous bar is not exactly one bar earlier or either is bad."""
    closes = np.where(bad, np.nan, _floats(ordered["close"]))
    returns = close_to_close(closes)
    times = pd.to_datetime(ordered["open_time"], utc=True)
    if "close_time" in ordered.columns and ordered["close_time"].notna().all():
        step = pd.to_datetime(ordered["close_time"], utc=True) - times + pd.Timedelta(milliseconds=1)
    else:
        differences = times.diff().dropna()
        typical = differences.mode().iloc[0] if len(differences) else pd.Timedelta(0)
        step = pd.Series(typical, index=ordered.index)
    same_group = np.ones(len(ordered), dtype=bool)
    for key in keys:
        same_group &= (ordered[key] == ordered[key].shift()).to_numpy()
    follows = (times.shift() + step.shift() == times).to_numpy(dtype=bool, na_value=False)
    return np.where(same_group & follows, returns, np.nan)


def _floats(values: Any) -> np.ndarray:
    """Any array-like of numbers (None/NA allowed) as a float64 array, missing values NaN."""
    return pd.to_numeric(pd.Series(values, copy=False) if not isinstance(values, pd.Series) else values,
                         errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
