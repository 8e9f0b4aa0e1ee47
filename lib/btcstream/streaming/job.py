"""Wire the streaming job: one query reads the tick topic once and writes every Delta table.

The query `btcstream_ingest` (checkpoint `<root>/checkpoints/ingest`) hands each micro-batch of
Kafka records to `IngestBatch`, which in that one batch:

1. parses every record once and writes the refused ones to `<root>/quarantine` and the valid
   ticks, deduplicated on (symbol, event_time) against what is stored, to `<root>/raw_data`
   (`btcstream.streaming.delta_batches`): no event-time watermark, so a tick that arrives late
   or out of order is stored all the same and counted as late;
2. recomputes the (symbol, hour) rows of `<root>/hourly_metrics` the batch touched from
   raw_data and upserts them (`btcstream.streaming.hourly_upserts`): the hour in progress is a
   live row, final once the event clock is `allowed_lateness` past its end, revised (revision+1)
   by a tick arriving after that;
3. when hours became final (or were revised), writes the next hour's volatility forecast of each
   model to `<root>/forecasts` and the realized value beside earlier ones (`btcstream.streaming.forecasts`);
4. scores the 1-minute bars whose minute completed against their trailing window and delivers the
   alerts: `<root>/alerts`, the alerts topic, the user's alert command (`btcstream.streaming.alerts`).

Exactly once: the Kafka offsets are in the checkpoint; a batch replayed after a crash writes
nothing twice (Delta's idempotent writes keyed by the batch id, see `delta_batches`) and its
hourly recomputation gives the same rows. The event clock is the newest event time stored (a quote's
event_time or a trade's trade_time); after a restart it is read back from the Delta logs of raw_data
and trades (file statistics pick the files; only that column of them is read).

Late, in the counts: a valid tick whose event_time is more than `allowed_lateness` before the event
clock as the batch starts.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from btcstream.clients.kafka import kafka_python_options, spark_kafka_options
from btcstream.ingest.publisher import ensure_topic
from btcstream.names import (
    CHECKPOINT_FOLDERS,
    CHECKPOINTS_DIR,
    HOURLY_DATASET,
    INGEST_QUERY,
    INGEST_START_OFFSETS_FILE,
    QUARANTINE_DATASET,
    QUERY_NAMES,
    RAW_DATASET,
    TIME_COLUMNS,
    TRADES_DATASET,
)
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path
from btcstream.storage.layout import require_delta_layout
from btcstream.storage.readers import latest_time
from btcstream.streaming import parse, transforms
from btcstream.streaming.alerts import AlertCounts, AlertStage
from btcstream.streaming.delta_batches import BatchCounts, DeltaBatchWriter
from btcstream.streaming.forecasts import ForecastCounts, ForecastStage
from btcstream.streaming.hour_partials import BatchPartials, HourlyPartials
from btcstream.streaming.hourly_upserts import HourlyCounts, LiveDates, upsert_hours
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
    trades: str
    checkpoints: dict[str, str]

    @classmethod
    def of(cls, settings: Settings) -> "StreamPaths":
        return cls(
            raw=settings.storage_url(RAW_DATASET),
            hourly=settings.storage_url(HOURLY_DATASET),
            quarantine=settings.storage_url(QUARANTINE_DATASET),
            trades=settings.storage_url(TRADES_DATASET),
            checkpoints={name: settings.storage_url(CHECKPOINTS_DIR, folder) for name, folder in CHECKPOINT_FOLDERS.items()},
        )


def kafka_source(spark: SparkSession, settings: Settings) -> DataFrame:
    """The tick topic as a stream: where `btcstream migrate` left off, else the earliest offsets, on
    the first run; then the checkpoint's.

    failOnDataLoss stays true: if retention deleted offsets the job has not read yet, stopping
    loudly beats skipping ticks silently (restart from a new checkpoint to accept the loss).
    """
    return (spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .options(**{key: str(value) for key, value in spark_kafka_options(settings).items()})
            .option("subscribe", f"{settings.topic},{settings.trades_topic}")
            .option("startingOffsets", starting_offsets(settings))
            .option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
            .option("failOnDataLoss", "true")
            .load())


def starting_offsets(settings: Settings) -> str:
    """Spark's `startingOffsets` for a new checkpoint: the migrated job's offsets, or "earliest".

    Spark uses it only when the checkpoint has no offsets yet, so it is harmless afterwards.
    """
    fs = storage_filesystem(settings)
    path = storage_path(settings, CHECKPOINTS_DIR, INGEST_START_OFFSETS_FILE)
    if not fs.exists(path):
        return "earliest"
    with fs.open(path, "rb") as handle:
        saved = json.loads(handle.read().decode())
    if saved.get("topic") != settings.topic or not saved.get("offsets"):
        return "earliest"
    # Specific offsets must name every partition of every subscribed topic: the trades topic
    # (which the old job never read) from its earliest offset (-2).
    trades = {str(partition): -2 for partition in topic_partitions(settings, settings.trades_topic)}
    return json.dumps({settings.topic: {str(partition): int(offset) for partition, offset in saved["offsets"].items()},
                       settings.trades_topic: trades})


def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partition numbers of `topic` (empty when it does not exist)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    try:
        return sorted(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def raw_schema(spark: SparkSession):
    """The schema of raw_data rows, derived from the transforms (the partitions date, hour included)."""
    empty = spark.createDataFrame([], KAFKA_SCHEMA)
    return transforms.enrich(parse.valid_ticks(parse.classify(empty))).schema


class IngestBatch:
    """The query's `foreachBatch` function: quarantine + raw_data, then the touched hours, then the counts."""

    def __init__(self, settings: Settings, paths: StreamPaths, progress: ProgressWriter | None = None,
                 trigger_s: float | None = None) -> None:
        self.settings = settings
        self.trigger_s = trigger_s or settings.trigger_interval_s  # a slower batch logs where its time went
        self.paths = paths
        self.allowed_lateness = settings.allowed_lateness_span
        # One writer id per checkpoint location: a new checkpoint restarts batch ids at 0.
        self.grid_seconds = int(settings.rv_grid_span.total_seconds())
        self.writer = DeltaBatchWriter(paths.raw, paths.quarantine, app_id=f"btcstream-ingest:{paths.checkpoints[INGEST_QUERY]}",
                                       trades_url=paths.trades, trades_topic=settings.trades_topic, partials=True,
                                       grid_seconds=self.grid_seconds)
        # The hours being filled, as partial aggregates: each batch adds what it inserted (no re-read).
        self.hour_partials = HourlyPartials(self.grid_seconds)
        self.progress = progress
        self.event_clock: datetime | None = None  # newest event_time stored; read from the log on first use
        self.live_dates = LiveDates()  # where hourly_metrics holds live rows; read from the table on first use
        self.forecasts = ForecastStage(settings)
        self.alerts = AlertStage(settings)

    def __call__(self, kafka_rows: DataFrame, batch_id: int) -> None:
        stages = StageTimer()
        with stages("clock"):  # read from the Delta logs on the first batch only
            clock = self.event_clock if self.event_clock is not None else stored_event_clock(self.settings)
        late_before = clock - self.allowed_lateness if clock is not None else None
        with stages("tables"):
            counts = self.writer(kafka_rows, batch_id, late_before=late_before)
        if counts.newest_event_time is not None and (clock is None or counts.newest_event_time > clock):
            clock = counts.newest_event_time
        hourly = HourlyCounts(0, 0, 0, 0, 0)
        with stages("hourly"):
            if counts.hours and clock is not None:
                spark = kafka_rows.sparkSession
                if counts.partials is None:  # not known what the batch added: read its hours back
                    self.hour_partials.drop(counts.hours)
                self.hour_partials.update(spark, self.paths.raw, self.paths.trades, counts.hours,
                                          counts.partials or BatchPartials())
                hourly = upsert_hours(spark, self.paths.raw, self.paths.hourly, list(counts.hours),
                                      clock, self.allowed_lateness, self.live_dates, trades_url=self.paths.trades,
                                      grid_seconds=self.grid_seconds, partials=self.hour_partials)
                # Hours final for an hour already: a later tick for one reads it back from the tables.
                self.hour_partials.forget_before(clock - self.allowed_lateness - timedelta(hours=1))
        with stages("forecasts"):
            forecasts = self.forecasts(hourly.finalised, hourly.revised)
        with stages("alerts"):
            alerts = self.alerts(counts.bars, clock)
        self.event_clock = clock
        log.debug("batch %d: %s; hourly %s; forecasts %s; alerts %s", batch_id, counts, hourly, forecasts, alerts)
        if stages.total_s > self.trigger_s:
            log.info("batch %d (%d records) took %.1f s, longer than the %g s trigger: %s", batch_id, counts.records,
                     stages.total_s, self.trigger_s, stages)
        if self.progress is not None:
            self.progress.note_batch(INGEST_QUERY, batch_id, batch_counts(counts, hourly, forecasts, alerts),
                                     stages.milliseconds)


