"""Live hourly rows on Delta: the hours a micro-batch touched, recomputed from raw_data and upserted.

`hourly_metrics` holds one row per (symbol, window_start) with every metric of
`transforms.hourly_metrics` plus:

- `is_final`: the hour's end plus `allowed_lateness` lies behind the stream's event-time clock
  (the newest event_time stored: `event_clock`). Before that the row is live (provisional) and
  follows the ticks as they arrive.
- `revision`: 1 for a row as first finalised; each later change of a final row (a tick that
  arrived after the hour was final) adds 1. Changes while the hour is live do not count.
- `updated_at`: when the row was last written (processing time, UTC).

Each call recomputes the touched hours from raw_data (the deduplicated ticks), so a row always
equals a recomputation from raw_data whatever the batch boundaries or arrival order, and a
replayed batch rewrites identical values. One MERGE on (symbol, window_start) then inserts new
hours, updates hours whose tick count changed (a new tick is the only way an hour's values
change: raw_data stores each (symbol, event_time) once) and, through "not matched by source",
finalises live hours that the event clock has passed without new ticks.

The MERGE reads the hourly table's files, so an OPTIMIZE committed beside it (`btcstream compact`)
can make it fail with a concurrent-modification conflict; the upsert is a recomputation, so it
is simply run again (`CONFLICT_RETRIES`).

Called by the job's one query after each batch's raw_data write (`btcstream.streaming.job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
import logging
import time
from typing import TYPE_CHECKING, Sequence

from btcstream.names import HOURLY_COLUMNS, HOURLY_LIFECYCLE_COLUMNS, HOURLY_PARTITION_COLUMNS, RAW_PARTITION_COLUMNS
from btcstream.streaming import transforms
from btcstream.streaming.delta_batches import table_version, utc

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

HOUR_KEY = ("symbol", "window_start")
CONFLICT_RETRIES = 5
METRIC_COLUMNS = tuple(name for name in HOURLY_COLUMNS if name not in HOUR_KEY)


@dataclass(frozen=True)
class HourlyCounts:
    """What one upsert did to hourly_metrics."""

    hours: int  # touched (symbol, hour) keys recomputed
    opened: int  # rows inserted
    updated: int  # rows whose values changed
    revised: int  # of those, rows that were already final (revision + 1)
    finalised: int  # live rows that became final


def upsert_hours(spark: SparkSession, raw_url: str, hourly_url: str,
                 touched: DataFrame | Sequence[tuple[str, datetime]], event_clock: datetime,
                 allowed_lateness: timedelta) -> HourlyCounts:
    """Recompute the (symbol, window_start) hours in `touched` from raw_data and MERGE them into hourly_metrics.

    `touched`: (symbol, hour start) pairs (UTC), or a DataFrame of those columns. Retried when a
    concurrent commit (an OPTIMIZE) conflicts with the MERGE: the recomputation is idempotent, so
    running it again gives the same rows.
    """
    from delta.exceptions import DeltaConcurrentModificationException

    if not isinstance(touched, (list, tuple)):
        touched = [(row[0], utc(row[1])) for row in touched.select(*HOUR_KEY).distinct().collect()]
    keys = sorted({(symbol, utc(start)) for symbol, start in touched})
    if not keys:
        return HourlyCounts(0, 0, 0, 0, 0)
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return _upsert_once(spark, raw_url, hourly_url, keys, event_clock, allowed_lateness)
        except DeltaConcurrentModificationException as conflict:
            if attempt == CONFLICT_RETRIES:
                raise
            log.info("hourly upsert conflicted with a concurrent commit (%s); retrying (%d/%d)",
                     type(conflict).__name__, attempt, CONFLICT_RETRIES)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _upsert_once(spark: SparkSession, raw_url: str, hourly_url: str, keys: list[tuple[str, datetime]],
                 event_clock: datetime, allowed_lateness: timedelta) -> HourlyCounts:
    """One recomputation and MERGE of the touched hours.

    The hours are few (symbols x hours a batch touched), so they are computed in one Spark job,
    collected, compared with the stored rows in the driver (delta-rs) to count revisions, and
    MERGEd from that small local relation: no second pass over raw_data.
    """
    from pyspark.sql import functions as F

    raw = (spark.read.format("delta").load(raw_url).where(_in_partitions(keys))
           .where(_in_hours(keys)))
    final_before = F.lit(event_clock) - F.expr(f"INTERVAL {int(allowed_lateness.total_seconds())} SECONDS")
    now = F.current_timestamp()
    computed = (transforms.hourly_metrics(raw)
                .withColumn("is_final", F.col("window_end") <= final_before)
                .withColumn("revision", F.lit(1))
                .withColumn("updated_at", now)
                .withColumn("date", F.to_date("window_start"))
                .select(*HOURLY_COLUMNS, *HOURLY_LIFECYCLE_COLUMNS, *HOURLY_PARTITION_COLUMNS))
    started = time.perf_counter()
    rows = computed.collect()
    computed_s = time.perf_counter() - started
    hours = spark.createDataFrame(rows, computed.schema)
    table = _hourly_table(spark, hourly_url, hours)
    before = table_version(hourly_url)
    revised = _revised(hourly_url, rows)
    changed = "s.tick_count <> t.tick_count"
    (table.alias("t").merge(hours.alias("s"), " AND ".join(f"t.{k} = s.{k}" for k in HOUR_KEY))
     .whenMatchedUpdate(condition=f"{changed} OR (s.is_final AND NOT t.is_final)", set={
         **{name: f"s.{name}" for name in METRIC_COLUMNS},
         "is_final": "s.is_final OR t.is_final",
         "revision": f"t.revision + CASE WHEN t.is_final AND {changed} THEN 1 ELSE 0 END",
         "updated_at": "s.updated_at"})
     .whenNotMatchedInsertAll()
     .whenNotMatchedBySourceUpdate(condition=(F.col("t.window_end") <= final_before) & ~F.col("t.is_final"),
                                   set={"is_final": F.lit(True), "updated_at": now})
     .execute())
    merged_s = time.perf_counter() - started - computed_s
    metrics = _merge_metrics(hourly_url, before)
    log.debug("hourly upsert of %d hours: recomputed in %.2f s, merged in %.2f s", len(rows), computed_s, merged_s)
    return HourlyCounts(hours=len(rows), opened=int(metrics.get("numTargetRowsInserted", 0)),
                        updated=int(metrics.get("numTargetRowsMatchedUpdated", 0)), revised=revised,
                        finalised=int(metrics.get("numTargetRowsNotMatchedBySourceUpdated", 0)))


def touched_hours(ticks: DataFrame) -> DataFrame:
    """The (symbol, window_start) keys of the hours `ticks` fall in."""
    from pyspark.sql import functions as F

    return ticks.select("symbol", F.date_trunc("hour", "event_time").alias("window_start")).distinct()


def _merge_metrics(url: str, before: int) -> dict:
    """The operation metrics of this writer's MERGE: the first MERGE after version `before` (an
    OPTIMIZE may have committed in between), read from the Delta log in the driver."""
    from deltalake import DeltaTable as LogReader

    commits = [c for c in LogReader(url).history(20)
               if c.get("operation") == "MERGE" and int(c.get("version", -1)) > before]
    return min(commits, key=lambda c: int(c["version"])).get("operationMetrics") or {} if commits else {}


def _in_partitions(keys: list[tuple[str, datetime]]):
    """A raw_data filter on its (date, hour) partition columns (file pruning) for the keys' hours."""
    from pyspark.sql import functions as F

    date_column, hour_column = RAW_PARTITION_COLUMNS
    condition = None
    for date, hour in sorted({(start.date(), start.hour) for _, start in keys}):
        one = (F.col(date_column) == F.lit(date)) & (F.col(hour_column) == F.lit(hour))
        condition = one if condition is None else condition | one
    return condition


