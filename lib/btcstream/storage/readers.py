"""Read the Delta tables into pandas, for a time range and symbols: raw_data, hourly_metrics, quarantine,
trades, and the job's live forecasts and alerts.

The tables are read through `deltalake` (delta-rs): it replays the Delta log, so only the files of
one table version are ever read (never a half-written file, nor one an OPTIMIZE replaced), and it
speaks `hdfs://` natively (no WebHDFS, no JVM) as well as `file://`. Engines:

- ``pyarrow`` (``auto``): a pyarrow dataset of the version's files, pruned to the partitions the
  time range touches, with the time and symbol filters pushed into the scan.
- ``duckdb``: DuckDB over the same pyarrow dataset (filters and sort in DuckDB).
- ``spark``: Delta on Spark (`spark_dataset`), for scans too big for pandas.

Every engine returns the same frame: timestamps tz-aware UTC, ``date`` an ISO string, ``hour`` an
int, quarantine ``value`` Python bytes, rows sorted by symbol then time. Time ranges are ``[start, end)``.
``as_of`` reads an earlier state (time travel): a version number or a UTC time (`parse_as_of`).

Not for: writing, or computing metrics (the streaming job does that; plots only draw).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterable, Literal, Sequence, Union
from urllib.parse import urlparse

import pandas as pd

from btcstream.errors import StorageReadError
from btcstream.ingest.tick import FIELD_NAMES
from btcstream.ingest.trade import TRADE_FIELD_NAMES
from btcstream.names import (
    ALERTS_COLUMNS,
    ALERTS_DATASET,
    ALERTS_PARTITION_COLUMNS,
    DATASETS,
    FORECASTS_COLUMNS,
    FORECASTS_DATASET,
    HOURLY_COLUMNS,
    HOURLY_DATASET,
    HOURLY_LIFECYCLE_COLUMNS,
    HOURLY_PARTITION_COLUMNS,
    QUARANTINE_COLUMNS,
    QUARANTINE_DATASET,
    QUARANTINE_PARTITION_COLUMNS,
    RAW_DATASET,
    RAW_DERIVED_COLUMNS,
    RAW_PARTITION_COLUMNS,
    TIME_COLUMNS,
    TRADES_DATASET,
    TRADES_PARTITION_COLUMNS,
)
from btcstream.settings import Settings
from btcstream.storage.layout import require_delta_layout

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pa_dataset
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

Engine = Literal["auto", "pyarrow", "duckdb", "spark"]
ENGINES: tuple[str, ...] = ("auto", "pyarrow", "duckdb", "spark")
AsOf = Union[int, datetime, str, None]  # a table version, a time, or text holding either (see parse_as_of)

# Every column a read of each table returns, in the order the job writes them (see btcstream.names).
RAW_COLUMNS: tuple[str, ...] = FIELD_NAMES + RAW_DERIVED_COLUMNS + RAW_PARTITION_COLUMNS
HOURLY_TABLE_COLUMNS: tuple[str, ...] = HOURLY_COLUMNS + HOURLY_LIFECYCLE_COLUMNS + HOURLY_PARTITION_COLUMNS
QUARANTINE_TABLE_COLUMNS: tuple[str, ...] = QUARANTINE_COLUMNS + QUARANTINE_PARTITION_COLUMNS
TRADES_COLUMNS: tuple[str, ...] = TRADE_FIELD_NAMES + TRADES_PARTITION_COLUMNS
FORECASTS_TABLE_COLUMNS: tuple[str, ...] = FORECASTS_COLUMNS
ALERTS_TABLE_COLUMNS: tuple[str, ...] = ALERTS_COLUMNS + ALERTS_PARTITION_COLUMNS
_UTC_TIME = "datetime64[ns, UTC]"
# The dtypes of an empty read of the live tables (a read of stored rows keeps the stored types).
FORECASTS_TABLE_TYPES: dict[str, str] = {"symbol": "object", "model": "object", "made_at": _UTC_TIME,
                                         "for_hour": _UTC_TIME, "value": "float64", "realized": "float64",
                                         "updated_at": _UTC_TIME}
ALERTS_TABLE_TYPES: dict[str, str] = {"symbol": "object", "time": _UTC_TIME, "metric": "object", "value": "float64",
                                      "baseline": "float64", "mad": "float64", "z": "float64",
                                      "detected_at": _UTC_TIME, "date": "object"}
TABLE_COLUMNS = {RAW_DATASET: RAW_COLUMNS, HOURLY_DATASET: HOURLY_TABLE_COLUMNS,
                 QUARANTINE_DATASET: QUARANTINE_TABLE_COLUMNS, TRADES_DATASET: TRADES_COLUMNS}

# Rows are sorted by these columns, those a table has, in this order (the Kafka coordinates break
# ties between quarantined records of the same timestamp, so every engine gives the same order).
SORT_AFTER_TIME: tuple[str, ...] = ("topic", "partition", "offset")
# Delta keeps timestamp statistics to the millisecond, truncated.
STATISTICS_PRECISION = timedelta(milliseconds=1)
# History commit metrics: rows a commit added (Spark's WRITE and MERGE, delta-rs' WRITE) and updated.
ADDED_ROWS_METRICS = ("numOutputRows", "numTargetRowsInserted", "num_added_rows")
UPDATED_ROWS_METRICS = ("numTargetRowsUpdated",)
ROW_ADDING_OPERATIONS = frozenset({"WRITE", "STREAMING UPDATE", "MERGE", "CREATE TABLE AS SELECT",
                                   "REPLACE TABLE AS SELECT", "CREATE OR REPLACE TABLE AS SELECT"})


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


# --- public readers ----------------------------------------------------------------------------

def read_hourly_metrics(settings: Settings, time_range: TimeRange = TimeRange(),
                        symbols: Sequence[str] | None = None, engine: Engine = "auto",
                        as_of: AsOf = None) -> pd.DataFrame:
    """Hourly rows (live and final) whose `window_start` lies in `time_range`, for `symbols` (None: all)."""
    return read_dataset(settings, HOURLY_DATASET, TIME_COLUMNS[HOURLY_DATASET], time_range, symbols, engine,
                        empty_columns=HOURLY_TABLE_COLUMNS, as_of=as_of)


def read_raw_ticks(settings: Settings, time_range: TimeRange = TimeRange(),
                   symbols: Sequence[str] | None = None, engine: Engine = "auto",
                   as_of: AsOf = None) -> pd.DataFrame:
    """Enriched ticks whose `event_time` lies in `time_range`, for `symbols` (None: all)."""
    return read_dataset(settings, RAW_DATASET, TIME_COLUMNS[RAW_DATASET], time_range, symbols, engine,
                        empty_columns=RAW_COLUMNS, as_of=as_of)


def read_trades(settings: Settings, time_range: TimeRange = TimeRange(),
                symbols: Sequence[str] | None = None, engine: Engine = "auto",
                as_of: AsOf = None) -> pd.DataFrame:
    """Aggregate trades whose `trade_time` lies in `time_range`, for `symbols` (None: all)."""
    return read_dataset(settings, TRADES_DATASET, TIME_COLUMNS[TRADES_DATASET], time_range, symbols, engine,
                        empty_columns=TRADES_COLUMNS, as_of=as_of)


def read_quarantine(settings: Settings, time_range: TimeRange = TimeRange(), engine: Engine = "auto",
                    as_of: AsOf = None) -> pd.DataFrame:
    """Refused records whose Kafka timestamp lies in `time_range`; `value` holds their bytes as received."""
    return read_dataset(settings, QUARANTINE_DATASET, TIME_COLUMNS[QUARANTINE_DATASET], time_range, None, engine,
                        empty_columns=QUARANTINE_TABLE_COLUMNS, as_of=as_of)


def read_forecasts(settings: Settings, time_range: TimeRange = TimeRange(),
                   symbols: Sequence[str] | None = None, models: Sequence[str] | None = None,
                   engine: Engine = "auto", as_of: AsOf = None) -> pd.DataFrame:
    """The job's live forecasts whose `for_hour` lies in `time_range`, for `symbols` and `models` (None: all).

    One row per symbol, model and forecast hour (`FORECASTS_COLUMNS`): `value` the forecast and
    `realized` the hour's realized volatility (NaN until the hour is final), both volatilities in the
    units of hourly_metrics.realized_volatility. Sorted by symbol, for_hour, model. No table yet: an
    empty frame with those columns, typed (times UTC, values float).
    """
    frame = read_dataset(settings, FORECASTS_DATASET, TIME_COLUMNS[FORECASTS_DATASET], time_range, symbols, engine,
                         as_of=as_of)
    if models is not None and "model" in frame.columns:
        frame = frame[frame["model"].isin([model.strip() for model in models])]
    return _typed(frame, FORECASTS_TABLE_TYPES, ["symbol", TIME_COLUMNS[FORECASTS_DATASET], "model"])


def read_alerts(settings: Settings, time_range: TimeRange = TimeRange(), symbols: Sequence[str] | None = None,
                metrics: Sequence[str] | None = None, engine: Engine = "auto", as_of: AsOf = None) -> pd.DataFrame:
    """Market alerts whose 1-minute bar `time` lies in `time_range`, for `symbols` and `metrics` (None: all).

    Columns `ALERTS_COLUMNS` plus the `date` partition; sorted by symbol, time, metric. No table yet:
    an empty frame with those columns, typed (times UTC, numbers float).
    """
    frame = read_dataset(settings, ALERTS_DATASET, TIME_COLUMNS[ALERTS_DATASET], time_range, symbols, engine,
                         as_of=as_of)
    if metrics is not None and "metric" in frame.columns:
        frame = frame[frame["metric"].isin([metric.strip() for metric in metrics])]
    return _typed(frame, ALERTS_TABLE_TYPES, ["symbol", TIME_COLUMNS[ALERTS_DATASET], "metric"])


def read_latest_alerts(settings: Settings, rows: int = 10, as_of: AsOf = None) -> pd.DataFrame:
    """The newest `rows` alerts, all symbols together, newest first; only the newest date partitions are read."""
    time_column = TIME_COLUMNS[ALERTS_DATASET]
    frame = read_head(settings, ALERTS_DATASET, rows, latest=True, as_of=as_of)
    if frame.empty:
        return _typed(frame, ALERTS_TABLE_TYPES, [])
    frame = frame.sort_values([time_column, "symbol", "metric"], ascending=[False, True, True], kind="stable")
    return _typed(frame, ALERTS_TABLE_TYPES, [])


def _typed(frame: pd.DataFrame, types: dict[str, str], sort_keys: Sequence[str]) -> pd.DataFrame:
    """`frame` sorted by `sort_keys`, index reset; an empty frame gets every column of `types` with its dtype."""
    if frame.empty:
        columns = list(dict.fromkeys([*types, *frame.columns]))
        return pd.DataFrame({name: pd.Series(dtype=types.get(name, "object")) for name in columns})
    return frame.sort_values(list(sort_keys), kind="stable").reset_index(drop=True) if sort_keys \
        else frame.reset_index(drop=True)


def read_dataset(settings: Settings, dataset: str, time_column: str | None,
                 time_range: TimeRange = TimeRange(), symbols: Sequence[str] | None = None,
                 engine: Engine = "auto", empty_columns: Sequence[str] = (), as_of: AsOf = None) -> pd.DataFrame:
    """Rows of the Delta table `<root>/<dataset>` in `time_range` (on `time_column`) for `symbols`, via `engine`.

    No table yet: an empty frame with `empty_columns`. A table version `as_of` (see `parse_as_of`).
    """
    if engine not in ENGINES:
        raise StorageReadError(f"unknown reader engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "spark":
        if open_table(settings, dataset, as_of) is None:  # JVM-free check: no table, no Spark started
            return _empty(empty_columns)
        frame = spark_dataset(settings, dataset, time_column, time_range, symbols, as_of).toPandas()
        frame = normalise_frame(frame)
        return frame.sort_values(_sort_keys(frame.columns, time_column), kind="stable").reset_index(drop=True)
    table = open_table(settings, dataset, as_of)
    if table is None:
        return _empty(empty_columns)
    url = settings.storage_url(dataset)
    predicate = partition_predicate(_partition_columns(table), time_range) if time_column else None
    dataset_ = _arrow_dataset(table, url, predicate)
    log.debug("%s v%d: %d files in range via %s", dataset, table.version(), len(list(dataset_.get_fragments())), engine)
    with _storage_errors(url):
        if engine == "duckdb":
            frame = _scan_duckdb(dataset_, time_column, time_range, symbols)
        else:
            frame = _scan_pyarrow(dataset_, time_column, time_range, symbols)
    return normalise_frame(frame)


def read_head(settings: Settings, dataset: str, rows: int = 10, latest: bool = False,
              as_of: AsOf = None) -> pd.DataFrame:
    """The first (or, `latest`, the last) `rows` rows of a table in time order.

    Reads only the oldest (newest) partitions that hold that many rows, counted from the Delta log.
    """
    table = open_table(settings, dataset, as_of)
    if table is None:
        return _empty(TABLE_COLUMNS.get(dataset, ()))
    url = settings.storage_url(dataset)
    columns = _partition_columns(table)
    counts: dict[tuple, int] = {}
    for values, records in _partition_counts(table, url):
        counts[values] = counts.get(values, 0) + records
    wanted, total = [], 0
    for values in sorted(counts, reverse=latest):
        wanted.append(values)
        total += counts[values]
        if total >= rows:
            break
    predicate = " OR ".join(
        "(" + " AND ".join(f"{name} = {_sql_literal(name, value)}" for name, value in zip(columns, values)) + ")"
        for values in wanted) if columns and wanted else None
    time_column = TIME_COLUMNS.get(dataset)
    with _storage_errors(url):
        frame = normalise_frame(_scan_pyarrow(_arrow_dataset(table, url, predicate), time_column, TimeRange(), None))
    if time_column in frame.columns:
        frame = frame.sort_values([time_column, *_sort_keys(frame.columns, None)], kind="stable")
    return (frame.tail(rows) if latest else frame.head(rows)).reset_index(drop=True)


def spark_dataset(settings: Settings, dataset: str, time_column: str | None = None,
                  time_range: TimeRange = TimeRange(), symbols: Sequence[str] | None = None,
                  as_of: AsOf = None):  # -> pyspark DataFrame
    """The table as a Spark DataFrame (Delta on Spark), filtered to the range, partitions and symbols.

    `as_of` is resolved to a version from the Delta log first (`table_version`), so Spark and the
    JVM-free readers read the very same version for a given time.
    """
    from pyspark.sql import functions as F

    from btcstream.clients.spark import spark_session

    table = open_table(settings, dataset, as_of)
    url = settings.storage_url(dataset)
    if table is None:
        raise StorageReadError(f"{url} is not a Delta table yet: nothing to read")
    spark = spark_session(settings, "btcstream-reader", with_kafka=False)
    reader = spark.read.format("delta")
    if as_of is not None:
        reader = reader.option("versionAsOf", table.version())
    frame = reader.load(url)
    predicate = partition_predicate(_partition_columns(table), time_range) if time_column else None
    if predicate:
        frame = frame.where(predicate)
    if time_column and time_range.start is not None:
        frame = frame.where(F.col(time_column) >= F.lit(time_range.start))
    if time_column and time_range.end is not None:
        frame = frame.where(F.col(time_column) < F.lit(time_range.end))
    if symbols is not None:
        frame = frame.where(F.col("symbol").isin(_upper(symbols)))
    return frame


# --- the Delta log: tables, versions, time travel -------------------------------------------------

def open_table(settings: Settings, dataset: str, as_of: AsOf = None) -> DeltaTable | None:
    """The Delta table of `dataset` at version `as_of` (None: newest); None when there is no table yet.

    A folder of the old file-sink layout raises `LegacyLayout`; an unreadable log, a version or a
    time outside the table's history raise `StorageReadError`, each in one line.
    """
    from deltalake import DeltaTable

    url = settings.storage_url(dataset)
    wanted = parse_as_of(as_of)
    with _storage_errors(url):
        if not DeltaTable.is_deltatable(url):
            require_delta_layout(settings, [dataset])  # only asked here: a Delta table is never legacy
            if wanted is not None:
                raise StorageReadError(f"{url} is not a Delta table yet: there is no version as of {as_of}")
            return None
        table = DeltaTable(url)
        if wanted is not None:
            _travel(table, url, wanted)
    return table


def parse_as_of(value: AsOf) -> int | datetime | None:
    """A table version (int) or a UTC time from `value`: an int, a datetime, or text (e.g. a notebook parameter).

    Text of digits is a version ("12"); other text is an ISO time ("2025-02-15T10:00", naive = UTC);
    empty text or None means the newest version.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value < 0:
            raise StorageReadError(f"as_of={value}: a table version is 0 or more")
        return value
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        return parse_as_of(datetime.fromisoformat(text))
    except ValueError:
        raise StorageReadError(f"as_of={text!r} is neither a table version (e.g. 12) nor an ISO time "
                               f"(e.g. 2025-02-15T10:00, UTC unless an offset is given)") from None


