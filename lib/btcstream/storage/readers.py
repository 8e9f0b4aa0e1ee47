"""Read raw ticks and hourly metrics from the storage root into pandas, for a time range and symbols.

Three engines over the same committed files (`btcstream.storage.manifest.committed_files`, so a
half-written or failed-batch file is never read):

- ``pyarrow``: JVM-free; WebHDFS for ``hdfs://`` (through fsspec) or the local disk for ``file://``.
- ``duckdb``: JVM-free, local files only (``file://``); faster than pyarrow on many small files.
- ``spark``: for large scans and clusters (``btcstream.clients.spark.spark_session``).

``engine="auto"`` picks duckdb for ``file://`` and pyarrow for ``hdfs://``. Every engine prunes
hive-style partitions (``date=YYYY-MM-DD`` and, if present, ``hour=H``) against the time range
before opening a file, and returns the same frame: timestamps tz-aware UTC, ``date`` as an ISO
string, ``hour`` as an int, rows sorted by symbol then time. Time ranges are ``[start, end)``.

Not for: writing, or computing metrics (the streaming job does that; plots only draw).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Literal, Sequence
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from btcstream.errors import StorageReadError
from btcstream.ingest.tick import FIELD_NAMES
from btcstream.names import (
    DATASETS,
    HOURLY_COLUMNS,
    HOURLY_DATASET,
    HOURLY_PARTITION_COLUMNS,
    RAW_DATASET,
    RAW_DERIVED_COLUMNS,
    RAW_PARTITION_COLUMNS,
    TIME_COLUMNS,
)
from btcstream.settings import Settings
from btcstream.storage.filesystem import read_parquet, storage_filesystem, storage_path
from btcstream.storage.manifest import committed_files

log = logging.getLogger(__name__)

Engine = Literal["auto", "pyarrow", "duckdb", "spark"]
ENGINES: tuple[str, ...] = ("auto", "pyarrow", "duckdb", "spark")

# Every column a read of the table returns, its hive partitions included (see btcstream.names).
RAW_COLUMNS: tuple[str, ...] = FIELD_NAMES + RAW_DERIVED_COLUMNS + RAW_PARTITION_COLUMNS
HOURLY_TABLE_COLUMNS: tuple[str, ...] = HOURLY_COLUMNS + HOURLY_PARTITION_COLUMNS

# The streaming job partitions by the UTC date (and maybe hour) of the row's time; a partition is
# kept when its span, widened by this slack, overlaps the range, so a job that partitions hourly
# rows by window_end instead of window_start still loses nothing.
PARTITION_SLACK = timedelta(hours=1)
PARALLEL_FILE_READS = 8  # files fetched at once by the pyarrow reader
_PARTITION_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class TimeRange:
    """A half-open UTC interval [start, end); None means unbounded on that side."""

    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise StorageReadError(f"{name}={moment!r} is naive: pass a timezone-aware UTC datetime")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise StorageReadError(f"empty time range: end {self.end} is not after start {self.start}")

    @classmethod
    def last(cls, span: timedelta, now: datetime | None = None) -> "TimeRange":
        """The range ending now (or at `now`) and lasting `span`."""
        end = now or datetime.now(timezone.utc)
        return cls(end - span, end)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """True when [start, end) meets this range."""
        return (self.end is None or start < self.end) and (self.start is None or end > self.start)


def read_hourly_metrics(settings: Settings, time_range: TimeRange = TimeRange(),
                        symbols: Sequence[str] | None = None, engine: Engine = "auto") -> pd.DataFrame:
    """Hourly metric rows whose `window_start` lies in `time_range`, for `symbols` (None: all)."""
    return read_dataset(settings, HOURLY_DATASET, TIME_COLUMNS[HOURLY_DATASET], time_range, symbols, engine,
                        empty_columns=HOURLY_TABLE_COLUMNS)


def read_raw_ticks(settings: Settings, time_range: TimeRange = TimeRange(),
                   symbols: Sequence[str] | None = None, engine: Engine = "auto") -> pd.DataFrame:
    """Enriched ticks whose `event_time` lies in `time_range`, for `symbols` (None: all)."""
    return read_dataset(settings, RAW_DATASET, TIME_COLUMNS[RAW_DATASET], time_range, symbols, engine,
                        empty_columns=RAW_COLUMNS)


def read_dataset(settings: Settings, dataset: str, time_column: str | None,
                 time_range: TimeRange = TimeRange(), symbols: Sequence[str] | None = None,
                 engine: Engine = "auto", empty_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of `<root>/<dataset>` in `time_range` (on `time_column`) for `symbols`, via `engine`."""
    if engine not in ENGINES:
        raise StorageReadError(f"unknown reader engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "duckdb" if settings.storage_scheme == "file" else "pyarrow"
    if engine == "duckdb" and settings.storage_scheme != "file":
        raise StorageReadError("the duckdb reader reads file:// storage only; use engine='pyarrow' or 'spark'")
    files = committed_partition_files(settings, dataset, time_range)
    log.debug("%s: %d committed files in range via %s", dataset, len(files), engine)
    frame = read_files(settings, dataset, files, engine, empty_columns)
    return _select(frame, time_column, time_range, symbols)


def read_files(settings: Settings, dataset: str, files: Sequence[str], engine: Engine = "auto",
               empty_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Exactly these files of `<root>/<dataset>` (from `committed_partition_files`), normalised."""
    if engine == "auto":
        engine = "duckdb" if settings.storage_scheme == "file" else "pyarrow"
    if not files:
        frame = pd.DataFrame({name: pd.Series(dtype="object") for name in empty_columns})
    elif engine == "pyarrow":
        frame = _read_pyarrow(settings, dataset, list(files))
    elif engine == "duckdb":
        frame = _read_duckdb(settings, dataset, list(files))
    else:
        frame = _read_spark(settings, dataset, list(files))
    return normalise_frame(frame)


def committed_partition_files(settings: Settings, dataset: str, time_range: TimeRange = TimeRange()) -> list[str]:
    """Committed data files of `dataset` (paths without scheme) whose partitions meet `time_range`."""
    fs = storage_filesystem(settings)
    root = storage_path(settings, dataset)
    return [path for path in committed_files(fs, root)
            if _partition_in_range(partition_values(path, root), time_range)]


def chronological(files: Sequence[str], dataset_root: str) -> list[str]:
    """Files ordered by their date and hour partitions (hour 9 before hour 10), then by name."""
    def key(path: str) -> tuple:
        values = partition_values(path, dataset_root)
        hour = values.get("hour", "")
        return values.get("date", ""), int(hour) if hour.isdigit() else -1, path
    return sorted(files, key=key)


def partition_values(path: str, dataset_root: str) -> dict[str, str]:
    """The hive-style `key=value` directory segments between the dataset root and the file."""
    relative = path[len(dataset_root.rstrip("/")) + 1:] if path.startswith(dataset_root.rstrip("/") + "/") else path
    values: dict[str, str] = {}
    for segment in relative.split("/")[:-1]:
        match = _PARTITION_SEGMENT.match(segment)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def _partition_in_range(values: dict[str, str], time_range: TimeRange) -> bool:
    """Keep a partition unless its date (and hour) span provably misses the range."""
    if "date" not in values or (time_range.start is None and time_range.end is None):
        return True
    try:
        day = date.fromisoformat(values["date"])
    except ValueError:
        return True  # not a date we understand: read it rather than lose rows
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    span = timedelta(days=1)
    if values.get("hour", "").isdigit():
        start += timedelta(hours=int(values["hour"]))
        span = timedelta(hours=1)
    return time_range.overlaps(start - PARTITION_SLACK, start + span + PARTITION_SLACK)


def _read_pyarrow(settings: Settings, dataset: str, files: list[str]) -> pd.DataFrame:
    """Read each file with pyarrow through the storage filesystem and add its partition columns."""
    fs = storage_filesystem(settings)
    root = storage_path(settings, dataset)

    def read_one(path: str) -> pa.Table:
        table = read_parquet(fs, path)
        for key, value in partition_values(path, root).items():
            if key not in table.column_names:
                table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
        return table

    # Over WebHDFS each file costs HTTP round trips (NameNode redirect, then DataNode): overlap them.
    with ThreadPoolExecutor(max_workers=min(PARALLEL_FILE_READS, len(files))) as pool:
        tables = list(pool.map(read_one, files))
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _read_duckdb(settings: Settings, dataset: str, files: list[str]) -> pd.DataFrame:
    """One DuckDB scan over the local files, hive partition columns included."""
    import duckdb

    connection = duckdb.connect()
    try:
        connection.execute("SET TimeZone = 'UTC'")
        return connection.execute(
            "SELECT * FROM read_parquet(?, hive_partitioning = true, hive_types_autocast = false, union_by_name = true)",
            [files]).df()
    finally:
        connection.close()


def _read_spark(settings: Settings, dataset: str, files: list[str]) -> pd.DataFrame:
    return _spark_files(settings, dataset, files).toPandas()


def spark_dataset(settings: Settings, dataset: str, time_column: str | None = None,
                  time_range: TimeRange = TimeRange(), symbols: Sequence[str] | None = None):  # -> pyspark DataFrame
    """The committed rows of a dataset as a Spark DataFrame, for scans too big for pandas.

    Same files as the pandas readers (partition-pruned), with the range and symbols as Spark filters.
    """
    from pyspark.sql import functions as F

    files = committed_partition_files(settings, dataset, time_range)
    if not files:
        raise StorageReadError(f"{settings.storage_url(dataset)} has no committed files in that range")
    frame = _spark_files(settings, dataset, files)
    if time_column and time_range.start is not None:
        frame = frame.where(F.col(time_column) >= F.lit(time_range.start))
    if time_column and time_range.end is not None:
        frame = frame.where(F.col(time_column) < F.lit(time_range.end))
    if symbols is not None:
        frame = frame.where(F.col("symbol").isin(_upper(symbols)))
    return frame


def _spark_files(settings: Settings, dataset: str, files: list[str]):
    """Spark reads exactly the committed files; `basePath` keeps the partition columns."""
    from btcstream.clients.spark import spark_session

    spark = spark_session(settings, "btcstream-reader", with_kafka=False)
    root_url = urlparse(settings.storage_root)
    urls = [f"{root_url.scheme}://{root_url.netloc}{path}" for path in files]
    return (spark.read.option("basePath", settings.storage_url(dataset))
            .option("mergeSchema", "true").parquet(*urls))


def normalise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Every timestamp tz-aware UTC, `date` an ISO string, `hour` an int, whatever engine read it.

    Works in place on a frame a reader has just built (copying a large frame costs seconds).
    """
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            if str(column.dt.tz) != "UTC":
                frame[name] = column.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(column.dtype):
            # Spark's TIMESTAMP is an instant; Parquet INT96/naive values are UTC.
            frame[name] = column.dt.tz_localize("UTC")
    # Partition values repeat across many rows: convert each distinct value once.
    if "date" in frame.columns and len(frame):
        frame["date"] = _map_distinct(frame["date"], _iso_date)
    if "hour" in frame.columns and len(frame):
        frame["hour"] = _map_distinct(frame["hour"], int).astype("int64")
    return frame


def _map_distinct(column: pd.Series, convert) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        column = column.astype(object)
    return column.map({value: convert(value) for value in column.unique()})


def _iso_date(value: object) -> object:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, (datetime, pd.Timestamp)):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _select(frame: pd.DataFrame, time_column: str | None, time_range: TimeRange,
            symbols: Sequence[str] | None) -> pd.DataFrame:
    """Rows in the range and symbols, sorted by symbol then time."""
    if len(frame) and time_column and time_column in frame.columns:
        times = frame[time_column]
        if time_range.start is not None:
            frame = frame[times >= pd.Timestamp(time_range.start)]
            times = frame[time_column]
        if time_range.end is not None:
            frame = frame[times < pd.Timestamp(time_range.end)]
    if symbols is not None and "symbol" in frame.columns:
        frame = frame[frame["symbol"].isin(_upper(symbols))]
    order = [name for name in ("symbol", time_column) if name and name in frame.columns]
    if order and len(frame):
        frame = frame.sort_values(order, kind="stable")
    return frame.reset_index(drop=True)


def _upper(symbols: Iterable[str]) -> list[str]:
    return [symbol.strip().upper() for symbol in symbols]


def dataset_summary(settings: Settings, datasets: Sequence[str] = DATASETS) -> pd.DataFrame:
    """Per dataset: committed files and rows (from the Parquet footers only, so it stays cheap)."""
    fs = storage_filesystem(settings)
    rows = []
    for dataset in datasets:
        files = committed_partition_files(settings, dataset)
        count = 0
        for path in files:
            with fs.open(path, "rb") as handle:
                count += pq.ParquetFile(handle).metadata.num_rows
        rows.append({"dataset": dataset, "committed_files": len(files), "rows": count,
                     "url": settings.storage_url(dataset)})
    return pd.DataFrame(rows, columns=["dataset", "committed_files", "rows", "url"])


def latest_time(settings: Settings, dataset: str = RAW_DATASET, column: str = TIME_COLUMNS[RAW_DATASET]) -> pd.Timestamp | None:
    """The largest `column` of a dataset, reading only its newest partition's files (None if empty)."""
    root = storage_path(settings, dataset)
    files = chronological(committed_partition_files(settings, dataset), root)
    if not files:
        return None
    newest = partition_values(files[-1], root)
    last_partition = [f for f in files if partition_values(f, root) == newest]
    frame = read_files(settings, dataset, last_partition, engine="pyarrow")
    return frame[column].max() if column in frame.columns and len(frame) else None
