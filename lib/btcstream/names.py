"""The names every stage agrees on: datasets, queries, checkpoint folders, table columns, sources.

One home for each name, so the job that writes a dataset, the readers, `status`, compaction and
the CLI cannot drift apart. Plain constants only: importing this module costs nothing (no pyspark,
no pandas), so the command line and the JVM-free readers use it freely.

Storage layout under the storage root (`Settings.storage_root`), every dataset a Delta Lake table
(Parquet files plus the `_delta_log` transaction log):

    <root>/raw_data        enriched ticks, partitioned by date=YYYY-MM-DD/hour=H of event_time
    <root>/hourly_metrics  one row per symbol and event-time hour (live, then final), partitioned by date of window_start
    <root>/quarantine      records the job refused: raw bytes, a readable preview, the reason; partitioned by date
    <root>/trades          aggregate trades, one row per (symbol, trade_id), partitioned by date/hour of trade_time
    <root>/klines          Binance klines from `btcstream backfill`, partitioned by interval and date of open_time
    <root>/forecasts       the job's next-hour volatility forecast per symbol and model, realized value beside it
    <root>/alerts          robust z-score alerts on spread, 1-minute volatility and trade imbalance, partitioned by date
    <root>/checkpoints/<folder>   the Spark checkpoint of the job's query, plus progress/<query>.json
"""

from __future__ import annotations

# Datasets (folders under the storage root).
RAW_DATASET = "raw_data"
HOURLY_DATASET = "hourly_metrics"
QUARANTINE_DATASET = "quarantine"
TRADES_DATASET = "trades"  # aggregate trades (btcstream.ingest.trade), partitioned by date/hour of trade_time
KLINES_DATASET = "klines"  # Binance klines written by `btcstream backfill`, partitioned by interval and date
FORECASTS_DATASET = "forecasts"  # live next-hour forecasts (btcstream.streaming.forecasts)
ALERTS_DATASET = "alerts"  # market alerts (btcstream.streaming.alerts), partitioned by date of time
DATASETS: tuple[str, ...] = (RAW_DATASET, HOURLY_DATASET, QUARANTINE_DATASET, TRADES_DATASET, KLINES_DATASET,
                             FORECASTS_DATASET, ALERTS_DATASET)
CHECKPOINTS_DIR = "checkpoints"
PROGRESS_DIR = "progress"  # under CHECKPOINTS_DIR: the queries' persisted progress documents

# The column each dataset is read and sorted by in time (quarantine rows by their Kafka timestamp).
TIME_COLUMNS = {RAW_DATASET: "event_time", HOURLY_DATASET: "window_start", QUARANTINE_DATASET: "kafka_timestamp",
                TRADES_DATASET: "trade_time", KLINES_DATASET: "open_time", FORECASTS_DATASET: "for_hour",
                ALERTS_DATASET: "time"}

# The streaming job's one query (it reads the topic once and writes every table) and its checkpoint folder.
INGEST_QUERY = "btcstream_ingest"
QUERY_NAMES: tuple[str, ...] = (INGEST_QUERY,)
CHECKPOINT_FOLDERS = {INGEST_QUERY: "ingest"}
KAFKA_QUERIES = frozenset({INGEST_QUERY})  # the queries that read the topic
# Under CHECKPOINTS_DIR, written by `btcstream migrate`: {"topic": ..., "offsets": {partition: offset}},
# where a new ingest checkpoint starts reading (the old job's committed offsets) instead of "earliest".
INGEST_START_OFFSETS_FILE = "ingest-start-offsets.json"

# The transaction log that makes a folder a Delta table, and the log of the file-sink layout that
# came before it (a storage root holding the latter is migrated with `btcstream migrate`).
DELTA_LOG_DIR = "_delta_log"
LEGACY_SINK_LOG_DIR = "_spark_metadata"
LEGACY_DIR = "legacy"  # <root>/legacy/<stamp>/: what `btcstream migrate` moved aside