class StageTimer:
    """Wall-clock time per named stage of one batch (`progress.BATCH_STAGES`): `with timer("tables"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._started = 0.0

    def __call__(self, name: str) -> "StageTimer":
        self._name = name
        return self

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        assert self._name is not None
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._started

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    @property
    def milliseconds(self) -> dict[str, int]:
        return {name: round(seconds * 1000) for name, seconds in self.seconds.items()}

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())


def batch_counts(counts: BatchCounts, hourly: HourlyCounts, forecasts: ForecastCounts = ForecastCounts(),
                 alerts: AlertCounts = AlertCounts()) -> dict[str, int]:
    """The counts of one batch under the progress document's names (`progress.BATCH_COUNTS`)."""
    return {"input_rows": counts.records, "quarantined_rows": counts.quarantined, "late_rows": counts.late,
            "inserted_rows": counts.inserted, "duplicate_rows": counts.duplicates,
            "trades_inserted": counts.trades_inserted, "trade_duplicates": counts.trade_duplicates,
            "hourly_opened": hourly.opened, "hourly_updated": hourly.updated, "hourly_revised": hourly.revised,
            "hourly_finalised": hourly.finalised, "forecasts_written": forecasts.written,
            "alerts_raised": alerts.raised, "alert_late_bars": alerts.late_bars,
            "alerts_unpublished": alerts.unpublished}