def table_version(settings: Settings, dataset: str, as_of: AsOf = None) -> int | None:
    """The version `as_of` resolves to (None: no table yet)."""
    table = open_table(settings, dataset, as_of)
    return None if table is None else table.version()


def _travel(table: DeltaTable, url: str, as_of: int | datetime) -> None:
    """Load `as_of` into `table` (at its newest version), or raise naming the versions the table has."""
    from deltalake import DeltaTable

    newest = table.version()
    if isinstance(as_of, int):
        if as_of > newest:
            raise StorageReadError(f"{url} has no version {as_of}: {_history_range(url)}")
        try:
            table.load_as_version(as_of)
        except Exception as error:  # the log of that version was cleaned up
            raise StorageReadError(f"{url} cannot load version {as_of} ({_first_line(error)}): "
                                   f"{_history_range(url)}") from None
        return
    if as_of > datetime.now(timezone.utc):
        raise StorageReadError(f"as_of {as_of.isoformat()} is in the future: {_history_range(url)}")
    table.load_as_version(as_of)
    if table.version() == 0:
        # delta-rs resolves a time before the first commit to version 0: refuse that. (A later
        # version was committed at or before `as_of`, its predecessor existing; the history, one
        # read per commit, is only read here. delta-rs labels it by the loaded version: read the newest.)
        history = DeltaTable(url).history()
        committed = _commit_time(history, 0)
        if committed is not None and committed > as_of:
            raise StorageReadError(f"{url} did not exist yet at {as_of.isoformat()}: {_range_text(history)}")


