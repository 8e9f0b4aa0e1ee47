"""Live hourly rows on Delta: the hours a micro-batch touched, recomputed from raw_data (and trades) and upserted.

`hourly_metrics` holds one row per (symbol, window_start) with every column of
`transforms.hourly_rows` (quote metrics from raw_data, trade metrics from trades) plus:

- `is_final`: the hour's end plus `allowed_lateness` lies behind the stream's event-time clock
  (the newest event_time stored: `event_clock`). Before that the row is live (provisional) and
  follows the ticks as they arrive.
- `revision`: 1 for a row as first finalised; each later change of a final row (a tick that
  arrived after the hour was final) adds 1. Changes while the hour is live do not count.
- `updated_at`: when the row was last written (processing time, UTC).

Each call recomputes the touched hours from raw_data (the deduplicated ticks), so a row always
equals a recomputation from raw_data whatever the batch boundaries or arrival order, and a
replayed batch rewrites identical values. The recomputed rows are merged in the driver with the
stored rows of their dates (`_merged_rows`): new hours inserted, hours whose tick count changed
updated (a new tick is the only way an hour's values change: raw_data stores each tick once), and
live hours that the event clock has passed finalised, with or without new ticks of their own. The
date partitions holding a change are then rewritten in one Delta overwrite (`replaceWhere`).

The overwrite removes the files of those partitions, so an OPTIMIZE committed beside it
(`btcstream compact`) can make it fail with a concurrent-modification conflict; the upsert is a
recomputation, so it is simply run again (`CONFLICT_RETRIES`). The job is the table's only writer.

Called by the job's one query after each batch's raw_data write (`btcstream.streaming.job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

from btcstream.names import HOURLY_COLUMNS, HOURLY_LIFECYCLE_COLUMNS, HOURLY_PARTITION_COLUMNS, RAW_PARTITION_COLUMNS
from btcstream.storage.delta_conflicts import commit_conflicts
from btcstream.streaming import transforms
from btcstream.streaming.delta_batches import utc

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from btcstream.streaming.hour_partials import HourlyPartials

log = logging.getLogger(__name__)

HOUR_KEY = ("symbol", "window_start")
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class HourlyCounts:
    """What one upsert did to hourly_metrics."""

    hours: int  # touched (symbol, hour) keys recomputed
    opened: int  # rows inserted
    updated: int  # rows whose values changed
    revised: int  # of those, rows that were already final (revision + 1)
    finalised: int  # live rows that became final


@dataclass
class LiveDates:
    """The dates holding live (not final) hourly rows, as known to one writer; None: not read yet.

    The job keeps one across batches, so each upsert reads only the date partitions it may change
    (the touched dates and these) instead of the whole table.
    """

    dates: set[date] | None = None


def upsert_hours(spark: SparkSession, raw_url: str, hourly_url: str,
                 touched: DataFrame | Sequence[tuple[str, datetime]], event_clock: datetime,
                 allowed_lateness: timedelta, live: LiveDates | None = None, *, trades_url: str | None = None,
                 grid_seconds: int = transforms.RV_GRID_SECONDS,
                 partials: HourlyPartials | None = None) -> HourlyCounts:
    """Recompute the (symbol, window_start) hours in `touched` from raw_data and MERGE them into hourly_metrics.

    `touched`: (symbol, hour start) pairs (UTC), or a DataFrame of those columns. Retried when a
    concurrent commit (an OPTIMIZE) conflicts with the MERGE: the recomputation is idempotent, so
    running it again gives the same rows. `live`: the writer's `LiveDates` (kept up to date here);
    without it the whole table is read to find the live rows. `trades_url`: the trades table, whose
    trades of the touched hours give the trade columns (absent table: no trades). `grid_seconds`: the
    realized-volatility grid (`Settings.rv_grid`). `partials`: the job's hours kept across batches
    (`btcstream.streaming.hour_partials`, already updated with this batch): the rows come from them
    instead of a recomputation from the tables.
    """
    conflicts = commit_conflicts()
    if not isinstance(touched, (list, tuple)):
        touched = [(row[0], utc(row[1])) for row in touched.select(*HOUR_KEY).distinct().collect()]
    keys = sorted({(symbol, utc(start)) for symbol, start in touched})
    if not keys:
        return HourlyCounts(0, 0, 0, 0, 0)
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return _upsert_once(spark, raw_url, hourly_url, keys, event_clock, allowed_lateness, live or LiveDates(),
                                trades_url, grid_seconds, partials)
        except conflicts as conflict:
            if attempt == CONFLICT_RETRIES:
                raise
            log.info("hourly upsert conflicted with a concurrent commit (%s); retrying (%d/%d)",
                     type(conflict).__name__, attempt, CONFLICT_RETRIES)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _upsert_once(spark: SparkSession, raw_url: str, hourly_url: str, keys: list[tuple[str, datetime]],
                 event_clock: datetime, allowed_lateness: timedelta, live: LiveDates, trades_url: str | None,
                 grid_seconds: int, partials: HourlyPartials | None = None) -> HourlyCounts:
    """One recomputation of the touched hours and one rewrite of the date partitions that changed.

    The hours are few (symbols x hours a batch touched): their rows come from the job's kept partials
    (`partials`), else they are computed from raw_data and trades in one Spark job and collected; the
    stored rows of their dates (and every live row, which the clock may finalise)
    are read in the driver with delta-rs; the new rows are merged with them in the driver
    (`_merged_rows`), and only the date partitions holding a change are rewritten, with one Delta
    overwrite restricted to them (`replaceWhere`). That replaced a Delta MERGE: same result, but the
    MERGE's own scans, joins and rewrite took 3.3 s of a live 1 s-trigger batch of ~100 ticks, this
    about a third of it (docs/streaming.md). Nothing changed: no commit at all.
    """
    from delta.tables import DeltaTable

    started = time.perf_counter()
    if partials is not None:
        schema = _hourly_schema(spark, grid_seconds)
        now = datetime.now(timezone.utc)
        fresh = [{**row, "is_final": False, "revision": 1, "updated_at": now, "date": row["window_start"].date()}
                 for row in partials.rows(keys)]
    else:
        raw = touched_rows(spark.read.format("delta").load(raw_url), keys, "event_time")
        trades = None
        if trades_url is not None and DeltaTable.isDeltaTable(spark, trades_url):
            trades = touched_rows(spark.read.format("delta").load(trades_url), keys, "trade_time")
        computed = _with_lifecycle(transforms.hourly_rows(raw, trades, grid_seconds))
        schema = computed.schema
        fresh = [row.asDict() for row in computed.collect()]
    computed_s = time.perf_counter() - started
    final_before = event_clock - allowed_lateness
    stored = _stored_rows(hourly_url, {row["date"] for row in fresh}, live)
    rows, counts = _merged_rows(stored, fresh, final_before, datetime.now(timezone.utc))
    changed_dates = sorted({row["date"] for row in rows if row.get("_changed")})
    if changed_dates:
        partitions = [{k: v for k, v in row.items() if k != "_changed"} for row in rows if row["date"] in changed_dates]
        frame = spark.createDataFrame(partitions, schema)
        writer = frame.write.format("delta").partitionBy(*HOURLY_PARTITION_COLUMNS)
        if stored is None:
            writer.mode("append").save(hourly_url)
        else:
            dates = ", ".join(f"DATE'{date.isoformat()}'" for date in changed_dates)
            # mergeSchema: tables written before the trade columns gain them.
            (writer.mode("overwrite").option("replaceWhere", f"date IN ({dates})").option("mergeSchema", "true")
             .save(hourly_url))
    live.dates = {row["date"] for row in rows if not row["is_final"]}
    log.debug("hourly upsert of %d hours: recomputed in %.2f s, written in %.2f s (%d date partitions)",
              len(fresh), computed_s, time.perf_counter() - started - computed_s, len(changed_dates))
    return HourlyCounts(hours=len(fresh), **counts)


def _with_lifecycle(hourly: DataFrame) -> DataFrame:
    """Hourly rows (`HOURLY_COLUMNS`) as the table stores them: live, revision 1, updated now, dated."""
    from pyspark.sql import functions as F

    return (hourly.withColumn("is_final", F.lit(False))
            .withColumn("revision", F.lit(1))
            .withColumn("updated_at", F.current_timestamp())
            .withColumn("date", F.to_date("window_start"))
            .select(*HOURLY_COLUMNS, *HOURLY_LIFECYCLE_COLUMNS, *HOURLY_PARTITION_COLUMNS))


_SCHEMAS: dict[tuple[int, int], Any] = {}
# The enriched tick columns `transforms.hourly_metrics` reads: an empty frame of them gives the hourly schema.
_QUOTE_COLUMNS = ("symbol string, event_time timestamp, update_id long, mid_price double, spread double, "
                  "spread_bps double, top_of_book_liquidity double, volume_24h double")


def _hourly_schema(spark: SparkSession, grid_seconds: int):
    """The schema `_with_lifecycle(transforms.hourly_rows(...))` has, from empty frames (no table read)."""
    key = (id(spark), grid_seconds)
    if key not in _SCHEMAS:
        quotes = spark.createDataFrame([], _QUOTE_COLUMNS)
        _SCHEMAS[key] = _with_lifecycle(transforms.hourly_rows(quotes, None, grid_seconds)).schema
    return _SCHEMAS[key]


def _merged_rows(stored: list[dict] | None, fresh: list[dict], final_before: datetime,
                 now: datetime) -> tuple[list[dict], dict[str, int]]:
    """The hourly rows after merging the recomputed `fresh` rows into the `stored` ones; counts.

    Per (symbol, window_start):
    - new hour: inserted (opened), final at once when window_end <= final_before;
    - stored hour whose tick_count or trade_count changed (a new tick or trade is the only way an
      hour's values change: raw_data and trades store each once): metrics replaced (updated); if it
      was final already, its
      revision + 1 (revised);
    - live hour whose window_end <= final_before: is_final set (finalised), with or without new ticks.
    Changed rows get `updated_at` = now and a `_changed` mark; unchanged rows are kept as stored.
    """
    by_key = {(row["symbol"], utc(row["window_start"])): dict(row) for row in (stored or [])}
    counts = {"opened": 0, "updated": 0, "revised": 0, "finalised": 0}
    for row in fresh:
        key = (row["symbol"], utc(row["window_start"]))
        ends_before = utc(row["window_end"]) <= final_before
        old = by_key.get(key)
        if old is None:
            by_key[key] = {**row, "is_final": ends_before, "revision": 1, "updated_at": now, "_changed": True}
            counts["opened"] += 1
        elif old["tick_count"] != row["tick_count"] or old.get("trade_count") != row["trade_count"]:
            by_key[key] = {**row, "is_final": old["is_final"] or ends_before,
                           "revision": old["revision"] + (1 if old["is_final"] else 0), "updated_at": now,
                           "_changed": True}
            counts["updated"] += 1
            counts["revised"] += 1 if old["is_final"] else 0
            counts["finalised"] += 1 if ends_before and not old["is_final"] else 0
    for row in by_key.values():
        if not row["is_final"] and utc(row["window_end"]) <= final_before:
            row.update(is_final=True, updated_at=now, _changed=True)
            counts["finalised"] += 1
    return list(by_key.values()), counts


def _stored_rows(url: str, dates: set[date], live: LiveDates) -> list[dict] | None:
    """The stored hourly rows of `dates` and of the dates holding live rows; None before the table exists.

    Without `live.dates` known yet (first call in a process) the whole table is read once to find
    the live rows. Read in the driver with delta-rs, in this thread (Arrow threads calling into
    delta-rs' Python filesystem handler on HDFS can abort the process at exit: see
    storage.readers._scan_pyarrow).
    """
    import pyarrow.compute as pc
    from deltalake import DeltaTable as LogReader

    if not LogReader.is_deltatable(url):
        return None
    table = LogReader(url)
    if live.dates is None:
        everything = table.to_pyarrow_dataset().to_table(use_threads=False)
        keep = pc.or_(pc.invert(everything["is_final"]),
                      pc.is_in(everything["date"], value_set=_date_array(dates)))
        return everything.filter(keep).to_pylist()
    wanted = sorted(date.isoformat() for date in dates | live.dates)
    if not wanted:
        return []
    files = table.to_pyarrow_dataset(file_pruning_predicate=[("date", "in", wanted)])
    return files.to_table(use_threads=False).to_pylist()


def _date_array(dates: set[date]):
    """A pyarrow date32 array of Python dates."""
    import pyarrow as pa

    return pa.array(sorted(dates), type=pa.date32())


def touched_hours(ticks: DataFrame) -> DataFrame:
    """The (symbol, window_start) keys of the hours `ticks` fall in."""
    from pyspark.sql import functions as F

    return ticks.select("symbol", F.date_trunc("hour", "event_time").alias("window_start")).distinct()


def touched_rows(table: DataFrame, keys: list[tuple[str, datetime]], time_column: str) -> DataFrame:
    """The rows of a (date, hour)-partitioned table (raw_data, trades) in the touched (symbol, hour) keys."""
    return table.where(_in_partitions(keys)).where(_in_hours(keys, time_column))


def _in_partitions(keys: list[tuple[str, datetime]]):
    """A filter on the (date, hour) partition columns (file pruning) for the keys' hours."""
    from pyspark.sql import functions as F

    date_column, hour_column = RAW_PARTITION_COLUMNS
    condition = None
    for day, hour in sorted({(start.date(), start.hour) for _, start in keys}):
        one = (F.col(date_column) == F.lit(day)) & (F.col(hour_column) == F.lit(hour))
        condition = one if condition is None else condition | one
    return condition


def _in_hours(keys: list[tuple[str, datetime]], time_column: str = "event_time"):
    """Only the ticks of the touched (symbol, hour) keys (other symbols of those hours are not recomputed)."""
    from pyspark.sql import functions as F

    by_symbol: dict[str, list[datetime]] = {}
    for symbol, start in keys:
        by_symbol.setdefault(symbol, []).append(start)
    hour = F.date_trunc("hour", time_column)
    condition = None
    for symbol, starts in sorted(by_symbol.items()):
        one = (F.col("symbol") == F.lit(symbol)) & hour.isin([F.lit(start) for start in starts])
        condition = one if condition is None else condition | one
    return condition
