"""Delta tables as the streaming job writes them, written without a JVM (`deltalake.write_deltalake`).

Same columns, types and partitions as the job's tables (tests/storage/test_table_columns.py checks
these schemas against the tables Spark writes), for reader, CLI, report and notebook tests.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from btcstream.ingest.tick import FIELD_NAMES, TIME_FIELDS
from btcstream.names import (
    HOURLY_COLUMNS,
    HOURLY_DATASET,
    HOURLY_PARTITION_COLUMNS,
    QUARANTINE_DATASET,
    QUARANTINE_PARTITION_COLUMNS,
    RAW_DATASET,
    RAW_DERIVED_COLUMNS,
    RAW_PARTITION_COLUMNS,
)
from btcstream.settings import Settings

UTC_MICROS = pa.timestamp("us", tz="UTC")  # Spark's TIMESTAMP in Delta


def _tick_type(name: str) -> pa.DataType:
    if name in ("symbol", "feed"):
        return pa.string()
    if name == "update_id":
        return pa.int64()
    if name in TIME_FIELDS:
        return UTC_MICROS
    if name == "schema_version":
        return pa.int32()
    return pa.float64()


RAW_SCHEMA = pa.schema(
    [(name, _tick_type(name)) for name in FIELD_NAMES]
    + [(name, pa.float64()) for name in RAW_DERIVED_COLUMNS]
    + [("date", pa.date32()), ("hour", pa.int32())])
HOURLY_SCHEMA = pa.schema(
    [(name, pa.string() if name == "symbol" else UTC_MICROS if name in ("window_start", "window_end")
      else pa.int64() if name in ("tick_count", "trade_count") else pa.float64()) for name in HOURLY_COLUMNS]
    + [("is_final", pa.bool_()), ("revision", pa.int32()), ("updated_at", UTC_MICROS), ("date", pa.date32())])
QUARANTINE_SCHEMA = pa.schema([
    ("value", pa.binary()), ("value_preview", pa.string()), ("reason", pa.string()), ("topic", pa.string()),
    ("partition", pa.int32()), ("offset", pa.int64()), ("kafka_timestamp", UTC_MICROS), ("detected_at", UTC_MICROS),
    ("date", pa.date32())])
TRADES_SCHEMA = pa.schema([
    ("symbol", pa.string()), ("trade_id", pa.int64()), ("price", pa.float64()), ("qty", pa.float64()),
    ("quote_qty", pa.float64()), ("trade_time", UTC_MICROS), ("buyer_is_maker", pa.bool_()),
    ("first_trade_id", pa.int64()), ("last_trade_id", pa.int64()), ("event_time", UTC_MICROS),
    ("received_at", UTC_MICROS), ("feed", pa.string()), ("schema_version", pa.int32()), ("date", pa.date32()),
    ("hour", pa.int32())])
SCHEMAS = {RAW_DATASET: RAW_SCHEMA, HOURLY_DATASET: HOURLY_SCHEMA, QUARANTINE_DATASET: QUARANTINE_SCHEMA,
           "trades": TRADES_SCHEMA}
PARTITIONS = {RAW_DATASET: RAW_PARTITION_COLUMNS, HOURLY_DATASET: HOURLY_PARTITION_COLUMNS,
              QUARANTINE_DATASET: QUARANTINE_PARTITION_COLUMNS}
TIME_OF = {RAW_DATASET: "event_time", HOURLY_DATASET: "window_start", QUARANTINE_DATASET: "kafka_timestamp"}


def raw_frame(times: Sequence[datetime], symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT")) -> pd.DataFrame:
    """Enriched ticks, one per symbol and time, with every raw_data column (derived ones computed like the job)."""
    rows = []
    for s, symbol in enumerate(symbols):
        base = 97_000.0 if s == 0 else 2_700.0 + 100 * s
        for i, moment in enumerate(times):
            bid, ask = base + i, base + i + 0.5 + 0.1 * s
            rows.append({
                "symbol": symbol, "event_time": moment, "timestamp": moment + timedelta(seconds=1),
                "bid_price": bid, "ask_price": ask, "bid_qty": 1.0 + i, "ask_qty": 2.0 + s,
                "volume_24h": 18_000.0 + i, "quote_volume_24h": 1.7e9, "high_24h": base * 1.02, "low_24h": base * 0.98,
                "price_change_24h": 10.0, "price_change_percentage_24h": 0.01, "trade_timestamp": moment,
                "market_cap": None, "coingecko_total_volume": None, "coingecko_last_updated": None, "schema_version": 1,
                "feed": "rest", "update_id": None, "received_at": None,
            })
    frame = pd.DataFrame(rows, columns=list(FIELD_NAMES))
    mid = (frame.bid_price + frame.ask_price) / 2
    spread = frame.ask_price - frame.bid_price
    frame["mid_price"] = mid
    frame["spread"] = spread
    frame["spread_bps"] = spread / mid * 10_000
    frame["top_of_book_liquidity"] = frame.bid_price * frame.bid_qty + frame.ask_price * frame.ask_qty
    frame["spread_percentage"] = spread / mid * 100
    frame["range_24h_percentage"] = (frame.high_24h - frame.low_24h) / mid * 100
    return frame


def quarantine_frame(values: Sequence[bytes], start: datetime, reason: str = "not a JSON object") -> pd.DataFrame:
    """Refused records, one a second from `start`, as the job stores them (bytes plus a UTF-8 preview)."""
    return pd.DataFrame({
        "value": list(values),
        "value_preview": [value.decode("utf-8", errors="replace")[:200] for value in values],
        "reason": reason, "topic": "ticks", "partition": 0, "offset": range(len(values)),
        "kafka_timestamp": [start + timedelta(seconds=i) for i in range(len(values))],
        "detected_at": [start + timedelta(seconds=i, milliseconds=5) for i in range(len(values))],
    })


def write_table(settings: Settings, dataset: str, frame: pd.DataFrame, *, mode: str = "append") -> int:
    """Append (or overwrite) `frame` to the Delta table of `dataset` as the job would; returns the new version.

    Partition columns are derived from the row's time in UTC, as the job does; hourly rows get the
    lifecycle columns of a final first revision unless `frame` has them.
    """
    from deltalake import DeltaTable, write_deltalake

    url = settings.storage_url(dataset)
    write_deltalake(url, as_table(dataset, frame), partition_by=list(PARTITIONS[dataset]), mode=mode)
    return DeltaTable(url).version()


def as_table(dataset: str, frame: pd.DataFrame) -> pa.Table:
    """`frame` in the exact schema of `dataset`'s table, partition (and hourly lifecycle) columns added."""
    rows = frame.copy()
    times = pd.to_datetime(rows[TIME_OF[dataset]], utc=True)
    rows["date"] = times.dt.date
    if "hour" in PARTITIONS[dataset]:
        rows["hour"] = times.dt.hour
    if dataset == HOURLY_DATASET:
        defaults = {"is_final": True, "revision": 1, "updated_at": datetime.now(timezone.utc)}
        for name, value in defaults.items():
            if name not in rows.columns:
                rows[name] = value
    schema = SCHEMAS[dataset]
    return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)


def write_stray_file(settings: Settings, dataset: str, frame: pd.DataFrame) -> Path:
    """A Parquet file of `frame` in the table's partition folder that no commit names (an aborted write).

    Local storage roots only.
    """
    table = as_table(dataset, frame)
    partitions = PARTITIONS[dataset]
    first = {name: table.column(name)[0].as_py() for name in partitions}
    folder = Path(settings.storage_url(dataset).removeprefix("file://")).joinpath(
        *(f"{name}={first[name]}" for name in partitions))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    pq.write_table(table.drop_columns(list(partitions)), path)
    return path