def _history_range(url: str) -> str:
    """'it has versions 0..7, committed <first> .. <last> UTC' (reads the whole history: error paths only)."""
    from deltalake import DeltaTable

    return _range_text(DeltaTable(url).history())


def _range_text(history: list[dict]) -> str:
    if not history:
        return "it has no commits"
    first, last = history[-1], history[0]
    return (f"it has versions {first['version']}..{last['version']}, committed "
            f"{_utc(first['timestamp']):%Y-%m-%d %H:%M:%S.%f}"[:-3] + " .. "
            + f"{_utc(last['timestamp']):%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC")


def _commit_time(history: list[dict], version: int) -> datetime | None:
    for commit in history:
        if commit.get("version") == version and commit.get("timestamp") is not None:
            return _utc(commit["timestamp"])
    return None


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000.0, tz=timezone.utc)


class _storage_errors:
    """Turn deltalake's and the storage's exceptions into a one-line `StorageReadError` naming the table."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        from deltalake.exceptions import DeltaError

        if isinstance(error, DeltaError):
            raise StorageReadError(f"{self.url}: cannot read the Delta table: {_first_line(error)}") from error
        if isinstance(error, FileNotFoundError):
            raise StorageReadError(f"{self.url}: a file of the table version being read is gone ({_first_line(error)}): "
                                   f"read again (VACUUM removes files of old versions)") from error
        if isinstance(error, OSError):
            raise StorageReadError(f"{self.url}: the storage did not answer: {_first_line(error)}; check that it "
                                   f"runs and is reachable (`btcstream infra status` for the local stack)") from error
        return False


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(error: BaseException) -> str:
    """delta-rs' message in one line: its cause chain (one "↳" line each) joined, colours and backtrace dropped."""
    lines = []
    for line in _ANSI_ESCAPE.sub("", str(error)).splitlines():
        line = line.strip().lstrip("↳").strip()
        if not line or re.match(r"^\d+: |^at ", line):  # a backtrace frame
            continue
        lines.append(line)
    return ": ".join(lines[:4]) if lines else type(error).__name__


