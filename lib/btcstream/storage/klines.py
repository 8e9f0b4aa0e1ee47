"""The `<root>/klines` Delta table: Binance klines stored by `btcstream backfill`, and read back as pandas.

One row per bar, keyed by (symbol, interval, open_time); partitioned by `interval` and `date` (the
UTC date of open_time). Columns, in order (`KLINES_COLUMNS`): symbol, interval, open_time, close_time
(timestamps, UTC), open, high, low, close, volume (base asset), quote_volume, trade_count,
taker_buy_volume, taker_buy_quote_volume, ingested_at (UTC, when this run wrote the row), date.

Written with delta-rs (`deltalake`: no JVM, `hdfs://` natively, `file://` in tests). A write is
idempotent through an anti join before a blind append (`KlinesTable.append_new`): the keys already
stored in the batch's time span are read (only the partitions it touches) and those rows dropped.
Why not an insert-only MERGE: a blind append never conflicts with an OPTIMIZE committed beside it
(a MERGE reads files a compaction may remove, and fails), the same choice the streaming job made for
raw_data (docs/streaming.md); and the planner of the backfill reads those keys anyway. The cost: two
writers appending the same bars in the instant between one's key read and its commit could both
store them, so run one backfill per table at a time (a rerun afterwards never adds a duplicate).

On HDFS each data file costs about 0.1 s to close (the client retries `complete` until the block is
reported) and each commit about 1 s, and an hourly batch touches one `date` partition per day: a batch
touching many days is split into up to `MAX_PARALLEL_COMMITS` appends of disjoint dates, committed
concurrently (measured: 300 daily files 34 s in one commit, 8.5 s in eight).
Not for: fetching klines (`btcstream.ingest.backfill`), or estimators on them (`btcstream.analytics`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from btcstream.ingest.sources.binance import Kline
from btcstream.names import KLINES_DATASET
from btcstream.settings import Settings
from btcstream.storage.readers import TimeRange, read_dataset

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

KLINES_COLUMNS: tuple[str, ...] = (
    "symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume", "quote_volume",
    "trade_count", "taker_buy_volume", "taker_buy_quote_volume", "ingested_at", "date",
)
KLINES_PARTITION_COLUMNS: tuple[str, ...] = ("interval", "date")
KLINES_KEY: tuple[str, ...] = ("symbol", "interval", "open_time")
DAY_MS = 86_400_000
MAX_PARALLEL_COMMITS = 8  # concurrent appends of one batch (disjoint dates); 16 measured no faster on HDFS
DATES_PER_COMMIT = 32  # fewer dates than this per append are not worth another commit


def klines_schema() -> pa.Schema:
    """The Arrow schema of the table: timestamps in microseconds UTC, like Spark's TIMESTAMP in Delta."""
    import pyarrow as pa

    utc = pa.timestamp("us", tz="UTC")
    types = {"symbol": pa.string(), "interval": pa.string(), "open_time": utc, "close_time": utc,
             "trade_count": pa.int64(), "ingested_at": utc, "date": pa.date32()}
    return pa.schema([(name, types.get(name, pa.float64())) for name in KLINES_COLUMNS])