def _in_hours(keys: list[tuple[str, datetime]]):
    """Only the ticks of the touched (symbol, hour) keys (other symbols of those hours are not recomputed)."""
    from pyspark.sql import functions as F

    by_symbol: dict[str, list[datetime]] = {}
    for symbol, start in keys:
        by_symbol.setdefault(symbol, []).append(start)
    hour = F.date_trunc("hour", "event_time")
    condition = None
    for symbol, starts in sorted(by_symbol.items()):
        one = (F.col("symbol") == F.lit(symbol)) & hour.isin([F.lit(start) for start in starts])
        condition = one if condition is None else condition | one
    return condition


def _hourly_table(spark: SparkSession, url: str, like: DataFrame):
    """The hourly_metrics Delta table at `url`, created empty (partitioned by date) on first use."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, url):
        like.limit(0).write.format("delta").mode("ignore").partitionBy(*HOURLY_PARTITION_COLUMNS).save(url)
    return DeltaTable.forPath(spark, url)


def _revised(url: str, rows: list) -> int:
    """How many of the recomputed `rows` change a row that is already final (late ticks after finality).

    Reads only the stored rows of the rows' dates, and only the columns compared (delta-rs, in the driver).
    """
    from deltalake import DeltaTable as LogReader

    if not rows or not LogReader.is_deltatable(url):
        return 0
    dates = sorted({row["date"].isoformat() for row in rows})
    # Scanned in this thread: Arrow threads calling into delta-rs' Python filesystem handler (HDFS)
    # can abort the process at exit (see btcstream.storage.readers._scan_pyarrow).
    files = LogReader(url).to_pyarrow_dataset(file_pruning_predicate=[("date", "in", dates)])
    stored = files.to_table(columns=["symbol", "window_start", "tick_count", "is_final"], use_threads=False).to_pylist()
    final_counts = {(r["symbol"], utc(r["window_start"])): r["tick_count"] for r in stored if r["is_final"]}
    return sum(1 for row in rows if final_counts.get((row["symbol"], utc(row["window_start"])), row["tick_count"])
               != row["tick_count"])
