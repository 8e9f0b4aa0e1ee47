"""Market alerts: a robust z-score of each 1-minute bar against its trailing window, per symbol.

A bar is one symbol's quotes and trades of one UTC event-time minute. Its metrics:

    spread_bps      = mean over the bar's quotes of (ask - bid) / mid * 10_000
    volatility_1m   = ln(high_mid / low_mid) / sqrt(4 ln 2)      Parkinson's range estimator of the
                      minute's volatility (not annualised); needs >= 2 quotes in the bar
    trade_imbalance = (buy_qty - sell_qty) / (buy_qty + sell_qty)  buy = taker buys (buyer_is_maker
                      false), as hourly_metrics; needs >= 1 trade in the bar

A bar's value x of a metric is scored against that metric's values in the bars of the trailing
window [t - W, t) (the bar itself excluded; W = `Settings.alert_window`):

    baseline = median(window), mad = median(|window - baseline|)
    z        = (x - baseline) / scale,  scale = max(1.4826 * mad, SCALE_FLOOR_FRACTION * |baseline|,
                                                  SCALE_FLOOR[metric])

1.4826 * MAD estimates the standard deviation of normal data; the floors keep a window of
identical values (a spread pinned at one tick: MAD 0) from turning any change into an infinite z.
A window with fewer than `min_bars` values scores nothing.

An alert is raised when |z| > threshold and the metric's previous scored bar of the symbol was not
above the threshold: one alert per excursion, however many minutes it lasts.

Bars are built from mergeable partial aggregates (`MinuteBar`), so a minute whose records arrive
in several micro-batches is the merge of their partials. Pure Python and pandas, no Spark: the job
computes the partials of a batch in Spark (`btcstream.streaming.alerts`), `minute_bars` computes
the same partials from stored rows (when the job rebuilds its window after a restart).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Iterable

import numpy as np
import pandas as pd

from btcstream.names import ALERT_METRICS

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD * this estimates sigma for normal data
SCALE_FLOOR_FRACTION = 0.05  # the scale is at least 5% of |baseline|
SCALE_FLOOR = {"spread_bps": 0.01, "volatility_1m": 1e-6, "trade_imbalance": 0.01}  # absolute floors
PARKINSON = 1.0 / math.sqrt(4.0 * math.log(2.0))
MINUTE = timedelta(minutes=1)
BASIS_POINTS = 10_000.0


@dataclass(frozen=True)
class MinuteBar:
    """Partial aggregates of one (symbol, minute): merge two with `merged`, read metrics with `metrics`."""

    symbol: str
    minute: datetime  # UTC start of the minute
    quotes: int = 0
    spread_bps_sum: float = 0.0
    high_mid: float = -math.inf
    low_mid: float = math.inf
    trades: int = 0
    buy_qty: float = 0.0
    sell_qty: float = 0.0

    def merged(self, other: "MinuteBar") -> "MinuteBar":
        """The bar of both parts' records."""
        return replace(self, quotes=self.quotes + other.quotes, spread_bps_sum=self.spread_bps_sum + other.spread_bps_sum,
                       high_mid=max(self.high_mid, other.high_mid), low_mid=min(self.low_mid, other.low_mid),
                       trades=self.trades + other.trades, buy_qty=self.buy_qty + other.buy_qty,
                       sell_qty=self.sell_qty + other.sell_qty)

    def metrics(self) -> dict[str, float]:
        """The bar's metrics (module docstring); a metric the bar cannot give is left out."""
        values: dict[str, float] = {}
        if self.quotes:
            values["spread_bps"] = self.spread_bps_sum / self.quotes
        if self.quotes >= 2 and self.low_mid > 0:
            values["volatility_1m"] = math.log(self.high_mid / self.low_mid) * PARKINSON
        if self.buy_qty + self.sell_qty > 0:
            values["trade_imbalance"] = (self.buy_qty - self.sell_qty) / (self.buy_qty + self.sell_qty)
        return {name: value for name, value in values.items() if math.isfinite(value)}


@dataclass(frozen=True)
class Alert:
    """One alert: the bar's value of a metric, far from its trailing baseline (`btcstream.names.ALERTS_COLUMNS`)."""

    symbol: str
    time: datetime  # the bar's minute
    metric: str
    value: float
    baseline: float
    mad: float
    z: float

    def to_dict(self) -> dict[str, object]:
        return {"symbol": self.symbol, "time": self.time.isoformat(), "metric": self.metric, "value": self.value,
                "baseline": self.baseline, "mad": self.mad, "z": self.z}