def stored_event_clock(settings: Settings) -> datetime | None:
    """The newest event time stored, read back after a restart: the larger of raw_data's newest
    event_time and trades' newest trade_time, as a batch's clock counts both (`readers.latest_time`:
    the Delta log's statistics pick the files, their time column gives the exact value)."""
    times = [latest_time(settings), latest_time(settings, TRADES_DATASET, TIME_COLUMNS[TRADES_DATASET])]
    newest = max((time for time in times if time is not None), default=None)
    return None if newest is None else newest.to_pydatetime().astimezone(timezone.utc)


def start_queries(spark: SparkSession, settings: Settings, *, queries: Iterable[str] = QUERY_NAMES,
                  trigger_interval_s: float | None = None) -> list[StreamingQuery]:
    """Start the job's query (stopping an active query of the same name first); returns it in a list.

    Progress of each batch is persisted for `btcstream status` (see `btcstream.streaming.progress`).
    Raises `LegacyLayout` (one line, naming `btcstream migrate`) on a storage root of the old layout.
    """
    wanted = set(queries)
    unknown = wanted - set(QUERY_NAMES)
    if unknown:
        raise ValueError(f"unknown queries {sorted(unknown)}; expected some of {QUERY_NAMES}")
    require_delta_layout(settings)
    for topic in (settings.topic, settings.trades_topic, settings.alerts_topic):
        ensure_topic(settings, topic)  # Spark's Kafka source fails on a topic that does not exist yet
    interval = trigger_interval_s or settings.trigger_interval_s
    paths = StreamPaths.of(settings)
    # Parquet timestamps as int64 microseconds (UTC), readable by pyarrow/DuckDB without INT96 quirks.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    writer = _listen_for_progress(spark, settings)
    started: list[StreamingQuery] = []
    if INGEST_QUERY in wanted:
        stop_query(spark, INGEST_QUERY)
        query = (kafka_source(spark, settings).writeStream
                 .foreachBatch(IngestBatch(settings, paths, writer, interval))
                 .option("checkpointLocation", paths.checkpoints[INGEST_QUERY])
                 .queryName(INGEST_QUERY).trigger(processingTime=f"{interval} seconds").start())
        log.info("started %s (id %s)", INGEST_QUERY, query.id)
        started.append(query)
    return started


