"""The names every stage agrees on: datasets, queries, checkpoint folders, table columns, sources.

One home for each name, so the job that writes a dataset, the readers, `status`, compaction and
the CLI cannot drift apart. Plain constants only: importing this module costs nothing (no pyspark,
no pandas), so the command line and the JVM-free readers use it freely.

Storage layout under the storage root (`Settings.storage_root`):

    <root>/raw_data        enriched ticks, partitioned by date=YYYY-MM-DD/hour=H of event_time
    <root>/hourly_metrics  one row per symbol and event-time hour, partitioned by date of window_start
    <root>/quarantine      records the job refused, with the reason, partitioned by date
    <root>/checkpoints/<folder>   one Spark checkpoint per query, plus progress/<query>.json
"""

from __future__ import annotations

# Datasets (folders under the storage root).
RAW_DATASET = "raw_data"
HOURLY_DATASET = "hourly_metrics"
QUARANTINE_DATASET = "quarantine"
DATASETS: tuple[str, ...] = (RAW_DATASET, HOURLY_DATASET, QUARANTINE_DATASET)
CHECKPOINTS_DIR = "checkpoints"
PROGRESS_DIR = "progress"  # under CHECKPOINTS_DIR: the queries' persisted progress documents

# The column each dataset is read and sorted by in time (quarantine rows by their Kafka timestamp).
TIME_COLUMNS = {RAW_DATASET: "event_time", HOURLY_DATASET: "window_start", QUARANTINE_DATASET: "kafka_timestamp"}

# Streaming queries and their checkpoint folders under <root>/checkpoints.
QUARANTINE_QUERY = "btcstream_quarantine"
RAW_QUERY = "btcstream_raw"
HOURLY_QUERY = "btcstream_hourly"
QUERY_NAMES: tuple[str, ...] = (QUARANTINE_QUERY, RAW_QUERY, HOURLY_QUERY)
CHECKPOINT_FOLDERS = {QUARANTINE_QUERY: "quarantine", RAW_QUERY: "raw", HOURLY_QUERY: "hourly"}
KAFKA_QUERIES = frozenset({QUARANTINE_QUERY, RAW_QUERY})  # the queries that read the topic (the others read raw_data)

# raw_data columns: the tick record's fields (`btcstream.ingest.tick.FIELD_NAMES`, the one place
# that spells them, in the Kafka JSON's order), then these derived columns, then the partitions.
RAW_DERIVED_COLUMNS: tuple[str, ...] = (
    "mid_price", "spread", "spread_bps", "top_of_book_liquidity", "spread_percentage", "range_24h_percentage",
)
RAW_PARTITION_COLUMNS: tuple[str, ...] = ("date", "hour")  # UTC date and hour (0-23) of event_time
HOURLY_PARTITION_COLUMNS: tuple[str, ...] = ("date",)  # UTC date of window_start
QUARANTINE_PARTITION_COLUMNS: tuple[str, ...] = ("date",)  # UTC date of the Kafka timestamp

# hourly_metrics columns, in the order `btcstream.streaming.transforms.hourly_metrics` computes them
# (the table adds HOURLY_PARTITION_COLUMNS).
HOURLY_COLUMNS: tuple[str, ...] = (
    "symbol", "window_start", "window_end", "avg_price", "avg_spread", "avg_spread_bps",
    "total_liquidity", "avg_liquidity", "realized_volatility", "high_price", "low_price",
    "avg_volume_24h", "tick_count", "open_mid", "close_mid",
)
# The Delta hourly table's row lifecycle (btcstream.streaming.hourly_upserts): live, then final, then revised.
HOURLY_LIFECYCLE_COLUMNS: tuple[str, ...] = ("is_final", "revision", "updated_at")

# Where the market data comes from: the real exchanges, or the local exchange replaying history.
SOURCES: tuple[str, ...] = ("live", "replay")
