"""The hours the job is filling, kept as mergeable partial aggregates across micro-batches.

Recomputing a touched hour from raw_data every batch (what `hourly_upserts` did alone) reads the
whole hour back each time: at 200 ticks/s a late-hour batch re-read hundreds of thousands of rows to
add a few thousand. Instead the job keeps, per (symbol, hour), the partials `hourly_metrics` combines
(`transforms.quote_step_partials`: per grid step sums, counts, min/max, first/last mid;
`transforms.trade_hour_partials`: the trade sums), adds the partials of each batch's *inserted* rows
(`DeltaBatchWriter` computes them from the rows it appended, so a duplicate or a replayed batch adds
nothing) and combines them here into the hourly row (the formulas of `transforms.hourly_metrics` and
`hourly_trade_metrics`, in Python).

An hour not held yet (the first batch after a start, a new hour, a late tick for an hour forgotten)
is loaded from the tables after the batch's write, in one Spark job per table, and the batch's own
partials are then not added again. Sums merge in another order than Spark's single recomputation,
so values agree with `transforms.hourly_rows` to rounding (about 1e-15 relative), counts exactly.
Not for: anything but the job's one query (it must be the tables' only writer while it runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable

from btcstream.names import HOURLY_COLUMNS
from btcstream.streaming import transforms
from btcstream.streaming.delta_batches import utc

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

HourKey = tuple[str, datetime]  # (symbol, hour start, UTC)
HOUR = timedelta(hours=1)


def _add(a: float | None, b: float | None) -> float | None:
    """Spark's sum of nullable values: null only when both are."""
    return b if a is None else a if b is None else a + b


@dataclass(frozen=True)
class QuoteStep:
    """The quotes of one grid step (`transforms.quote_step_partials`)."""

    n: int
    sum_mid: float
    sum_spread: float
    sum_spread_bps: float
    sum_liquidity: float | None
    n_liquidity: int
    sum_volume_24h: float | None
    n_volume_24h: int
    max_mid: float
    min_mid: float
    first_at: tuple[datetime, int]  # (event_time, update_id or 0) of the step's first tick
    first_mid: float
    last_at: tuple[datetime, int]
    last_mid: float

    def merged(self, other: "QuoteStep") -> "QuoteStep":
        first = self if self.first_at <= other.first_at else other
        last = self if self.last_at >= other.last_at else other
        return QuoteStep(
            n=self.n + other.n, sum_mid=self.sum_mid + other.sum_mid, sum_spread=self.sum_spread + other.sum_spread,
            sum_spread_bps=self.sum_spread_bps + other.sum_spread_bps,
            sum_liquidity=_add(self.sum_liquidity, other.sum_liquidity), n_liquidity=self.n_liquidity + other.n_liquidity,
            sum_volume_24h=_add(self.sum_volume_24h, other.sum_volume_24h),
            n_volume_24h=self.n_volume_24h + other.n_volume_24h,
            max_mid=max(self.max_mid, other.max_mid), min_mid=min(self.min_mid, other.min_mid),
            first_at=first.first_at, first_mid=first.first_mid, last_at=last.last_at, last_mid=last.last_mid)


@dataclass(frozen=True)
class TradeTotals:
    """The trades of one hour (`transforms.trade_hour_partials`)."""

    trade_count: int = 0
    sum_notional: float | None = None
    sum_qty: float | None = None
    buy_volume: float = 0.0
    sell_volume: float = 0.0

    def merged(self, other: "TradeTotals") -> "TradeTotals":
        return TradeTotals(self.trade_count + other.trade_count, _add(self.sum_notional, other.sum_notional),
                           _add(self.sum_qty, other.sum_qty), self.buy_volume + other.buy_volume,
                           self.sell_volume + other.sell_volume)