# raw_data columns: the tick record's fields (`btcstream.ingest.tick.FIELD_NAMES`, the one place
# that spells them, in the Kafka JSON's order), then these derived columns, then the partitions.
RAW_DERIVED_COLUMNS: tuple[str, ...] = (
    "mid_price", "spread", "spread_bps", "top_of_book_liquidity", "spread_percentage", "range_24h_percentage",
)
RAW_PARTITION_COLUMNS: tuple[str, ...] = ("date", "hour")  # UTC date and hour (0-23) of event_time
HOURLY_PARTITION_COLUMNS: tuple[str, ...] = ("date",)  # UTC date of window_start
QUARANTINE_PARTITION_COLUMNS: tuple[str, ...] = ("date",)  # UTC date of the Kafka timestamp
TRADES_PARTITION_COLUMNS: tuple[str, ...] = ("date", "hour")  # UTC date and hour (0-23) of trade_time

# hourly_metrics columns, in the order `btcstream.streaming.transforms.hourly_rows` computes them
# (the table adds HOURLY_PARTITION_COLUMNS).
HOURLY_COLUMNS: tuple[str, ...] = (
    "symbol", "window_start", "window_end", "avg_price", "avg_spread", "avg_spread_bps",
    "total_liquidity", "avg_liquidity", "realized_volatility", "high_price", "low_price",
    "avg_volume_24h", "tick_count", "open_mid", "close_mid",
    "vwap", "trade_count", "buy_volume", "sell_volume", "trade_imbalance",
)
# The Delta hourly table's row lifecycle (btcstream.streaming.hourly_upserts): live, then final, then revised.
HOURLY_LIFECYCLE_COLUMNS: tuple[str, ...] = ("is_final", "revision", "updated_at")

# quarantine columns (btcstream.streaming.parse.quarantined; the table adds QUARANTINE_PARTITION_COLUMNS):
# the record's bytes as received (binary: any bytes at all), a UTF-8 preview with invalid bytes replaced.
QUARANTINE_COLUMNS: tuple[str, ...] = (
    "value", "value_preview", "reason", "topic", "partition", "offset", "kafka_timestamp", "detected_at",
)
QUARANTINE_PREVIEW_CHARS = 200

# The volatility models (btcstream.analytics.forecasters), by name: `btcstream forecast evaluate`
# and the job's live forecasts (Settings.forecast_models).
FORECAST_MODELS: tuple[str, ...] = ("ewma", "har_rv", "garch11", "gradient_boosting")

# forecasts columns (one row per symbol, model and forecast hour; times UTC):
#   made_at   when the job made the forecast (processing time), from the final hours before for_hour only
#   for_hour  the start of the hour forecast
#   value     the forecast realized volatility of that hour (sqrt of the model's variance forecast),
#             in the units of hourly_metrics.realized_volatility
#   realized  that hour's realized_volatility once the hour is final (null before; follows revisions)
#   updated_at when the row was last written
FORECASTS_COLUMNS: tuple[str, ...] = ("symbol", "model", "made_at", "for_hour", "value", "realized", "updated_at")

# alerts columns (one row per symbol, metric and 1-minute bar whose robust z-score crossed the threshold):
#   time      the start of the 1-minute bar (UTC event time)
#   metric    one of ALERT_METRICS
#   value     the bar's value of the metric; baseline the median over the trailing window;
#   mad       the median absolute deviation there; z = (value - baseline) / (1.4826 * mad)
#   detected_at when the job raised it (processing time)
ALERT_METRICS: tuple[str, ...] = ("spread_bps", "volatility_1m", "trade_imbalance")
ALERTS_COLUMNS: tuple[str, ...] = ("symbol", "time", "metric", "value", "baseline", "mad", "z", "detected_at")
ALERTS_PARTITION_COLUMNS: tuple[str, ...] = ("date",)  # UTC date of time

# Where the market data comes from: the real exchanges, or the local exchange replaying history.
SOURCES: tuple[str, ...] = ("live", "replay")
