"""Pure DataFrame -> DataFrame functions of the streaming job: per-tick enrichment, hourly metrics.

Both work the same on static and streaming DataFrames; no source, sink or watermark here
(`btcstream.streaming.job` wires those). Formulas are written where each column is computed.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from btcstream.names import HOURLY_COLUMNS, RAW_DERIVED_COLUMNS, RAW_PARTITION_COLUMNS

HOUR = "1 hour"
RV_GRID_SECONDS = 60  # the default realized-volatility grid (Settings.rv_grid: BTCSTREAM_RV_GRID)
BASIS_POINTS = 10_000.0
PERCENT = 100.0

ENRICHED_COLUMNS = RAW_DERIVED_COLUMNS + RAW_PARTITION_COLUMNS  # what `enrich` adds to a tick


def enrich(ticks: DataFrame) -> DataFrame:
    """Valid ticks plus their derived columns (all in the quote currency unless said otherwise).

    mid_price             = (bid_price + ask_price) / 2
    spread                = ask_price - bid_price
    spread_bps            = spread / mid_price * 10_000          (relative spread, basis points)
    top_of_book_liquidity = bid_price * bid_qty + ask_price * ask_qty   (quoted depth at the best levels)
    spread_percentage     = spread / mid_price * 100             (the relative spread in percent)
    range_24h_percentage  = (high_24h - low_24h) / mid_price * 100 (the 24 h high-low range relative to the mid;
                                                                   a range ratio, not a volatility)
    date, hour            = the UTC date and hour (0-23) of event_time, the raw sink's partition columns
    """
    mid = (F.col("bid_price") + F.col("ask_price")) / 2.0
    spread = F.col("ask_price") - F.col("bid_price")
    return ticks.select(
        "*",
        mid.alias("mid_price"),
        spread.alias("spread"),
        (spread / mid * BASIS_POINTS).alias("spread_bps"),
        (F.col("bid_price") * F.col("bid_qty") + F.col("ask_price") * F.col("ask_qty")).alias("top_of_book_liquidity"),
        (spread / mid * PERCENT).alias("spread_percentage"),
        ((F.col("high_24h") - F.col("low_24h")) / mid * PERCENT).alias("range_24h_percentage"),
        # The session time zone is UTC (btcstream.clients.spark), so these are UTC calendar fields.
        F.to_date("event_time").alias("date"),
        F.hour("event_time").alias("hour"),
    )


def ordered_mids() -> Column:
    """Aggregate: the group's (event_time, update_id, mid_price) as an array sorted by event_time.

    Structs sort field by field: by event_time, then update_id (WebSocket quotes sharing a
    millisecond), then mid_price.
    """
    update_id = F.coalesce(F.col("update_id"), F.lit(0)).alias("update_id")
    return F.array_sort(F.collect_list(F.struct("event_time", update_id, "mid_price")))


def grid_last_mids(mids: Column, grid_seconds: int = RV_GRID_SECONDS) -> Column:
    """From an `ordered_mids` array, the mid of the last element of each `grid_seconds` step (the
    previous-tick sampling `hourly_metrics` uses for realized volatility), in order."""
    def step(moment: Column) -> Column:
        return F.floor(F.unix_micros(moment) / F.lit(grid_seconds * 1_000_000))

    last_of_step = F.filter(mids, lambda x, i: (i == F.size(mids) - 1)
                            | (step(x["event_time"]) != step(F.element_at(mids, i + 2)["event_time"])))
    return F.transform(last_of_step, lambda x: x["mid_price"])


def realized_volatility(mids: Column) -> Column:
    """sqrt(sum_i r_i^2), r_i = ln(mid_i / mid_{i-1}), over an array of mids in event-time order.

    0.0 for fewer than two mids; not annualised.
    """
    later = F.slice(mids, 2, F.size(mids) - 1)  # mid_1 .. mid_n
    earlier = F.slice(mids, 1, F.size(mids) - 1)  # mid_0 .. mid_(n-1)
    squared_log_returns = F.zip_with(later, earlier, lambda now, before: F.pow(F.log(now / before), 2))
    return F.sqrt(F.aggregate(squared_log_returns, F.lit(0.0), lambda total, term: total + term))


def quote_step_partials(enriched: DataFrame, grid_seconds: int = RV_GRID_SECONDS) -> DataFrame:
    """Per (symbol, event-time hour `window`, `grid_seconds` step): what `hourly_metrics` combines.

    n, sum_mid, sum_spread, sum_spread_bps, sum_liquidity (+ n_liquidity non-null), sum_volume_24h
    (+ n_volume_24h), max_mid, min_mid, first_mid / first_at and last_mid / last_at (the mid of the
    step's first and last tick by (event_time, update_id), and that key). Each is a sum, count, min or
    max, so the partials of two sets of ticks merge into those of their union: the job keeps them per
    hour across batches (`btcstream.streaming.hour_partials`) instead of reading the hour back.
    """
    order = F.struct("event_time", F.coalesce(F.col("update_id"), F.lit(0)).alias("update_id"))
    step = F.floor(F.unix_micros("event_time") / F.lit(grid_seconds * 1_000_000)).alias("step")
    return enriched.groupBy("symbol", F.window("event_time", HOUR).alias("window"), step).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("mid_price").alias("sum_mid"),
        F.sum("spread").alias("sum_spread"),
        F.sum("spread_bps").alias("sum_spread_bps"),
        F.sum("top_of_book_liquidity").alias("sum_liquidity"),
        F.count("top_of_book_liquidity").alias("n_liquidity"),
        F.sum("volume_24h").alias("sum_volume_24h"),
        F.count("volume_24h").alias("n_volume_24h"),
        F.max("mid_price").alias("max_mid"),
        F.min("mid_price").alias("min_mid"),
        F.min_by("mid_price", order).alias("first_mid"),
        F.min(order).alias("first_at"),
        F.max_by("mid_price", order).alias("last_mid"),
        F.max(order).alias("last_at"),
    )


def trade_hour_partials(trades: DataFrame) -> DataFrame:
    """Per (symbol, trade-time hour `window`): trade_count, sum_notional (sum of price * qty), sum_qty,
    buy_volume, sell_volume: the sums `hourly_trade_metrics` divides (mergeable like the quote steps)."""
    buy = F.when(~F.col("buyer_is_maker"), F.col("qty")).otherwise(F.lit(0.0))
    sell = F.when(F.col("buyer_is_maker"), F.col("qty")).otherwise(F.lit(0.0))
    return trades.groupBy("symbol", F.window("trade_time", HOUR).alias("window")).agg(
        F.count(F.lit(1)).alias("trade_count"),
        F.sum(F.col("price") * F.col("qty")).alias("sum_notional"),
        F.sum("qty").alias("sum_qty"),
        F.sum(buy).alias("buy_volume"),
        F.sum(sell).alias("sell_volume"),
    )


def hourly_metrics(enriched: DataFrame, grid_seconds: int = RV_GRID_SECONDS) -> DataFrame:
    """One row per (symbol, event-time hour [window_start, window_end)) of enriched ticks.

    avg_price, high_price, low_price, open_mid, close_mid: mean, max, min, first and last (by event_time,
        then update_id) mid_price.
    avg_spread, avg_spread_bps, avg_liquidity, avg_volume_24h: means of spread, spread_bps,
        top_of_book_liquidity, volume_24h (nulls left out); total_liquidity: sum of top_of_book_liquidity.
    realized_volatility = sqrt(sum_k r_k^2), r_k = ln(m_k / m_(k-1)), where m_k is the last mid of the
        k-th `grid_seconds` step of the hour holding a tick (previous-tick sampling on a regular grid;
        steps without a tick repeat the previous mid, a zero return, so they are left out). 0.0 for an
        hour with ticks in a single step; not annualised. Sampling on a grid (BTCSTREAM_RV_GRID, 1
        minute by default) is the standard guard against bid-ask bounce at high tick rates: quotes a
        few ms apart would otherwise add microstructure noise, not volatility. With one tick a minute
        (the REST feed) each step holds one tick and this is the tick-to-tick value.

    Computed in two steps so that the state per symbol-hour stays bounded whatever the tick rate:
    per grid step, partial sums and the step's first/last mid; per hour, those combined and the
    hour's at most 3600 / grid_seconds (60) last-mids sorted into the returns.
    """
    steps = quote_step_partials(enriched, grid_seconds)
    hours = steps.groupBy("symbol", "window").agg(
        F.sum("n").alias("tick_count"),
        (F.sum("sum_mid") / F.sum("n")).alias("avg_price"),
        (F.sum("sum_spread") / F.sum("n")).alias("avg_spread"),
        (F.sum("sum_spread_bps") / F.sum("n")).alias("avg_spread_bps"),
        F.sum("sum_liquidity").alias("total_liquidity"),
        F.try_divide(F.sum("sum_liquidity"), F.sum("n_liquidity")).alias("avg_liquidity"),
        F.try_divide(F.sum("sum_volume_24h"), F.sum("n_volume_24h")).alias("avg_volume_24h"),
        F.max("max_mid").alias("high_price"),
        F.min("min_mid").alias("low_price"),
        F.min_by("first_mid", "first_at").alias("open_mid"),
        F.max_by("last_mid", "last_at").alias("close_mid"),
        F.array_sort(F.collect_list(F.struct("step", "last_mid"))).alias("grid"),
    )
    return hours.select(
        "symbol",
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
        "avg_price", "avg_spread", "avg_spread_bps", "total_liquidity", "avg_liquidity",
        realized_volatility(F.col("grid.last_mid")).alias("realized_volatility"),
        "high_price", "low_price", "avg_volume_24h", "tick_count", "open_mid", "close_mid",
    )


def hourly_trade_metrics(trades: DataFrame) -> DataFrame:
    """One row per (symbol, trade-time hour) of aggregate trades (`btcstream.ingest.trade`).

    vwap            = sum(price * qty) / sum(qty)       (volume-weighted average price)
    trade_count     = number of aggregate trades
    buy_volume      = sum(qty) of trades whose buyer was the taker (buyer_is_maker false)
    sell_volume     = sum(qty) of trades whose seller was the taker (buyer_is_maker true: a sell hit the bid)
    trade_imbalance = (buy_volume - sell_volume) / (buy_volume + sell_volume), in [-1, 1]
    """
    grouped = trade_hour_partials(trades).select(
        "symbol", "window", F.try_divide(F.col("sum_notional"), F.col("sum_qty")).alias("vwap"), "trade_count",
        "buy_volume", "sell_volume")
    return grouped.select(
        "symbol", F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
        "vwap", "trade_count", "buy_volume", "sell_volume",
        F.try_divide(F.col("buy_volume") - F.col("sell_volume"),
                     F.col("buy_volume") + F.col("sell_volume")).alias("trade_imbalance"),
    )


def hourly_rows(enriched: DataFrame, trades: DataFrame | None, grid_seconds: int = RV_GRID_SECONDS) -> DataFrame:
    """The hourly_metrics columns (`HOURLY_COLUMNS`): quote metrics beside trade metrics, per (symbol, hour).

    An hour with quotes but no trades has trade_count 0, buy/sell volume 0.0 and null vwap and
    imbalance; an hour with trades but no quotes has tick_count 0 and null quote metrics.
    """
    quotes = hourly_metrics(enriched, grid_seconds)
    if trades is None:
        trades = trades_like(enriched)
    traded = hourly_trade_metrics(trades)
    joined = quotes.join(traded, ["symbol", "window_start", "window_end"], "full_outer")
    return joined.select(*[
        F.coalesce(F.col(name), F.lit(0)).alias(name) if name in ("tick_count", "trade_count")
        else F.coalesce(F.col(name), F.lit(0.0)).alias(name) if name in ("buy_volume", "sell_volume")
        else F.col(name)
        for name in HOURLY_COLUMNS
    ])


def trades_like(frame: DataFrame) -> DataFrame:
    """An empty frame with the trade columns `hourly_trade_metrics` reads (hours without a trades table)."""
    return frame.sparkSession.createDataFrame(
        [], "symbol string, price double, qty double, trade_time timestamp, buyer_is_maker boolean")
