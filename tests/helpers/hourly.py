"""Hourly metrics for tests: an independent pandas reference, its comparison, and sample stored rows."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from btcstream.ingest import tick
from btcstream.streaming import transforms
from helpers.ticks import to_pandas_ticks

HOURLY_START = datetime(2025, 2, 14, 21, tzinfo=timezone.utc)  # three hours before midnight UTC


def independent_hourly(ticks: list[tick.Tick], trades: pd.DataFrame | None = None, grid_seconds: int = 60) -> pd.DataFrame:
    """Hourly metrics computed with pandas/numpy only (the reference for the Spark implementation).

    Realized volatility from the last mid of each `grid_seconds` step holding a tick; trade columns
    from `trades` (columns symbol, price, qty, trade_time (aware), buyer_is_maker), none by default.
    """
    frame = to_pandas_ticks(ticks)
    frame["mid"] = (frame.bid_price + frame.ask_price) / 2
    frame["spread"] = frame.ask_price - frame.bid_price
    frame["spread_bps"] = frame.spread / frame.mid * 1e4
    frame["liquidity"] = frame.bid_price * frame.bid_qty + frame.ask_price * frame.ask_qty
    frame["window_start"] = frame.event_time.dt.floor("h")
    rows = []
    frame["step"] = frame.event_time.astype("int64") // 1000 // (grid_seconds * 1_000_000)
    for (symbol, start), hour in frame.sort_values("event_time").groupby(["symbol", "window_start"]):
        last_mids = hour.groupby("step").mid.last().sort_index().to_numpy()
        returns = np.diff(np.log(last_mids))
        rows.append({
            "symbol": symbol, "window_start": start, "window_end": start + pd.Timedelta(hours=1),
            "avg_price": hour.mid.mean(), "avg_spread": hour.spread.mean(), "avg_spread_bps": hour.spread_bps.mean(),
            "total_liquidity": hour.liquidity.sum(), "avg_liquidity": hour.liquidity.mean(),
            "realized_volatility": math.sqrt(float(np.sum(returns ** 2))),
            "high_price": hour.mid.max(), "low_price": hour.mid.min(), "avg_volume_24h": hour.volume_24h.mean(),
            "tick_count": len(hour), "open_mid": hour.mid.iloc[0], "close_mid": hour.mid.iloc[-1],
            "vwap": np.nan, "trade_count": 0, "buy_volume": 0.0, "sell_volume": 0.0, "trade_imbalance": np.nan,
        })
    result = pd.DataFrame(rows)
    if trades is not None and len(trades):
        result = _with_trades(result, trades)
    return result.sort_values(["symbol", "window_start"]).reset_index(drop=True)


def _with_trades(hourly: pd.DataFrame, trades: pd.DataFrame) -> pd.DataFrame:
    """`hourly` with the trade columns of `trades` per (symbol, hour) (hours with only trades added)."""
    trades = trades.assign(window_start=trades.trade_time.dt.floor("h"))
    rows = []
    for (symbol, start), hour in trades.groupby(["symbol", "window_start"]):
        buy = float(hour.loc[~hour.buyer_is_maker, "qty"].sum())
        sell = float(hour.loc[hour.buyer_is_maker, "qty"].sum())
        rows.append({"symbol": symbol, "window_start": start,
                     "vwap": float((hour.price * hour.qty).sum() / hour.qty.sum()), "trade_count": len(hour),
                     "buy_volume": buy, "sell_volume": sell,
                     "trade_imbalance": (buy - sell) / (buy + sell) if buy + sell else np.nan})
    traded = pd.DataFrame(rows).set_index(["symbol", "window_start"])
    merged = hourly.set_index(["symbol", "window_start"]).drop(columns=list(traded.columns)).join(traded, how="outer")
    merged["window_end"] = merged.index.get_level_values("window_start") + pd.Timedelta(hours=1)
    merged["tick_count"] = merged.tick_count.fillna(0).astype(int)
    merged["trade_count"] = merged.trade_count.fillna(0).astype(int)
    merged[["buy_volume", "sell_volume"]] = merged[["buy_volume", "sell_volume"]].fillna(0.0)
    return merged.reset_index()[list(transforms.HOURLY_COLUMNS)]


def assert_hourly_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Compare Spark's hourly rows (naive UTC timestamps) with the pandas reference."""
    got = got.sort_values(["symbol", "window_start"]).reset_index(drop=True)
    assert list(got.columns) == list(transforms.HOURLY_COLUMNS)
    assert len(got) == len(want)
    assert list(got.symbol) == list(want.symbol)
    for column in ("window_start", "window_end"):
        assert list(pd.to_datetime(got[column]).dt.tz_localize("UTC")) == list(want[column])
    assert list(got.tick_count) == list(want.tick_count)
    assert list(got.trade_count) == list(want.trade_count)
    for column in transforms.HOURLY_COLUMNS[3:]:
        if column not in ("tick_count", "trade_count"):
            np.testing.assert_allclose(got[column].astype(float), want[column].astype(float), rtol=1e-9,
                                       atol=1e-12, err_msg=column)


def hourly_frame(hours: int = 6, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> pd.DataFrame:
    """Stored hourly rows from HOURLY_START (across midnight) for several symbols, with distinct values."""
    rows = []
    for s, symbol in enumerate(symbols):
        for h in range(hours):
            start = HOURLY_START + timedelta(hours=h)
            price = 97000.0 + 10 * h if s == 0 else 2700.0 + h
            rows.append({
                "symbol": symbol, "window_start": start, "window_end": start + timedelta(hours=1),
                "avg_price": price, "avg_spread": 0.01 * (h + 1), "avg_spread_bps": 0.01 * (h + 1) / price * 1e4,
                "total_liquidity": 1e6 * (h + 1), "avg_liquidity": 1e4 * (h + 1),
                "realized_volatility": 0.001 * (h + 1) * (s + 1), "high_price": price + 50, "low_price": price - 50,
                "avg_volume_24h": 18000.0 + h, "tick_count": 60 + h, "open_mid": price - 5, "close_mid": price + 5,
                "vwap": price + 1, "trade_count": 100 + h, "buy_volume": 2.0 + h, "sell_volume": 1.0,
                "trade_imbalance": (1.0 + h) / (3.0 + h),
            })
    return pd.DataFrame(rows)