# --- scans -------------------------------------------------------------------------------------------

def partition_predicate(partition_columns: Sequence[str], time_range: TimeRange) -> str | None:
    """A SQL predicate on the table's `date` (and `hour`) partitions keeping exactly the hours `time_range` meets.

    The job derives both from the row's time in UTC, so the pruning is exact; deltalake (file
    pruning) and Spark (`where`) both take it. None when there is nothing to prune.
    """
    if "date" not in partition_columns or (time_range.start is None and time_range.end is None):
        return None
    by_hour = "hour" in partition_columns
    bounds = []
    if time_range.start is not None:
        first = time_range.start.astimezone(timezone.utc)
        bounds.append(f"(date > DATE '{first.date()}' OR (date = DATE '{first.date()}' AND hour >= {first.hour}))"
                      if by_hour else f"date >= DATE '{first.date()}'")
    if time_range.end is not None:
        last = time_range.end.astimezone(timezone.utc) - timedelta(microseconds=1)  # the range is [start, end)
        bounds.append(f"(date < DATE '{last.date()}' OR (date = DATE '{last.date()}' AND hour <= {last.hour}))"
                      if by_hour else f"date <= DATE '{last.date()}'")
    return " AND ".join(bounds)


def scanned_files(settings: Settings, dataset: str, time_range: TimeRange = TimeRange(),
                  as_of: AsOf = None) -> list[str]:
    """The data files a read of `time_range` opens (paths without scheme), after partition pruning."""
    table = open_table(settings, dataset, as_of)
    if table is None:
        return []
    predicate = partition_predicate(_partition_columns(table), time_range)
    with _storage_errors(settings.storage_url(dataset)):
        return sorted(urlparse(uri).path for uri in table.file_uris(file_pruning_predicate=predicate))


