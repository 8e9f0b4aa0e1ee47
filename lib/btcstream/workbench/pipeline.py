"""The whole pipeline in one process: local stack, replay exchange, producer and Spark streaming queries.

`start_pipeline(settings)` brings everything up (starting Kafka/HDFS only if they are not already
running) and returns a `Pipeline`; `pipeline.stop()` stops the producer, lets the queries drain
everything it sent, then stops the queries, the exchange and (if asked) the stack it started.
Notebook 01 and the demo use it. Not for: the job's logic (`btcstream.streaming.job`) or the
producer's (`btcstream.ingest.producer`); this module only starts, watches and stops them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from btcstream.errors import PipelineError
from btcstream.exchange import DEFAULT_REPLAY_SPEED
from btcstream.names import SOURCES
from btcstream.settings import Settings

if TYPE_CHECKING:  # pyspark loads when the pipeline starts, not when this module is imported
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from btcstream.exchange import ExchangeServer
    from btcstream.ingest.producer import ProducerStats
    from btcstream.ingest.ws_feed import WebSocketFeedStats

log = logging.getLogger(__name__)

PRODUCER_JOIN_TIMEOUT_S = 60.0
REPLAY_QUOTES_PER_SECOND = 30.0  # book updates per symbol per wall second the replay exchange streams
PROGRESS_COLUMNS = ("query", "running_s", "batch", "input_rows", "input_rows_per_s", "processed_rows_per_s",
                    "batch_ms", "inserted_rows", "trades_inserted", "late_rows", "quarantined_rows", "active")
PROGRESS_TOTALS = ("inserted_rows", "trades_inserted", "late_rows", "quarantined_rows")  # since the checkpoint began


@dataclass
class Pipeline:
    """A running pipeline: the settings it runs with, its Spark queries and its producer thread."""

    settings: Settings
    spark: SparkSession
    queries: list[StreamingQuery]
    source: str
    started_stack: bool = False
    exchange: ExchangeServer | None = None  # the local exchange, in replay mode
    started_at: float = field(default_factory=time.monotonic)
    _stop_producer: threading.Event = field(default_factory=threading.Event)
    _producer: threading.Thread | None = None
    _producer_result: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    _totals: dict[str, dict[str, Any]] = field(default_factory=dict)  # each query's last totals read

    def progress(self) -> pd.DataFrame:
        """One row per query: seconds since the start, its latest batch, rates, batch time, and the
        totals of ticks stored, late ticks (stored too) and quarantined records."""
        from btcstream.errors import StorageReadError
        from btcstream.streaming.progress import read_progress

        rows = []
        running_s = round(time.monotonic() - self.started_at)
        for query in self.queries:
            last = query.lastProgress or {}
            try:
                self._totals[query.name] = (read_progress(self.settings, query.name) or {}).get("totals", {})
            except StorageReadError as error:  # torn by the job's replacement every time: the last totals read
                log.warning("%s; showing the totals read before", error)
            totals = self._totals.get(query.name, {})
            rows.append({
                "query": query.name, "running_s": running_s, "batch": last.get("batchId"),
                "input_rows": last.get("numInputRows"),
                "input_rows_per_s": _rounded(last.get("inputRowsPerSecond")),
                "processed_rows_per_s": _rounded(last.get("processedRowsPerSecond")),
                "batch_ms": (last.get("durationMs") or {}).get("triggerExecution"),
                **{name: totals.get(name, 0) for name in PROGRESS_TOTALS}, "active": query.isActive,
            })
        table = pd.DataFrame(rows, columns=list(PROGRESS_COLUMNS))
        for counter in ("batch", "input_rows", "batch_ms", *PROGRESS_TOTALS):
            table[counter] = table[counter].astype("Int64")  # a query without a batch yet shows <NA>
        return table

    def producer_stats(self) -> ProducerStats | WebSocketFeedStats | None:
        """The producer's counts once it has stopped (None while it runs)."""
        return self._producer_result.get("stats")

    def check(self) -> None:
        """Raise PipelineError if the producer or a query has died."""
        error = self._producer_result.get("error")
        if error is not None:
            raise PipelineError(f"the producer failed: {error}") from error
        for query in self.queries:
            if not query.isActive and not self.stopped:
                failure = query.exception()
                reason = str(failure).strip().splitlines()[0] if failure else "no error reported"
                raise PipelineError(f"streaming query {query.name} stopped: {reason}")

    def run_for(self, duration_s: float, report_every_s: float = 10.0, on_progress=None) -> None:
        """Keep running for `duration_s`, logging (or passing `on_progress`) the progress table now and then."""
        deadline = time.monotonic() + duration_s
        while True:
            self.check()
            table = self.progress()
            if on_progress is not None:
                on_progress(table)
            else:
                log.info("progress:\n%s", table.to_string(index=False))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(report_every_s, remaining))

    def stop(self, drain: bool = True, stop_stack: bool = False) -> None:
        """Stop the producer, let the queries take in all it sent (`drain`), stop them and the exchange.

        With `stop_stack`, Kafka and HDFS are stopped too, but only if this pipeline started them.
        """
        if self.stopped:
            return
        from btcstream.streaming.job import stop_queries

        self._stop_producer.set()
        if self._producer is not None:
            self._producer.join(PRODUCER_JOIN_TIMEOUT_S)
            if self._producer.is_alive():
                log.error("the producer did not stop within %.0f s", PRODUCER_JOIN_TIMEOUT_S)
        try:
            if drain:
                for query in self.queries:
                    if query.isActive:
                        log.info("draining %s", query.name)
                        query.processAllAvailable()
        finally:
            stop_queries(self.queries)
            if self.exchange is not None:
                self.exchange.stop()
            self.stopped = True
            if stop_stack and self.started_stack:
                from btcstream.infra import stack

                for line in stack.down(self.settings):
                    log.info("%s", line)
        stats = self.producer_stats()
        log.info("pipeline stopped after %.0f s; producer: %s", time.monotonic() - self.started_at,
                 stats.summary() if stats is not None else "no stats")