def stop_query(spark: SparkSession, name: str) -> None:
    """Stop the active query called `name` in this session, if any."""
    for query in spark.streams.active:
        if query.name == name:
            log.info("stopping the running %s (id %s) before starting it again", name, query.id)
            query.stop()


def stop_queries(queries: Iterable[StreamingQuery]) -> None:
    """Stop queries; a batch interrupted by the stop is re-run (exactly once) on restart."""
    for query in queries:
        if query.isActive:
            log.info("stopping %s", query.name)
            query.stop()
        # Spark reports the termination asynchronously, possibly after this process has exited.
        with _listeners_lock:
            for listener in _listeners.values():
                if query.name in listener.writers:
                    listener.writers[query.name].mark_stopped(query.name, None)


def note_restart(spark: SparkSession, name: str, reason: str) -> None:
    """Count a restart of query `name` in its progress document (`btcstream status` shows it)."""
    with _listeners_lock:
        listener = _listeners.get(id(spark))
        writer = listener.writers.get(name) if listener is not None else None
    if writer is not None:
        writer.note_restart(name, reason)


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
            log.error("streaming query %s failed: %s", name or event.id, root_cause_line(event.exception))
        if name in self.writers:
            self.writers[name].mark_stopped(name, event.exception)


def root_cause_line(failure: str) -> str:
    """The line of a JVM failure text worth logging: its innermost `Caused by:` (e.g. `java.io.IOException:
    No space left on device`), else its first line. When that is py4j's "An exception was raised by the
    Python Proxy" (a failure in the Python batch function, which says nothing by itself), the Python
    exception line of the traceback it carries, with the last `↳` detail delta-rs adds (e.g. `OSError:
    Generic HdfsObjectStore error: Connection refused (os error 111)`)."""
    lines = failure.strip().splitlines()
    causes = [line.strip().removeprefix("Caused by: ") for line in lines if line.strip().startswith("Caused by: ")]
    cause = causes[-1] if causes else (lines[0] if lines else failure)
    if "Python Proxy" in cause:
        return _python_exception_line(lines) or cause
    return cause


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _python_exception_line(lines: list[str]) -> str | None:
    """The exception line ending the last Python traceback in `lines` (plus its last `↳` detail), if any."""
    found: str | None = None
    for start, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        index = start + 1
        while index < len(lines) and lines[index][:1].isspace():
            index += 1  # the frames: "  File ...", then the code line
        if index == len(lines):
            continue
        found = lines[index].strip()
        details = []
        for follow in lines[index + 1:]:
            text = _ANSI.sub("", follow).strip()
            if not text.startswith("↳"):
                break
            details.append(text.removeprefix("↳").strip())
        if details:
            found = f"{found}: {details[-1]}"
    return found


_listeners: dict[int, _ProgressListener] = {}
_listeners_lock = threading.Lock()


def _listen_for_progress(spark: SparkSession, settings: Settings) -> ProgressWriter:
    """One listener per session; its writer follows the storage root of the latest start."""
    with _listeners_lock:
        key = id(spark)
        if key not in _listeners:
            listener = _ProgressListener()
            spark.streams.addListener(listener)
            _listeners[key] = listener
        writer = ProgressWriter(settings)
        for name in QUERY_NAMES:
            _listeners[key].writers[name] = writer
        return writer
