"""Pure DataFrame -> DataFrame functions of the streaming job: per-tick enrichment, hourly metrics.

Both work the same on static and streaming DataFrames; no source, sink or watermark here
(`btcstream.streaming.job` wires those). Formulas are written where each column is computed.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from btcstream.names import HOURLY_COLUMNS, RAW_DERIVED_COLUMNS, RAW_PARTITION_COLUMNS

HOUR = "1 hour"
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
    """Aggregate: the group's (event_time, mid_price) pairs as an array sorted by event_time.

    Structs sort field by field: by event_time, then mid_price (ties only without dedup).
    """
    return F.array_sort(F.collect_list(F.struct("event_time", "mid_price")))


def realized_volatility(mids: Column) -> Column:
    """sqrt(sum_i r_i^2), r_i = ln(mid_i / mid_{i-1}), over an array of mids in event-time order.

    0.0 for fewer than two mids; not annualised.
    """
    later = F.slice(mids, 2, F.size(mids) - 1)  # mid_1 .. mid_n
    earlier = F.slice(mids, 1, F.size(mids) - 1)  # mid_0 .. mid_(n-1)
    squared_log_returns = F.zip_with(later, earlier, lambda now, before: F.pow(F.log(now / before), 2))
    return F.sqrt(F.aggregate(squared_log_returns, F.lit(0.0), lambda total, term: total + term))


def hourly_metrics(enriched: DataFrame) -> DataFrame:
    """One row per (symbol, event-time hour [window_start, window_end)) of enriched ticks.

    avg_price, high_price, low_price, open_mid, close_mid: mean, max, min, first and last (by event_time) mid_price.
    avg_spread, avg_spread_bps, avg_liquidity, avg_volume_24h: means of spread, spread_bps,
        top_of_book_liquidity, volume_24h; total_liquidity: sum of top_of_book_liquidity.
    realized_volatility = sqrt(sum_i r_i^2), r_i = ln(mid_i / mid_{i-1}) over consecutive ticks of the
        symbol within the hour ordered by event_time (0.0 for an hour with a single tick; not annualised).

    Why an array: a streaming append aggregation cannot use lag() over a window, and ticks arrive out
    of order, so the hour's (event_time, mid) pairs are kept in the aggregation state, sorted once
    when the hour closes, and the returns are computed from the sorted array. A tick a minute keeps
    60 pairs per hour in state; a tick a second 3,600.
    """
    grouped = enriched.groupBy("symbol", F.window("event_time", HOUR).alias("window")).agg(
        F.avg("mid_price").alias("avg_price"),
        F.avg("spread").alias("avg_spread"),
        F.avg("spread_bps").alias("avg_spread_bps"),
        F.sum("top_of_book_liquidity").alias("total_liquidity"),
        F.avg("top_of_book_liquidity").alias("avg_liquidity"),
        F.max("mid_price").alias("high_price"),
        F.min("mid_price").alias("low_price"),
        F.avg("volume_24h").alias("avg_volume_24h"),
        F.count(F.lit(1)).alias("tick_count"),
        ordered_mids().alias("mids"),
    )
    mids = F.col("mids.mid_price")
    return grouped.select(
        "symbol",
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
        "avg_price", "avg_spread", "avg_spread_bps", "total_liquidity", "avg_liquidity",
        realized_volatility(mids).alias("realized_volatility"),
        "high_price", "low_price", "avg_volume_24h", "tick_count",
        F.element_at(mids, 1).alias("open_mid"),
        F.element_at(mids, -1).alias("close_mid"),
    )