def robust_z(value: float, window: np.ndarray, metric: str) -> tuple[float, float, float]:
    """(baseline, mad, z) of `value` against the trailing `window` values (module docstring)."""
    baseline = float(np.median(window))
    mad = float(np.median(np.abs(window - baseline)))
    scale = max(MAD_TO_SIGMA * mad, SCALE_FLOOR_FRACTION * abs(baseline), SCALE_FLOOR[metric])
    return baseline, mad, (value - baseline) / scale


@dataclass
class _SymbolWindow:
    bars: deque[tuple[datetime, dict[str, float]]] = field(default_factory=deque)
    above: dict[str, bool] = field(default_factory=dict)  # metric -> the previous scored bar was above


class AlertScorer:
    """Scores complete bars in minute order per symbol and keeps the trailing window (module docstring)."""

    def __init__(self, window: timedelta, threshold: float, min_bars: int | None = None) -> None:
        self.window = window
        self.threshold = threshold
        bars_in_window = max(1, int(window / MINUTE))
        self.min_bars = min_bars if min_bars is not None else max(5, bars_in_window // 2)
        self._symbols: dict[str, _SymbolWindow] = {}

    def score(self, bar: MinuteBar) -> list[Alert]:
        """The alerts `bar` raises; then the bar joins its symbol's window. Bars must come in minute order."""
        state = self._symbols.setdefault(bar.symbol, _SymbolWindow())
        while state.bars and state.bars[0][0] < bar.minute - self.window:
            state.bars.popleft()
        if state.bars and state.bars[-1][0] >= bar.minute:
            raise ValueError(f"bar {bar.symbol} {bar.minute} scored after {state.bars[-1][0]}: bars must come in order")
        values = bar.metrics()
        alerts = []
        for metric in ALERT_METRICS:
            if metric not in values:
                continue
            window = np.array([metrics[metric] for _, metrics in state.bars if metric in metrics])
            if len(window) < self.min_bars:
                continue
            baseline, mad, z = robust_z(values[metric], window, metric)
            above = abs(z) > self.threshold
            if above and not state.above.get(metric, False):
                alerts.append(Alert(bar.symbol, bar.minute, metric, values[metric], baseline, mad, z))
            state.above[metric] = above
        state.bars.append((bar.minute, values))
        return alerts

    def newest(self, symbol: str) -> datetime | None:
        """The last bar scored for `symbol`."""
        state = self._symbols.get(symbol)
        return state.bars[-1][0] if state and state.bars else None


def minute_bars(quotes: pd.DataFrame, trades: pd.DataFrame | None = None) -> list[MinuteBar]:
    """The bars of stored rows, in (symbol, minute) order: `quotes` with symbol, event_time, bid_price,
    ask_price (raw_data columns); `trades` with symbol, trade_time, qty, buyer_is_maker (trades columns)."""
    parts: dict[tuple[str, pd.Timestamp], MinuteBar] = {}
    if not quotes.empty:
        mid = (quotes["bid_price"] + quotes["ask_price"]) / 2.0
        frame = pd.DataFrame({"symbol": quotes["symbol"], "minute": pd.to_datetime(quotes["event_time"], utc=True).dt.floor("min"),
                              "mid": mid, "spread_bps": (quotes["ask_price"] - quotes["bid_price"]) / mid * BASIS_POINTS})
        for (symbol, minute), rows in frame.groupby(["symbol", "minute"], sort=False):
            parts[(symbol, minute)] = MinuteBar(symbol, minute.to_pydatetime(), quotes=len(rows),
                                                spread_bps_sum=float(rows["spread_bps"].sum()),
                                                high_mid=float(rows["mid"].max()), low_mid=float(rows["mid"].min()))
    if trades is not None and not trades.empty:
        sells = trades["buyer_is_maker"].astype(bool)
        frame = pd.DataFrame({"symbol": trades["symbol"],
                              "minute": pd.to_datetime(trades["trade_time"], utc=True).dt.floor("min"),
                              "buy": trades["qty"].where(~sells, 0.0), "sell": trades["qty"].where(sells, 0.0)})
        for (symbol, minute), rows in frame.groupby(["symbol", "minute"], sort=False):
            bar = MinuteBar(symbol, minute.to_pydatetime(), trades=len(rows), buy_qty=float(rows["buy"].sum()),
                            sell_qty=float(rows["sell"].sum()))
            key = (symbol, minute)
            parts[key] = parts[key].merged(bar) if key in parts else bar
    return [parts[key] for key in sorted(parts)]


def merge_bars(bars: Iterable[MinuteBar]) -> dict[tuple[str, datetime], MinuteBar]:
    """Partials of the same (symbol, minute) merged into one bar each."""
    merged: dict[tuple[str, datetime], MinuteBar] = {}
    for bar in bars:
        key = (bar.symbol, bar.minute)
        merged[key] = merged[key].merged(bar) if key in merged else bar
    return merged
