"""One micro-batch of Kafka records into the Delta tables: quarantine and raw_data from one read.

The building block of the Delta streaming job (issue "Streaming core on Delta Lake"): a
`foreachBatch` function receives each micro-batch of the topic once, parses every record once
and writes both tables in the same batch:

- quarantine: the refused records, appended with Delta's idempotent-write options
  (`txnAppId` = the writer's id, `txnVersion` = the batch id), so a batch replayed after a crash
  appends nothing twice;
- raw_data: the valid ticks, deduplicated on (symbol, event_time) inside the batch, then an
  insert-only MERGE into the table on the same key, limited to the (date, hour) partitions the
  batch touches. No event-time watermark is involved, so a tick is never dropped for arriving
  late: out-of-order writers and catch-ups keep every tick, exactly once. The MERGE carries the
  same idempotency marks (Delta's `spark.databricks.delta.write.txnAppId/txnVersion` session
  confs, set for this statement only); without them it would still insert nothing on a replay,
  since every key is already there.

Not wired into `btcstream stream` yet (the job still writes file sinks); `bench/` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from btcstream.names import QUARANTINE_PARTITION_COLUMNS, RAW_PARTITION_COLUMNS
from btcstream.streaming import parse, transforms

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
DEDUP_KEY = ("symbol", "event_time")


@dataclass(frozen=True)
class BatchCounts:
    """What one micro-batch did: records read, ticks inserted, duplicates skipped, records refused."""

    batch_id: int
    records: int
    quarantined: int
    valid: int
    inserted: int  # new (symbol, event_time) keys written to raw_data

    @property
    def duplicates(self) -> int:
        """Valid ticks whose key was already stored or repeated inside the batch."""
        return self.valid - self.inserted


@dataclass(frozen=True)
class DeltaBatchWriter:
    """Writes each micro-batch to `raw_url` and `quarantine_url`; `app_id` names the writer for idempotency.

    One writer id per query checkpoint: batch ids restart from 0 with a new checkpoint, so a new
    checkpoint needs a new `app_id` (else its first batches would be taken for replays).
    """

    raw_url: str
    quarantine_url: str
    app_id: str

    def __call__(self, kafka_rows: DataFrame, batch_id: int) -> BatchCounts:
        """The `foreachBatch` function: classify once, write both tables, return the counts."""
        classified = parse.classify(kafka_rows).persist()
        try:
            refused = parse.quarantined(classified)
            enriched = transforms.enrich(parse.valid_ticks(classified))
            records = classified.count()
            quarantined = self._append_quarantine(refused, batch_id)
            valid, inserted = self._merge_raw(enriched, batch_id)
        finally:
            classified.unpersist()
        return BatchCounts(batch_id, records, quarantined, valid, inserted)

    def _append_quarantine(self, refused: DataFrame, batch_id: int) -> int:
        from pyspark.sql import functions as F

        rows = refused.withColumn("date", F.to_date("kafka_timestamp")).cache()
        try:
            count = rows.count()
            if count:
                (rows.write.format("delta").mode("append").partitionBy(*QUARANTINE_PARTITION_COLUMNS)
                 .option("txnAppId", self.app_id).option("txnVersion", batch_id).save(self.quarantine_url))
            return count
        finally:
            rows.unpersist()

    def _merge_raw(self, enriched: DataFrame, batch_id: int) -> tuple[int, int]:
        """(valid ticks in the batch, keys inserted): insert-only MERGE on (symbol, event_time)."""
        spark = enriched.sparkSession
        ticks = enriched.dropDuplicates(list(DEDUP_KEY)).cache()
        try:
            valid = enriched.count()
            partitions = [tuple(row) for row in ticks.select(*RAW_PARTITION_COLUMNS).distinct().collect()]
            if not partitions:
                return valid, 0
            table = _raw_table(spark, self.raw_url, ticks)
            before = _version(table)
            condition = " AND ".join(f"t.{key} = s.{key}" for key in DEDUP_KEY) + " AND " + _within(partitions)
            with _idempotent(spark, self.app_id, batch_id):
                table.alias("t").merge(ticks.alias("s"), condition).whenNotMatchedInsertAll().execute()
            return valid, _merged_rows_since(table, before)
        finally:
            ticks.unpersist()


def _raw_table(spark: SparkSession, url: str, like: DataFrame):
    """The raw_data Delta table at `url`, created empty (partitioned by date, hour) on first use."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, url):
        (like.limit(0).write.format("delta").mode("ignore").partitionBy(*RAW_PARTITION_COLUMNS).save(url))
    return DeltaTable.forPath(spark, url)


def _within(partitions: list[tuple]) -> str:
    """A MERGE condition keeping the target to the batch's (date, hour) partitions (file pruning)."""
    dates = sorted({str(date) for date, _ in partitions})
    hours = sorted({int(hour) for _, hour in partitions})
    date_list = ", ".join(f"DATE'{date}'" for date in dates)
    hour_list = ", ".join(str(hour) for hour in hours)
    return f"t.date IN ({date_list}) AND t.hour IN ({hour_list})"


def _version(table) -> int:
    """The table's newest version."""
    return int(table.history(1).select("version").collect()[0][0])


def _merged_rows_since(table, version: int) -> int:
    """Rows inserted by this writer's MERGE committed after `version` (0 when Delta skipped a replay)."""
    newer = table.history(10).where(f"version > {version} AND operation = 'MERGE'")
    return sum(int((row["operationMetrics"] or {}).get("numTargetRowsInserted", 0))
               for row in newer.select("operationMetrics").collect())


class _idempotent:
    """Set Delta's idempotent-DML session confs for one statement, then remove them."""

    def __init__(self, spark: SparkSession, app_id: str, batch_id: int) -> None:
        self.conf = spark.conf
        self.values = {TXN_APP_ID_CONF: app_id, TXN_VERSION_CONF: str(batch_id)}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.conf.set(key, value)

    def __exit__(self, *exc: object) -> None:
        for key in self.values:
            self.conf.unset(key)