def start_pipeline(settings: Settings, source: str = "replay", *, replay_speed: float = DEFAULT_REPLAY_SPEED,
                   replay_start: datetime | None = None, start_stack: bool = True,
                   trigger_interval_s: float | None = None) -> Pipeline:
    """Start the stack (if needed and local), the exchange (replay), the Spark queries and the producer.

    A replay starts at `replay_start`, else where the stored raw_data ends, else one day into the history.
    """
    if source not in SOURCES:
        raise PipelineError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    started_stack = _ensure_stack(settings) if start_stack else False
    from btcstream.ingest.publisher import ensure_topic
    from btcstream.clients.spark import jvm_log_file, spark_session
    from btcstream.streaming.job import start_queries, stop_queries

    if source == "replay" and replay_start is None:
        replay_start = _resume_point(settings)
    for topic in (settings.topic, settings.trades_topic):
        ensure_topic(settings, topic)  # Spark's Kafka source fails on a topic that does not exist yet
    # The JVM's console output goes to a log file, not into a notebook's (or the demo's) output.
    spark = spark_session(settings, "btcstream-pipeline", jvm_log=jvm_log_file(settings, "btcstream-pipeline"))
    queries = start_queries(spark, settings, trigger_interval_s=trigger_interval_s)
    exchange = None
    if source == "replay":
        # Only now: the replay clock runs from the exchange's start, and Spark takes a while to start.
        from btcstream.exchange import start_exchange

        try:
            exchange = start_exchange(speed=replay_speed, start=replay_start,
                                      ws_quotes_per_second=REPLAY_QUOTES_PER_SECOND)
        except Exception:
            stop_queries(queries)
            raise
        settings = exchange.settings_for(settings)
        # A replay compresses time: at 1800x, the live limit of 10 quotes per second would be one
        # quote per 3 simulated minutes. The replay streams REPLAY_QUOTES_PER_SECOND per symbol
        # (at 1800x about one per simulated minute, as the REST feed's poll) and lets them all through.
        settings = settings.replace(ws_max_quotes_hz=max(settings.ws_max_quotes_hz, REPLAY_QUOTES_PER_SECOND))
    pipeline = Pipeline(settings=settings, spark=spark, queries=queries, source=source,
                        started_stack=started_stack, exchange=exchange)
    pipeline._producer = threading.Thread(target=_produce, args=(pipeline,), name="btcstream-producer", daemon=True)
    pipeline._producer.start()
    log.info("pipeline running: %s -> Kafka %s topic %s -> Spark -> %s", source, settings.kafka_bootstrap,
             settings.topic, settings.storage_root)
    return pipeline


def _produce(pipeline: Pipeline) -> None:
    """The producer thread: runs until the pipeline's stop event; keeps its stats or its error."""
    from btcstream.ingest.producer import run_feed

    try:
        pipeline._producer_result["stats"] = run_feed(pipeline.settings, stop_event=pipeline._stop_producer)
    except Exception as error:  # reported by Pipeline.check() in the caller's thread
        log.exception("producer failed")
        pipeline._producer_result["error"] = error


def _resume_point(settings: Settings) -> datetime | None:
    """Where a replay continues: just after the newest stored tick, so a second run adds new hours.

    Replaying the same hours again would be pointless: raw_data keeps each (symbol, event_time)
    once, so the replayed ticks would only be counted as duplicates.
    """
    from btcstream.storage.readers import latest_time

    newest = latest_time(settings)
    if newest is None:
        return None  # the exchange's default: one day into the history
    log.info("raw_data ends at %s: the replay continues from there", newest.isoformat())
    return (newest + pd.Timedelta(minutes=1)).to_pydatetime()


def _ensure_stack(settings: Settings) -> bool:
    """Start the local Kafka/HDFS unless they already run; True when this call started them."""
    from btcstream.infra import stack

    if stack.all_healthy(settings):
        return False
    services, _ = stack.local_services(settings)
    if not services:
        return False
    for line in stack.up(settings):
        log.info("%s", line)
    return True


def _rounded(value: Any) -> Any:
    return round(value, 1) if isinstance(value, (int, float)) else value