def _arrow_dataset(table: DeltaTable, url: str, predicate: str | list | None) -> pa_dataset.Dataset:
    """A pyarrow dataset of the loaded version's files that `predicate` keeps (SQL or deltalake tuple filters).

    Over `hdfs://` the files are read here, in this thread, through delta-rs' storage handler, and
    the scan runs on those bytes in memory: Arrow's I/O threads calling back into that Python
    filesystem handler aborted short reader processes at exit ("terminate called without an
    active exception", apache/arrow#34314), even with single-threaded scans (1 of 8 reader
    processes in a CI run).
    """
    with _storage_errors(url):
        files = table.to_pyarrow_dataset(file_pruning_predicate=predicate, filesystem=_filesystem(table, url))
        return files if _native(files) else _in_memory(files)


def _in_memory(files: pa_dataset.FileSystemDataset) -> pa_dataset.Dataset:
    """The dataset's files read in this thread into an in-memory dataset, partition columns filled in."""
    import pyarrow as pa
    import pyarrow.dataset as pa_dataset
    import pyarrow.parquet as pq

    tables = []
    for fragment in files.get_fragments():
        with files.filesystem.open_input_file(fragment.path) as handle:
            data = handle.read()
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        partition = pa_dataset.get_partition_keys(fragment.partition_expression)
        columns = [table[field.name].cast(field.type) if field.name in table.column_names
                   else pa.array([partition.get(field.name)] * table.num_rows, type=field.type)
                   for field in files.schema]
        tables.append(pa.Table.from_arrays(columns, schema=files.schema))
    return pa_dataset.InMemoryDataset(tables, schema=files.schema)


