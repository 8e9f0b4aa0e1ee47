"""Benchmark of the streaming job: backlog throughput vs Spark batch, and end-to-end latency at a 1 s trigger.

1. Fill a fresh topic with N ticks (Spark batch write to Kafka: fast and deterministic; 20 symbols,
   one tick per symbol per second of event time, symbols spread evenly over the partitions: Spark's
   watermark is global, so partitions of unequal event-time density would make a catch-up batch
   call the slower partitions' ticks late).
2. Throughput: start the job's three queries on a fresh storage root and time how long the raw and
   quarantine queries take to drain the backlog (ticks/s), then run Spark's own batch
   `from_json -> Parquet` over the same records (ticks/s) and report the ratio.
3. Latency: with the job running at a 1 s trigger, send ticks stamped with the current time at a
   steady rate; a row is readable when its batch's `_spark_metadata/<batch>` entry is written, so
   latency = that file's modification time - event_time. Reports p50 and p95.

Run on the local stack: `btcstream infra up`, then `python bench/bench_streaming.py [--ticks 2000000]`.
Writes bench/results/streaming.md. Heavy (minutes of both cores): run it once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from btcstream import names
from btcstream.ingest import tick
from btcstream.clients.kafka import kafka_python_options
from btcstream.settings import load_settings
from btcstream.clients.spark import spark_session
from btcstream.storage import checkpoints
from btcstream.storage.filesystem import read_parquet, storage_filesystem, storage_path
from btcstream.streaming import job, status
from btcstream.streaming.progress import read_progress

log = logging.getLogger("bench_streaming")
RESULTS = Path(__file__).parent / "results" / "streaming.md"
NOTES_HEADING = "## Notes"
SYMBOL_COUNT = 21  # 7 per partition: every partition covers the same event time per offset
PARTITIONS = 3


def write_results(path: Path, text: str) -> None:
    """Write a results file, keeping its hand-written "## Notes" section (run history, analysis)."""
    previous = path.read_text() if path.exists() else ""
    notes = previous[previous.index(NOTES_HEADING):] if NOTES_HEADING in previous else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n" + (f"\n{notes.rstrip()}\n" if notes else ""))


def bench_settings(name: str):
    """Set up logging; settings of one run: a fresh topic of PARTITIONS partitions and storage root."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    run = uuid.uuid4().hex[:8]
    base = load_settings()
    settings = base.replace(topic=f"bench-{name}-{run}", spark_master="local[2]", trigger_interval_s=1.0,
                            storage_root=base.storage_url("bench", f"{name}-{run}"))
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    admin.create_topics([NewTopic(settings.topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    return settings


def fill_topic(spark, settings, count: int, *, interleaved_writers: bool = False) -> None:
    """Write `count` tick JSON values to the topic with Spark (keyed by symbol).

    `interleaved_writers`: record i carries the event time of tick `(i % 2) * count/2 + i // 2`,
    as two writers would leave the topic, each in its own order, the second half hours ahead.
    """
    from pyspark.sql import functions as F

    base = int(datetime(2025, 2, 14, tzinfo=timezone.utc).timestamp())
    ids = spark.range(count)
    tick_index = ((F.col("id") % 2) * (count // 2) + F.floor(F.col("id") / 2)) if interleaved_writers else F.col("id")
    symbol = F.concat(F.lit("SYM"), F.lpad((tick_index % SYMBOL_COUNT).cast("string"), 2, "0"), F.lit("USDT"))
    moment = F.date_format(F.timestamp_seconds(F.lit(base) + F.floor(tick_index / SYMBOL_COUNT)),
                           "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    mid = F.lit(100.0) + F.sin(tick_index / 1000.0) * 10 + (tick_index % SYMBOL_COUNT)
    fields = {name: F.lit(None).cast("double") for name in tick.FIELD_NAMES}
    fields.update(symbol=symbol, event_time=moment, timestamp=moment, bid_price=mid - 0.01, ask_price=mid + 0.01,
                  bid_qty=F.lit(1.5), ask_qty=F.lit(2.5), volume_24h=F.lit(18000.0), high_24h=mid + 5,
                  low_24h=mid - 5, trade_timestamp=moment, coingecko_last_updated=moment,
                  schema_version=F.lit(tick.SCHEMA_VERSION))
    values = F.to_json(F.struct(*[fields[name].alias(name) for name in tick.FIELD_NAMES]))
    partition = (tick_index % SYMBOL_COUNT % PARTITIONS).cast("int")
    # One writing task: each partition then holds its ticks in the order above (parallel tasks would
    # interleave the two halves of the range, and the first batch would push the watermark to the end).
    (ids.select(symbol.alias("key"), values.alias("value"), partition.alias("partition")).coalesce(1).write.format("kafka")
     .option("kafka.bootstrap.servers", settings.kafka_bootstrap).option("topic", settings.topic).save())


def end_offsets(settings) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    try:
        parts = consumer.partitions_for_topic(settings.topic) or set()
        ends = consumer.end_offsets([TopicPartition(settings.topic, p) for p in parts])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def wait_drained(settings, checkpoint: str, ends: dict[int, int], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            committed = checkpoints.committed_kafka_offsets(settings, checkpoint) or {}
        except (FileNotFoundError, IndexError, json.JSONDecodeError):
            committed = {}
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return time.monotonic()
        time.sleep(0.5)
    raise TimeoutError(f"{checkpoint} did not drain within {timeout}s")


def batch_throughput(spark, settings, count: int) -> float:
    """Spark batch: read the same Kafka records, from_json, write Parquet; ticks/s."""
    from pyspark.sql import functions as F

    started = time.monotonic()
    records = (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
               .option("subscribe", settings.topic).option("startingOffsets", "earliest")
               .option("endingOffsets", "latest").load())
    parsed = records.select(F.from_json(F.col("value").cast("string"), tick.spark_schema()).alias("t")).select("t.*")
    parsed.write.mode("overwrite").parquet(settings.storage_url("batch_baseline"))
    return count / (time.monotonic() - started)


def measure_latency(settings, seconds: float, rate: float) -> list[float]:
    """Send `rate` ticks/s stamped now for `seconds`; latency = batch commit time - event_time (s)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0, **kafka_python_options(settings))
    sent: dict[str, float] = {}
    next_send = time.time()
    end = next_send + seconds
    index = 0
    while time.time() < end:
        now = datetime.now(timezone.utc)
        symbol = "LAT%02dUSDT" % (index % 5)
        value = tick.Tick(symbol, tick.iso_utc(now), tick.iso_utc(now), 100.0, 100.02, 1.0, 1.0).to_json()
        producer.send(settings.topic, key=symbol.encode(), value=value)
        sent[f"{symbol}|{now.timestamp():.6f}"] = now.timestamp()
        index += 1
        next_send += 1.0 / rate
        time.sleep(max(0.0, next_send - time.time()))
    producer.flush()
    time.sleep(10)  # let the last batches commit
    return commit_latencies(settings, sent)


def commit_latencies(settings, sent: dict[str, float]) -> list[float]:
    """For every sent tick found in raw_data, the commit time of its batch minus its event time."""
    fs = storage_filesystem(settings)
    metadata = storage_path(settings, "raw_data", "_spark_metadata")
    today = f"date={datetime.now(timezone.utc):%Y-%m-%d}"
    commit_time: dict[str, float] = {}  # file -> when its batch was committed (earliest log file naming it)
    for entry in fs.ls(metadata, detail=True):
        if not entry["name"].rsplit("/", 1)[-1].split(".")[0].isdigit():
            continue
        with fs.open(entry["name"], "rb") as handle:
            for line in handle.read().decode().splitlines()[1:]:
                path = urlparse(json.loads(line)["path"]).path
                commit_time[path] = min(commit_time.get(path, float("inf")), _mtime(entry))
    latencies = []
    for path, committed_at in commit_time.items():
        if today not in path:  # the backlog's ticks are from 2025
            continue
        table = read_parquet(fs, path, columns=["symbol", "event_time"])
        for symbol, moment in zip(table.column("symbol").to_pylist(), table.column("event_time").to_pylist()):
            stamp = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
            key = f"{symbol}|{stamp:.6f}"
            if key in sent:
                latencies.append(committed_at - sent[key])
    return latencies


def _mtime(entry: dict) -> float:
    value = entry.get("modificationTime") or entry.get("mtime")
    value = float(value)
    return value / 1000 if value > 1e11 else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-rate", type=float, default=20.0, help="ticks per second during the latency run")
    args = parser.parse_args()
    settings = bench_settings("streaming")
    spark = spark_session(settings, "bench-streaming")

    started = time.monotonic()
    fill_topic(spark, settings, args.ticks)
    ends = end_offsets(settings)
    log.info("topic %s filled with %d ticks in %.1fs", settings.topic, sum(ends.values()), time.monotonic() - started)

    started = time.monotonic()
    queries = job.start_queries(spark, settings, trigger_interval_s=1.0)
    try:
        raw_done = wait_drained(settings, "raw", ends, timeout=3600)
        quarantine_done = wait_drained(settings, "quarantine", ends, timeout=3600)
        job_seconds = max(raw_done, quarantine_done) - started
        raw_seconds = raw_done - started
        log.info("job drained %d ticks in %.1fs (raw query alone done after %.1fs)", args.ticks, job_seconds, raw_seconds)
        progress = [q.recentProgress for q in queries]
        late_rows = (read_progress(settings, names.RAW_QUERY) or {}).get("totals", {}).get("late_rows", 0)
        latencies = measure_latency(settings, args.latency_seconds, args.latency_rate)
    finally:
        job.stop_queries(queries)
    batch_rate = batch_throughput(spark, settings, args.ticks)

    job_rate = args.ticks / job_seconds
    p50, p95 = (np.percentile(latencies, [50, 95]) if latencies else (float("nan"), float("nan")))
    raw_batches = [p for p in progress[1] if p.get("numInputRows")]
    write_results(RESULTS, f"""# Streaming job benchmark

Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 shared cores), `local[2]`,
Kafka and HDFS from `btcstream infra up` on the same machine, storage `{settings.storage_root}`.

## Backlog throughput ({args.ticks:,} ticks, 3 partitions, maxOffsetsPerTrigger {settings.max_offsets_per_trigger:,})

| what | seconds | ticks/s |
|---|---|---|
| job: quarantine + raw (+ hourly) queries until both drained the topic | {job_seconds:.1f} | {job_rate:,.0f} |
| raw query alone (drained at) | {raw_seconds:.1f} | {args.ticks / raw_seconds:,.0f} |
| Spark batch `from_json -> Parquet`, same records | {args.ticks / batch_rate:.1f} | {batch_rate:,.0f} |

Ratio job / batch: {job_rate / batch_rate:.2f}. Goal: >= 100,000 ticks/s.
Ticks the raw query dropped as late during the catch-up: {late_rows:,}.
Raw query batches with data: {len(raw_batches)}; their processedRowsPerSecond:
{', '.join(f"{p.get('processedRowsPerSecond', 0):,.0f}" for p in raw_batches)}.

## End-to-end latency at a 1 s trigger

{len(latencies)} ticks sent at {args.latency_rate:g}/s for {args.latency_seconds:g} s, stamped with the current
time; latency = modification time of the raw sink's `_spark_metadata/<batch>` (the moment the row
becomes readable) - event_time.

| p50 | p95 | max |
|---|---|---|
| {p50:.2f} s | {p95:.2f} s | {max(latencies) if latencies else float('nan'):.2f} s |

Goal: p95 < 3 s.
""")
    log.info("results written to %s", RESULTS)
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