@dataclass
class HourPartials:
    """One (symbol, hour): its quote steps by step number and its trade totals."""

    steps: dict[int, QuoteStep] = field(default_factory=dict)
    trades: TradeTotals = field(default_factory=TradeTotals)

    def add_step(self, step: int, partial: QuoteStep) -> None:
        self.steps[step] = self.steps[step].merged(partial) if step in self.steps else partial

    def row(self, symbol: str, start: datetime) -> dict[str, Any]:
        """The hourly_metrics columns (`HOURLY_COLUMNS`) of this hour, as `transforms.hourly_rows` gives them.

        Quote metrics (null when the hour has no quote): avg_* = sum / n; total_liquidity = sum;
        avg_liquidity and avg_volume_24h over their non-null values; high/low = max/min mid;
        open_mid/close_mid = the first/last mid by (event_time, update_id); realized_volatility =
        sqrt(sum_k ln(m_k / m_(k-1))^2) over the steps' last mids in step order (0.0 below two steps).
        Trade metrics: vwap = sum(price * qty) / sum(qty); imbalance = (buy - sell) / (buy + sell);
        trade_count 0 and volumes 0.0 without trades (vwap, imbalance null).
        """
        steps = [self.steps[k] for k in sorted(self.steps)]
        n = sum(s.n for s in steps)
        quotes: dict[str, Any] = dict.fromkeys(("avg_price", "avg_spread", "avg_spread_bps", "total_liquidity",
                                                "avg_liquidity", "realized_volatility", "high_price", "low_price",
                                                "avg_volume_24h", "open_mid", "close_mid"))
        if n:
            liquidity = _sum_of(s.sum_liquidity for s in steps)
            n_liquidity = sum(s.n_liquidity for s in steps)
            volume = _sum_of(s.sum_volume_24h for s in steps)
            n_volume = sum(s.n_volume_24h for s in steps)
            mids = [s.last_mid for s in steps]
            quotes.update(
                avg_price=sum(s.sum_mid for s in steps) / n, avg_spread=sum(s.sum_spread for s in steps) / n,
                avg_spread_bps=sum(s.sum_spread_bps for s in steps) / n, total_liquidity=liquidity,
                avg_liquidity=liquidity / n_liquidity if liquidity is not None and n_liquidity else None,
                realized_volatility=math.sqrt(sum(math.log(b / a) ** 2 for a, b in zip(mids, mids[1:]))),
                high_price=max(s.max_mid for s in steps), low_price=min(s.min_mid for s in steps),
                avg_volume_24h=volume / n_volume if volume is not None and n_volume else None,
                open_mid=min(steps, key=lambda s: s.first_at).first_mid,
                close_mid=max(steps, key=lambda s: s.last_at).last_mid)
        t = self.trades
        total = t.buy_volume + t.sell_volume
        row = {"symbol": symbol, "window_start": start, "window_end": start + HOUR, **quotes, "tick_count": n,
               "vwap": t.sum_notional / t.sum_qty if t.sum_notional is not None and t.sum_qty else None,
               "trade_count": t.trade_count, "buy_volume": t.buy_volume, "sell_volume": t.sell_volume,
               "trade_imbalance": (t.buy_volume - t.sell_volume) / total if total else None}
        return {name: row[name] for name in HOURLY_COLUMNS}


def _sum_of(values: Iterable[float | None]) -> float | None:
    total: float | None = None
    for value in values:
        total = _add(total, value)
    return total


def quote_step(row: Any) -> tuple[HourKey, int, QuoteStep]:
    """A collected row of `transforms.quote_step_partials` as (hour key, step, partial)."""
    first, last = row["first_at"], row["last_at"]
    return ((row["symbol"], utc(row["window"]["start"])), int(row["step"]), QuoteStep(
        n=int(row["n"]), sum_mid=float(row["sum_mid"]), sum_spread=float(row["sum_spread"]),
        sum_spread_bps=float(row["sum_spread_bps"]),
        sum_liquidity=None if row["sum_liquidity"] is None else float(row["sum_liquidity"]),
        n_liquidity=int(row["n_liquidity"]),
        sum_volume_24h=None if row["sum_volume_24h"] is None else float(row["sum_volume_24h"]),
        n_volume_24h=int(row["n_volume_24h"]), max_mid=float(row["max_mid"]), min_mid=float(row["min_mid"]),
        first_at=(utc(first["event_time"]), int(first["update_id"])), first_mid=float(row["first_mid"]),
        last_at=(utc(last["event_time"]), int(last["update_id"])), last_mid=float(row["last_mid"])))