def _filesystem(table: DeltaTable, url: str):
    """Arrow's own filesystem for a local table; None (delta-rs' storage handler) for `hdfs://`.

    The handler is a Python filesystem: `_arrow_dataset` keeps Arrow's threads away from it.
    """
    import pyarrow.fs as pa_fs

    if urlparse(url).scheme not in ("", "file"):
        return None
    return pa_fs.SubTreeFileSystem(urlparse(table.table_uri).path or urlparse(url).path, pa_fs.LocalFileSystem())


def _native(dataset: pa_dataset.Dataset) -> bool:
    """True when Arrow may scan `dataset` with its thread pools (no Python filesystem behind it)."""
    import pyarrow.dataset as pa_dataset
    import pyarrow.fs as pa_fs

    return not isinstance(dataset, pa_dataset.FileSystemDataset) or isinstance(dataset.filesystem,
                                                                                pa_fs.SubTreeFileSystem)


def _row_filter(schema: pa.Schema, time_column: str | None, time_range: TimeRange,
                symbols: Sequence[str] | None):
    """The pyarrow filter expression of the range and symbols (None: keep every row)."""
    import pyarrow as pa
    import pyarrow.dataset as pa_dataset

    conditions = []
    if time_column and time_column in schema.names:
        kind = schema.field(time_column).type
        if time_range.start is not None:
            conditions.append(pa_dataset.field(time_column) >= pa.scalar(time_range.start, type=kind))
        if time_range.end is not None:
            conditions.append(pa_dataset.field(time_column) < pa.scalar(time_range.end, type=kind))
    if symbols is not None and "symbol" in schema.names:
        conditions.append(pa_dataset.field("symbol").isin(_upper(symbols)))
    combined = None
    for condition in conditions:
        combined = condition if combined is None else combined & condition
    return combined


