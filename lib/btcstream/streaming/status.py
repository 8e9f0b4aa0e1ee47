"""What `btcstream status` shows: each query's rates, batch time, Kafka lag, watermark, late and quarantined counts.

Runs in any process, without Spark: it reads the progress documents the job persists after every
batch (`btcstream.streaming.progress`) and the Kafka offsets of the last committed batch in each
checkpoint, and asks the broker for the end of the topic, so the lag is current even when the job
is stopped. The hourly query reads raw_data, not Kafka: its lag is the number of raw_data files
the raw sink committed that no hourly batch has taken yet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from btcstream.names import CHECKPOINT_FOLDERS, CHECKPOINTS_DIR, KAFKA_QUERIES, RAW_DATASET
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path
from btcstream.storage.checkpoints import committed_kafka_offsets
from btcstream.storage.manifest import logged_paths, sink_files
from btcstream.streaming.progress import read_progress

log = logging.getLogger(__name__)

# A query that reported nothing (progress or idle) for this long is shown as not running.
STALE_AFTER_S = 120.0


@dataclass(frozen=True)
class QueryStatus:
    """One query as `btcstream status` prints it; None where a value is unknown."""

    name: str
    state: str  # running | stopped | failed | never started
    updated_at: str | None
    last_batch_id: int | None
    input_rows_per_s: float | None
    processed_rows_per_s: float | None
    batch_duration_ms: int | None
    watermark: str | None
    lag_offsets: int | None  # Kafka queries: offsets behind the end of the topic
    late_rows_total: int
    quarantined_rows_total: int
    error: str | None = None
    lag_files: int | None = None  # hourly: committed raw_data files no batch has taken yet


def query_statuses(settings: Settings, now: datetime | None = None) -> list[QueryStatus]:
    """The status of every query of the job under `settings.storage_root`."""
    now = now or datetime.now(timezone.utc)
    end_offsets = _topic_end_offsets(settings)
    statuses = []
    for name, folder in CHECKPOINT_FOLDERS.items():
        document = _read_progress_retrying(settings, name)
        committed = committed_kafka_offsets(settings, folder) if name in KAFKA_QUERIES else None
        lag = None
        if committed is not None and end_offsets is not None:
            lag = sum(max(0, end - committed.get(partition, 0)) for partition, end in end_offsets.items())
        elif name in KAFKA_QUERIES and end_offsets is not None and document is None:
            lag = sum(end_offsets.values())  # never started: the whole topic is ahead of it
        query_status = _status(name, document, lag, now)
        if name not in KAFKA_QUERIES:
            query_status = replace(query_status, lag_files=unread_raw_files(settings, folder))
        statuses.append(query_status)
    return statuses


def unread_raw_files(settings: Settings, checkpoint_folder: str) -> int:
    """How many files the raw sink committed that the file-reading query has not taken into a batch.

    The query's file source lists every file it took in `<checkpoint>/sources/0` (the same log
    format as the sink's `_spark_metadata`); compaction does not touch either log.
    """
    fs = storage_filesystem(settings)
    committed = set(sink_files(fs, storage_path(settings, RAW_DATASET)))
    taken = set(logged_paths(fs, storage_path(settings, CHECKPOINTS_DIR, checkpoint_folder, "sources", "0")))
    return len(committed - taken)


def _status(name: str, document: dict[str, Any] | None, lag: int | None, now: datetime) -> QueryStatus:
    if document is None:
        return QueryStatus(name, "never started", None, None, None, None, None, None, lag, 0, 0)
    latest = document.get("latest") or {}
    updated = document.get("updated_at")
    if document.get("error"):
        state = "failed"
    elif document.get("stopped_at") or not updated or \
            (now - datetime.fromisoformat(updated)).total_seconds() > STALE_AFTER_S:
        state = "stopped"
    else:
        state = "running"
    totals = document.get("totals") or {}
    return QueryStatus(
        name=name, state=state, updated_at=updated, last_batch_id=document.get("last_batch_id"),
        input_rows_per_s=latest.get("inputRowsPerSecond"), processed_rows_per_s=latest.get("processedRowsPerSecond"),
        batch_duration_ms=(latest.get("durationMs") or {}).get("triggerExecution"),
        watermark=(latest.get("eventTime") or {}).get("watermark"), lag_offsets=lag,
        late_rows_total=int(totals.get("late_rows", 0)), quarantined_rows_total=int(totals.get("quarantined_rows", 0)),
        error=document.get("error"),
    )


def _read_progress_retrying(settings: Settings, name: str) -> dict[str, Any] | None:
    """The progress document; read twice because on WebHDFS it is briefly absent while replaced."""
    for _ in range(2):
        try:
            document = read_progress(settings, name)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if document is not None:
            return document
    return None


def _topic_end_offsets(settings: Settings) -> dict[int, int] | None:
    """The end offset of every partition of the topic, or None if the broker cannot be asked."""
    from kafka import KafkaConsumer, TopicPartition

    from btcstream.clients.kafka import kafka_python_options

    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000,
                                 **kafka_python_options(settings))
    except Exception as error:  # status must still print what it knows
        log.warning("cannot reach Kafka at %s for the lag: %s", settings.kafka_bootstrap, error)
        return None
    try:
        partitions = consumer.partitions_for_topic(settings.topic) or set()
        ends = consumer.end_offsets([TopicPartition(settings.topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    except Exception as error:
        log.warning("cannot read the end offsets of %s: %s", settings.topic, error)
        return None
    finally:
        consumer.close()


def format_table(statuses: list[QueryStatus]) -> str:
    """The statuses as a fixed-width table."""
    header = (f"{'query':22} {'state':13} {'batch':>6} {'in rows/s':>10} {'done rows/s':>11} {'batch ms':>9} "
              f"{'lag':>8} {'late':>7} {'quarant.':>8}  watermark")
    lines = [header]

    def number(value: float | int | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    for s in statuses:
        lag = f"{s.lag_files:,} files" if s.lag_files is not None else number(s.lag_offsets)
        lines.append(f"{s.name:22} {s.state:13} {number(s.last_batch_id):>6} {number(s.input_rows_per_s, 1):>10} "
                     f"{number(s.processed_rows_per_s, 1):>11} {number(s.batch_duration_ms):>9} "
                     f"{lag:>8} {number(s.late_rows_total):>7} {number(s.quarantined_rows_total):>8}"
                     f"  {s.watermark or '-'}")
        if s.error:
            lines.append(f"  error: {s.error.splitlines()[0]}")
    return "\n".join(lines)
