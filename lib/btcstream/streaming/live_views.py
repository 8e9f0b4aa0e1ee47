"""Extra streaming queries that a notebook attaches to the tick topic: windowed spread and volatility.

They read the same Kafka topic as the streaming job (so they see the running stream without
touching the job's queries), reuse its parsing and enrichment, and keep their result in a Spark
memory sink (a temporary table named after the query) that the notebook reads while it updates.
Not for: anything stored; the job's own outputs are in `btcstream.streaming.job`.
"""

from __future__ import annotations

import logging

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from btcstream.settings import Settings
from btcstream.storage.readers import normalise_frame
from btcstream.streaming.transforms import RV_GRID_SECONDS, grid_last_mids, ordered_mids, realized_volatility

log = logging.getLogger(__name__)

WINDOW_VIEW = "spread_volatility_by_window"
WINDOW_COLUMNS = ("symbol", "window_start", "window_end", "avg_price", "avg_spread", "avg_spread_bps",
                  "realized_volatility", "tick_count")


def window_metrics(enriched: DataFrame, duration: str, grid_seconds: int = RV_GRID_SECONDS) -> DataFrame:
    """Per symbol and event-time window of `duration`: mean mid, mean spread (abs, bps), realized volatility.

    realized_volatility = sqrt(sum_k ln(m_k / m_(k-1))^2), m_k the last mid of the k-th `grid_seconds`
    step holding a tick in the window (in event-time order): the formula of
    `btcstream.streaming.transforms.hourly_metrics`, on any window length (tests check both agree on
    one hour). One streaming aggregation keeps the window's sorted mids; the grid is sampled from them.
    """
    grouped = enriched.groupBy("symbol", F.window("event_time", duration).alias("window")).agg(
        F.avg("mid_price").alias("avg_price"),
        F.avg("spread").alias("avg_spread"),
        F.avg("spread_bps").alias("avg_spread_bps"),
        F.count(F.lit(1)).alias("tick_count"),
        ordered_mids().alias("mids"),
    )
    return grouped.select(
        "symbol", F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
        "avg_price", "avg_spread", "avg_spread_bps",
        realized_volatility(grid_last_mids(F.col("mids"), grid_seconds)).alias("realized_volatility"),
        "tick_count",
    )


def start_window_view(spark: SparkSession, settings: Settings, duration: str = "15 minutes",
                      starting_offsets: str = "earliest", name: str = WINDOW_VIEW,
                      trigger_interval_s: float = 2.0) -> StreamingQuery:
    """Start (or restart) the windowed spread/volatility query into the memory table `name`.

    Complete output mode: every trigger rewrites the table with every window so far, so a window
    still filling up is visible as it changes (fine for a notebook session; state grows with it).
    """
    from btcstream.streaming import parse, transforms
    from btcstream.streaming.job import stop_query

    stop_query(spark, name)
    ticks, _ = parse.split(_kafka(spark, settings, starting_offsets))
    view = window_metrics(transforms.enrich(ticks), duration, int(settings.rv_grid_span.total_seconds()))
    query = (view.writeStream.format("memory").queryName(name).outputMode("complete")
             .trigger(processingTime=f"{trigger_interval_s} seconds").start())
    log.info("started %s (%s windows, from %s offsets of %s)", name, duration, starting_offsets, settings.topic)
    return query


def view_frame(spark: SparkSession, name: str = WINDOW_VIEW) -> pd.DataFrame:
    """The memory table as pandas: UTC timestamps, sorted by symbol and window."""
    frame = normalise_frame(spark.table(name).toPandas())
    if frame.empty:
        return pd.DataFrame(columns=list(WINDOW_COLUMNS))
    return frame.sort_values(["symbol", "window_start"]).reset_index(drop=True)


def _kafka(spark: SparkSession, settings: Settings, starting_offsets: str) -> DataFrame:
    """The tick topic, as the job reads it but from `starting_offsets` and without a checkpoint."""
    from btcstream.clients.kafka import spark_kafka_options

    return (spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .options(**{key: str(value) for key, value in spark_kafka_options(settings).items()})
            .option("subscribe", settings.topic)
            .option("startingOffsets", starting_offsets)
            .option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
            .option("failOnDataLoss", "false")
            .load())