class KlinesTable:
    """`<root>/klines`: the stored keys of a time span, and appends that skip keys already stored."""

    def __init__(self, settings: Settings, max_parallel_commits: int = MAX_PARALLEL_COMMITS) -> None:
        self.settings = settings
        self.url = settings.storage_url(KLINES_DATASET)
        self.max_parallel_commits = max(1, max_parallel_commits)
        self.commits = 0  # made by this object

    def stored_open_times(self, symbol: str, interval: str, start: datetime, end: datetime) -> np.ndarray:
        """Open times (epoch ms, sorted) of the stored `symbol` `interval` bars with open_time in [start, end)."""
        frame = read_dataset(self.settings, KLINES_DATASET, "open_time", TimeRange(start, end), [symbol],
                             empty_columns=KLINES_COLUMNS)
        times = frame.loc[frame["interval"] == interval, "open_time"]
        if times.empty:
            return np.empty(0, dtype=np.int64)
        return np.sort(pd.to_datetime(times, utc=True).dt.as_unit("ms").astype("int64").to_numpy())

    def append_new(self, symbol: str, interval: str, bars: Sequence[Kline]) -> int:
        """Append the bars whose key is not stored yet (first of duplicates in `bars`); returns rows added.

        Nothing new: no commit at all, so a rerun leaves the table's version unchanged.
        """
        if not bars:
            return 0
        open_ms = np.array([_epoch_ms(bar.open_time) for bar in bars], dtype=np.int64)
        _, first = np.unique(open_ms, return_index=True)
        keep = np.zeros(len(bars), dtype=bool)
        keep[first] = True
        start, end = _utc_ms(int(open_ms.min())), _utc_ms(int(open_ms.max()) + 1)
        keep &= ~np.isin(open_ms, self.stored_open_times(symbol, interval, start, end))
        new = [bar for bar, wanted in zip(bars, keep) if wanted]
        if not new:
            return 0
        self._append(_arrow_rows(symbol.upper(), interval, new, datetime.now(timezone.utc)))
        return len(new)

    def _append(self, rows: pa.Table) -> None:
        """Blind appends of `rows`: one commit, or several concurrent ones of disjoint dates for a wide batch."""
        import pyarrow.compute as pc
        from deltalake import DeltaTable, write_deltalake

        dates = np.unique(rows.column("date").cast("int32").to_numpy())
        commits = min(self.max_parallel_commits, max(1, len(dates) // DATES_PER_COMMIT))
        groups = [rows.filter(pc.is_in(rows.column("date").cast("int32"), value_set=_int32(part)))
                  for part in np.array_split(dates, commits)]

        def append(group: pa.Table) -> None:
            write_deltalake(self.url, group, mode="append", partition_by=list(KLINES_PARTITION_COLUMNS))

        if not DeltaTable.is_deltatable(self.url):  # the first commit creates the table: alone
            append(groups.pop(0))
            self.commits += 1
        if len(groups) == 1:
            append(groups[0])
        elif groups:
            with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="klines-append") as pool:
                for finished in [pool.submit(append, group) for group in groups]:
                    finished.result()  # the first failure is raised, after every append has ended
        self.commits += len(groups)
        log.debug("appended %d klines in %d commit(s) to %s", rows.num_rows, len(groups), self.url)


def read_klines(settings: Settings, symbol: str | Sequence[str] | None = None, interval: str | None = "1h",
                start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Stored klines of `symbol` (one, several, or None: all) and `interval` (None: all), open_time in [start, end).

    Times are tz-aware UTC, `date` an ISO string (as every reader returns it), rows sorted by symbol
    then open_time, columns `KLINES_COLUMNS`. No table yet: an empty frame with those columns.
    """
    symbols = None if symbol is None else [symbol] if isinstance(symbol, str) else list(symbol)
    frame = read_dataset(settings, KLINES_DATASET, "open_time", TimeRange(_utc(start), _utc(end)), symbols,
                         empty_columns=KLINES_COLUMNS)
    if interval is not None:
        frame = frame[frame["interval"] == interval]
    return frame.loc[:, list(KLINES_COLUMNS)].reset_index(drop=True)


def _arrow_rows(symbol: str, interval: str, bars: Sequence[Kline], ingested_at: datetime) -> pa.Table:
    import pyarrow as pa

    schema = klines_schema()
    open_ms = np.array([_epoch_ms(bar.open_time) for bar in bars], dtype=np.int64)
    close_ms = [None if bar.close_time is None else _epoch_ms(bar.close_time) * 1000 for bar in bars]
    count = len(bars)
    columns = {
        "symbol": pa.array([symbol] * count, pa.string()),
        "interval": pa.array([interval] * count, pa.string()),
        "open_time": pa.array(open_ms * 1000, pa.int64()).cast(schema.field("open_time").type),
        "close_time": pa.array(close_ms, pa.int64()).cast(schema.field("close_time").type),
        "open": pa.array([bar.open for bar in bars], pa.float64()),
        "high": pa.array([bar.high for bar in bars], pa.float64()),
        "low": pa.array([bar.low for bar in bars], pa.float64()),
        "close": pa.array([bar.close for bar in bars], pa.float64()),
        "volume": pa.array([bar.volume for bar in bars], pa.float64()),
        "quote_volume": pa.array([bar.quote_volume for bar in bars], pa.float64()),
        "trade_count": pa.array([bar.trades for bar in bars], pa.int64()),
        "taker_buy_volume": pa.array([bar.taker_buy_volume for bar in bars], pa.float64()),
        "taker_buy_quote_volume": pa.array([bar.taker_buy_quote_volume for bar in bars], pa.float64()),
        "ingested_at": pa.array([ingested_at] * count, schema.field("ingested_at").type),
        "date": pa.array(open_ms // DAY_MS, pa.int64()).cast(pa.int32()).cast(pa.date32()),
    }
    return pa.table(columns, schema=schema)


def _int32(values: np.ndarray):
    import pyarrow as pa

    return pa.array(values.astype(np.int32), pa.int32())


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _utc_ms(epoch_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=epoch_ms)


def _utc(moment: datetime | None) -> datetime | None:
    """A pandas Timestamp becomes a datetime; naive times are left for TimeRange to refuse in one line."""
    return moment.to_pydatetime() if isinstance(moment, pd.Timestamp) else moment
