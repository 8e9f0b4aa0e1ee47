"""Wire the streaming job: Kafka -> (quarantine, raw_data) and raw_data -> hourly_metrics, as named queries.

Three queries, each with its own checkpoint under `<root>/checkpoints/`:

- `btcstream_quarantine`: Kafka -> records that fail parsing/validation -> `<root>/quarantine`
  (Parquet, partitioned by the Kafka timestamp's UTC date).
- `btcstream_raw`: Kafka -> valid ticks -> watermark on event_time (`allowed_lateness`) ->
  `dropDuplicatesWithinWatermark(symbol, event_time)` (in-memory state store, see `btcstream.clients.spark`)
  -> `enrich` -> `<root>/raw_data`
  (Parquet, partitioned by `date` and `hour` of event_time, one file per touched hour per batch).
  Ticks older than the watermark are dropped here and counted (`numRowsDroppedByWatermark`).
- `btcstream_hourly`: `<root>/raw_data` as a file stream (only files committed in the raw sink's
  `_spark_metadata` log) -> watermark -> `hourly_metrics` -> `<root>/hourly_metrics` (append:
  one final row per symbol and hour, written once the watermark passes the hour's end;
  partitioned by the UTC date of window_start; watermark delay `hourly_lateness`).

Why hourly reads raw_data rather than Kafka: deduplication and the late-tick cut happen once, so
hourly_metrics is exactly the hourly aggregation of raw_data, whatever the batch boundaries.
The hourly watermark delay is twice `allowed_lateness` so that it does not drop ticks raw kept
(see `hourly_lateness`); an hour is final about 2 x allowed_lateness after its end.

Exactly once: both Parquet sinks are Spark file sinks (a batch's files become visible only when
its entry is written to `_spark_metadata`), the Kafka offsets and the file-source progress are in
the checkpoints, and a re-run batch rewrites the same rows. Readers use
`btcstream.storage.manifest` so half-written files are never read.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from btcstream.clients.kafka import spark_kafka_options
from btcstream.names import (
    CHECKPOINT_FOLDERS,
    CHECKPOINTS_DIR,
    HOURLY_DATASET,
    HOURLY_PARTITION_COLUMNS,
    HOURLY_QUERY,
    QUARANTINE_DATASET,
    QUARANTINE_PARTITION_COLUMNS,
    QUARANTINE_QUERY,
    QUERY_NAMES,
    RAW_DATASET,
    RAW_PARTITION_COLUMNS,
    RAW_QUERY,
)
from btcstream.settings import Settings
from btcstream.streaming import parse, transforms
from btcstream.streaming.progress import ProgressWriter

log = logging.getLogger(__name__)

# Kafka schema of the source's rows (also used to build static test frames).
KAFKA_SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"


@dataclass(frozen=True)
class StreamPaths:
    """The URLs the job reads and writes under one storage root."""

    raw: str
    hourly: str
    quarantine: str
    checkpoints: dict[str, str]

    @classmethod
    def of(cls, settings: Settings) -> "StreamPaths":
        return cls(
            raw=settings.storage_url(RAW_DATASET),
            hourly=settings.storage_url(HOURLY_DATASET),
            quarantine=settings.storage_url(QUARANTINE_DATASET),
            checkpoints={name: settings.storage_url(CHECKPOINTS_DIR, folder) for name, folder in CHECKPOINT_FOLDERS.items()},
        )


def kafka_source(spark: SparkSession, settings: Settings) -> DataFrame:
    """The tick topic as a stream: earliest offsets on the first run, then the checkpoint's.

    failOnDataLoss stays true: if retention deleted offsets the job has not read yet, stopping
    loudly beats skipping ticks silently (restart from a new checkpoint to accept the loss).
    """
    return (spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .options(**{key: str(value) for key, value in spark_kafka_options(settings).items()})
            .option("subscribe", settings.topic)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
            .option("failOnDataLoss", "true")
            .load())


def hourly_lateness(allowed_lateness: str) -> str:
    """The hourly query's watermark delay: twice the raw query's (e.g. "10 minutes" -> "20 minutes").

    Why larger: Spark filters late rows with the watermark of the *previous* batch, so the raw
    query keeps some rows that are already below its current watermark; the hourly query, which
    reads them a trigger later, must not call them late. In live operation a batch spans seconds
    of event time, so the extra `allowed_lateness` is a wide margin; only a catch-up whose batches
    span more event time than that can still make it drop a row (counted in its late rows).
    """
    count, unit = allowed_lateness.split()
    return f"{2 * int(count)} {unit}"


def deduplicated_ticks(ticks: DataFrame, allowed_lateness: str) -> DataFrame:
    """Ticks with a watermark, each (symbol, event_time) kept once while within the watermark."""
    return ticks.withWatermark("event_time", allowed_lateness).dropDuplicatesWithinWatermark(["symbol", "event_time"])


def raw_schema(spark: SparkSession):
    """The schema of raw_data rows, derived from the transforms.

    The partition columns (date, hour) stay in it: the file source fills them from the directory
    names, and a schema without them fails its batch-schema check.
    """
    empty = spark.createDataFrame([], KAFKA_SCHEMA)
    return transforms.enrich(parse.valid_ticks(parse.classify(empty))).schema


def start_queries(spark: SparkSession, settings: Settings, *, queries: Iterable[str] = QUERY_NAMES,
                  trigger_interval_s: float | None = None) -> list[StreamingQuery]:
    """Start the job's named queries (stopping any active query of the same name first).

    Returns the started queries in `QUERY_NAMES` order. Progress of each batch is persisted for
    `btcstream status` (see `btcstream.streaming.progress`).
    """
    wanted = set(queries)
    unknown = wanted - set(QUERY_NAMES)
    if unknown:
        raise ValueError(f"unknown queries {sorted(unknown)}; expected some of {QUERY_NAMES}")
    interval = trigger_interval_s or settings.trigger_interval_s
    paths = StreamPaths.of(settings)
    # Parquet timestamps as int64 microseconds (UTC), readable by pyarrow/DuckDB without INT96 quirks.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # Checkpoints made before the in-memory state store was the default keep using RocksDB: upload
    # only each batch's changes there (snapshots in the background), for shorter batches.
    spark.conf.set("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
    _listen_for_progress(spark, settings)
    started: list[StreamingQuery] = []
    for name in QUERY_NAMES:
        if name not in wanted:
            continue
        stop_query(spark, name)
        writer = _writer(name, spark, settings, paths)
        query = writer.queryName(name).trigger(processingTime=f"{interval} seconds").start()
        log.info("started %s (id %s)", name, query.id)
        started.append(query)
    return started


def _writer(name: str, spark: SparkSession, settings: Settings, paths: StreamPaths):
    """The configured DataStreamWriter of one query (not started)."""
    if name == QUARANTINE_QUERY:
        _, refused = parse.split(kafka_source(spark, settings))
        refused = (refused.observe("quarantine", F.count(F.lit(1)).alias("rows"))
                   .withColumn("date", F.to_date("kafka_timestamp")))
        partitions = list(QUARANTINE_PARTITION_COLUMNS)
        return _parquet_sink(_one_file_per_partition(refused, partitions), paths.quarantine, paths.checkpoints[name],
                             partitions)
    if name == RAW_QUERY:
        ticks, _ = parse.split(kafka_source(spark, settings))
        enriched = transforms.enrich(deduplicated_ticks(ticks, settings.allowed_lateness))
        partitions = list(RAW_PARTITION_COLUMNS)
        return _parquet_sink(_one_file_per_partition(enriched, partitions), paths.raw, paths.checkpoints[name], partitions)
    _ensure_directory(spark, paths.raw)  # the file source needs its directory to exist
    raw = spark.readStream.schema(raw_schema(spark)).parquet(paths.raw)
    hourly = transforms.hourly_metrics(raw.withWatermark("event_time", hourly_lateness(settings.allowed_lateness)))
    hourly = hourly.withColumn("date", F.to_date("window_start"))
    partitions = list(HOURLY_PARTITION_COLUMNS)
    return _parquet_sink(_one_file_per_partition(hourly, partitions), paths.hourly, paths.checkpoints[name], partitions)


def _one_file_per_partition(frame: DataFrame, partitions: list[str]) -> DataFrame:
    """Rows of one output partition directory in one task, so a batch writes one file per directory.

    A tick a minute must not become several tiny files per batch. Hash-repartitioning by the
    partition columns does that while the work before it (parsing, deduplication state, the
    hourly aggregation) keeps all its tasks; `coalesce(1)` would have run all of it in one task.
    """
    return frame.repartition(*partitions)


def _parquet_sink(frame: DataFrame, path: str, checkpoint: str, partitions: list[str]):
    return (frame.writeStream.format("parquet").outputMode("append")
            .option("path", path).option("checkpointLocation", checkpoint)
            .partitionBy(*partitions))


def _ensure_directory(spark: SparkSession, url: str) -> None:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(url)
    path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).mkdirs(path)


def stop_query(spark: SparkSession, name: str) -> None:
    """Stop the active query called `name` in this session, if any."""
    for query in spark.streams.active:
        if query.name == name:
            log.info("stopping the running %s (id %s) before starting it again", name, query.id)
            query.stop()


def stop_queries(queries: Iterable[StreamingQuery]) -> None:
    """Stop queries, hourly first (it reads what raw writes); a stopped batch is re-run on restart."""
    for query in sorted(queries, key=lambda q: q.name != HOURLY_QUERY):
        if query.isActive:
            log.info("stopping %s", query.name)
            query.stop()
        # Spark reports the termination asynchronously, possibly after this process has exited.
        with _listeners_lock:
            for listener in _listeners.values():
                if query.name in listener.writers:
                    listener.writers[query.name].mark_stopped(query.name, None)


class _ProgressListener(StreamingQueryListener):
    """Persists the progress of btcstream's queries after every batch (and their idle/stop events)."""

    def __init__(self) -> None:
        self.writers: dict[str, ProgressWriter] = {}
        self.names: dict[str, str] = {}  # query id -> name (idle/terminated events carry only the id)

    def onQueryStarted(self, event) -> None:  # noqa: N802 (Spark's names)
        self.names[str(event.id)] = event.name or ""
        writer = self.writers.get(event.name or "")
        if writer is not None:
            writer.mark_started(event.name)

    def onQueryProgress(self, event) -> None:  # noqa: N802
        progress = json.loads(event.progress.json)
        writer = self.writers.get(progress.get("name") or "")
        if writer is not None:
            writer.record(progress)

    def onQueryIdle(self, event) -> None:  # noqa: N802
        name = self.names.get(str(event.id), "")
        if name in self.writers:
            self.writers[name].touch(name)

    def onQueryTerminated(self, event) -> None:  # noqa: N802
        name = self.names.get(str(event.id), "")
        if event.exception:
            log.error("streaming query %s failed: %s", name or event.id, event.exception.splitlines()[0])
        if name in self.writers:
            self.writers[name].mark_stopped(name, event.exception)


_listeners: dict[int, _ProgressListener] = {}
_listeners_lock = threading.Lock()


def _listen_for_progress(spark: SparkSession, settings: Settings) -> None:
    """One listener per session; its writers follow the storage root of the latest start."""
    with _listeners_lock:
        key = id(spark)
        if key not in _listeners:
            listener = _ProgressListener()
            spark.streams.addListener(listener)
            _listeners[key] = listener
        writer = ProgressWriter(settings)
        for name in QUERY_NAMES:
            _listeners[key].writers[name] = writer