def _scan_pyarrow(dataset: pa_dataset.FileSystemDataset, time_column: str | None, time_range: TimeRange,
                  symbols: Sequence[str] | None) -> pd.DataFrame:
    """Scan with the filters pushed down (partition expressions and statistics skip files), sort in Arrow.

    Over `hdfs://` the scan runs in this thread only: Arrow threads calling back into delta-rs'
    Python filesystem handler abort short processes at exit now and then (apache/arrow#34314;
    measured: 6 of 60 CLI-sized reads of a local table through that handler, 0 of 100 single-threaded).
    """
    table = dataset.to_table(filter=_row_filter(dataset.schema, time_column, time_range, symbols),
                             use_threads=_native(dataset))
    keys = _sort_keys(table.column_names, time_column)
    if keys and table.num_rows:
        table = table.sort_by([(key, "ascending") for key in keys])
    return table.to_pandas()


def _scan_duckdb(dataset: pa_dataset.FileSystemDataset, time_column: str | None, time_range: TimeRange,
                 symbols: Sequence[str] | None) -> pd.DataFrame:
    """One DuckDB query over the pyarrow dataset (DuckDB pushes its filters into the Arrow scan)."""
    import duckdb

    conditions, parameters = [], []
    if time_column and time_column in dataset.schema.names:
        if time_range.start is not None:
            conditions.append(f'"{time_column}" >= ?')
            parameters.append(time_range.start)
        if time_range.end is not None:
            conditions.append(f'"{time_column}" < ?')
            parameters.append(time_range.end)
    if symbols is not None and "symbol" in dataset.schema.names:
        conditions.append(f"symbol IN ({', '.join('?' for _ in symbols)})")
        parameters.extend(_upper(symbols))
    keys = _sort_keys(dataset.schema.names, time_column)
    query = ("SELECT * FROM delta_rows" + (" WHERE " + " AND ".join(conditions) if conditions else "")
             + (" ORDER BY " + ", ".join(f'"{key}"' for key in keys) if keys else ""))
    connection = duckdb.connect()
    try:
        connection.execute("SET TimeZone = 'UTC'")
        connection.register("delta_rows", dataset)
        return connection.sql(query, params=parameters).to_arrow_table().to_pandas()
    finally:
        connection.close()


def _partition_columns(table: DeltaTable) -> list[str]:
    return list(table.metadata().partition_columns)


def _partition_counts(table: DeltaTable, url: str) -> list[tuple[tuple, int]]:
    """(partition values in column order, typed; rows) for each data file of the loaded version."""
    import pyarrow as pa

    columns = _partition_columns(table)
    with _storage_errors(url):
        actions = pa.table(table.get_add_actions(flatten=True))
    values = [actions.column(f"partition.{name}").to_pylist() for name in columns]
    records = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [0] * len(actions)
    return [(tuple(column[i] for column in values), int(records[i] or 0)) for i in range(actions.num_rows)]


def _sql_literal(column: str, value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (date, datetime)) or column == "date":
        return f"DATE '{value}'"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _sort_keys(columns: Iterable[str], time_column: str | None) -> list[str]:
    present = list(columns)
    return [name for name in ("symbol", time_column, *SORT_AFTER_TIME) if name and name in present]


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in columns})


def _upper(symbols: Iterable[str]) -> list[str]:
    return [symbol.strip().upper() for symbol in symbols]


# --- the frame every engine returns --------------------------------------------------------------------