def trade_totals(row: Any) -> tuple[HourKey, TradeTotals]:
    """A collected row of `transforms.trade_hour_partials` as (hour key, totals)."""
    return ((row["symbol"], utc(row["window"]["start"])), TradeTotals(
        int(row["trade_count"]), None if row["sum_notional"] is None else float(row["sum_notional"]),
        None if row["sum_qty"] is None else float(row["sum_qty"]), float(row["buy_volume"] or 0.0),
        float(row["sell_volume"] or 0.0)))


@dataclass(frozen=True)
class BatchPartials:
    """The partials of the rows one batch inserted (quotes per step, trades per hour)."""

    quote_steps: tuple[tuple[HourKey, int, QuoteStep], ...] = ()
    trades: tuple[tuple[HourKey, TradeTotals], ...] = ()

    @property
    def quote_count(self) -> int:
        return sum(step.n for _, _, step in self.quote_steps)

    @property
    def trade_count(self) -> int:
        return sum(totals.trade_count for _, totals in self.trades)


class HourlyPartials:
    """The job's hours in progress (and recent ones), keyed by (symbol, hour start)."""

    def __init__(self, grid_seconds: int = transforms.RV_GRID_SECONDS) -> None:
        self.grid_seconds = grid_seconds
        self.hours: dict[HourKey, HourPartials] = {}

    def update(self, spark: SparkSession, raw_url: str, trades_url: str | None, keys: Iterable[HourKey],
               batch: BatchPartials) -> None:
        """After a batch's write: load the hours of `keys` not held (from the tables, which hold the
        batch's rows now), add the batch's partials to the others."""
        keys = sorted(set(keys))
        missing = [key for key in keys if key not in self.hours]
        for key, step, partial in batch.quote_steps:
            if key in self.hours:
                self.hours[key].add_step(step, partial)
        for key, totals in batch.trades:
            if key in self.hours:
                hour = self.hours[key]
                hour.trades = hour.trades.merged(totals)
        if missing:
            self._load(spark, raw_url, trades_url, missing)

    def drop(self, keys: Iterable[HourKey]) -> None:
        """Forget these hours (the next `update` loads them from the tables)."""
        for key in keys:
            self.hours.pop(key, None)

    def rows(self, keys: Iterable[HourKey]) -> list[dict[str, Any]]:
        """The hourly rows of `keys` (every key must be held: `update` first)."""
        return [self.hours[key].row(*key) for key in sorted(set(keys))]

    def forget_before(self, moment: datetime) -> None:
        """Drop hours that ended before `moment` (a late tick for one loads it again from the tables)."""
        for key in [key for key in self.hours if key[1] + HOUR < moment]:
            del self.hours[key]

    def _load(self, spark: SparkSession, raw_url: str, trades_url: str | None, keys: list[HourKey]) -> None:
        """The partials of `keys` from raw_data and trades (one Spark job each, pruned to their partitions)."""
        from delta.tables import DeltaTable

        from btcstream.streaming.hourly_upserts import touched_rows

        for key in keys:
            self.hours[key] = HourPartials()
        raw = touched_rows(spark.read.format("delta").load(raw_url), keys, "event_time")
        for key, step, partial in map(quote_step, transforms.quote_step_partials(raw, self.grid_seconds).collect()):
            self.hours[key].add_step(step, partial)
        if trades_url is not None and DeltaTable.isDeltaTable(spark, trades_url):
            trades = touched_rows(spark.read.format("delta").load(trades_url), keys, "trade_time")
            for key, totals in map(trade_totals, transforms.trade_hour_partials(trades).collect()):
                self.hours[key].trades = self.hours[key].trades.merged(totals)


def quote_steps_of(quotes: DataFrame, grid_seconds: int = transforms.RV_GRID_SECONDS
                   ) -> tuple[tuple[HourKey, int, QuoteStep], ...]:
    """The step partials of enriched quotes, collected (small: one row per symbol and step)."""
    return tuple(map(quote_step, transforms.quote_step_partials(quotes, grid_seconds).collect()))


def trade_totals_of(trades: DataFrame) -> tuple[tuple[HourKey, TradeTotals], ...]:
    """The hour totals of trades, collected (one row per symbol and hour)."""
    return tuple(map(trade_totals, transforms.trade_hour_partials(trades).collect()))