def normalise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Every timestamp tz-aware UTC, `date` an ISO string, `hour` an int, binary values `bytes`, whatever engine read it.

    Works in place on a frame a reader has just built (copying a large frame costs seconds).
    """
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            if str(column.dt.tz) != "UTC":
                frame[name] = column.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(column.dtype) and name != "date":
            # Spark's TIMESTAMP is an instant; naive values (Spark's toPandas in a UTC session) are UTC.
            frame[name] = column.dt.tz_localize("UTC")
        elif column.dtype == object and len(frame):
            first = column.dropna().head(1)
            if len(first) and isinstance(first.iloc[0], (bytearray, memoryview)):  # DuckDB's and Spark's BLOB
                frame[name] = column.map(lambda value: bytes(value) if value is not None else None)
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


# --- what the Delta log says, without reading a data file ---------------------------------------------

def dataset_summary(settings: Settings, datasets: Sequence[str] = DATASETS) -> pd.DataFrame:
    """Per dataset: table version, data files and rows of the newest version (from the Delta log only).

    A dataset without a table yet has version <NA> and no files.
    """
    rows = []
    for dataset in datasets:
        table = open_table(settings, dataset)
        url = settings.storage_url(dataset)
        if table is None:
            rows.append({"dataset": dataset, "version": None, "files": 0, "rows": 0, "url": url})
            continue
        counts = _partition_counts(table, url)
        rows.append({"dataset": dataset, "version": table.version(), "files": len(counts),
                     "rows": sum(records for _, records in counts), "url": url})
    return pd.DataFrame(rows, columns=["dataset", "version", "files", "rows", "url"]).astype({"version": "Int64"})


def table_history(settings: Settings, dataset: str, limit: int = 10) -> pd.DataFrame:
    """The table's newest `limit` commits: version, timestamp (UTC), operation, rows added and updated.

    The version numbers are what `as_of` takes; rows added are None for commits that add none
    (OPTIMIZE rewrites rows, VACUUM deletes files).
    """
    table = open_table(settings, dataset)
    columns = ["version", "timestamp", "operation", "rows_added", "rows_updated"]
    if table is None:
        return pd.DataFrame(columns=columns)
    with _storage_errors(settings.storage_url(dataset)):
        history = table.history(limit)
    rows = []
    for commit in history:
        metrics = commit.get("operationMetrics") or {}
        operation = commit.get("operation", "")
        adds = operation in ROW_ADDING_OPERATIONS
        rows.append({
            "version": int(commit["version"]),
            "timestamp": pd.Timestamp(commit["timestamp"], unit="ms", tz="UTC"),
            "operation": operation,
            "rows_added": _metric(metrics, ADDED_ROWS_METRICS) if adds else None,
            "rows_updated": _metric(metrics, UPDATED_ROWS_METRICS) if adds else None,
        })
    return pd.DataFrame(rows, columns=columns)


def _metric(metrics: dict, names: Sequence[str]) -> int | None:
    for name in names:
        if name in metrics:
            return int(metrics[name])
    return None


def latest_time(settings: Settings, dataset: str = RAW_DATASET,
                column: str = TIME_COLUMNS[RAW_DATASET]) -> pd.Timestamp | None:
    """The largest `column` of a table (None if empty), cheaply.

    The Delta log's per-file statistics name the files that can hold the maximum (the statistic is
    truncated to the millisecond); only `column` of those files is read. Without statistics, the
    newest partition is read instead.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table = open_table(settings, dataset)
    if table is None:
        return None
    url = settings.storage_url(dataset)
    with _storage_errors(url):
        actions = pa.table(table.get_add_actions(flatten=True))
    if not actions.num_rows:
        return None
    statistic = f"max.{column}"
    newest = pc.max(actions.column(statistic)).as_py() if statistic in actions.column_names else None
    if newest is not None and actions.column(statistic).null_count == 0:
        files = _arrow_dataset(table, url, [(column, ">=", newest)])  # statistics prune the other files
    else:
        columns = _partition_columns(table)
        last = max(values for values, _ in _partition_counts(table, url))
        predicate = " AND ".join(f"{name} = {_sql_literal(name, value)}" for name, value in zip(columns, last))
        files = _arrow_dataset(table, url, predicate or None)
    log.debug("latest %s of %s from %d file(s)", column, dataset, len(list(files.get_fragments())))
    with _storage_errors(url):
        values = files.to_table(columns=[column], use_threads=_native(files)).column(column)
    found = pc.max(values).as_py()
    return None if found is None else pd.Timestamp(found).tz_convert("UTC")
