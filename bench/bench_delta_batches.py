"""Benchmark: one Kafka read into Delta (`DeltaBatchWriter`) against today's job and Spark's batch, out of order.

The backlog is written as two interleaved writers would leave it: record i carries the event time
of tick `(i % 2) * N/2 + i // 2`, so the topic alternates between the first and the second half
of the time range (each half in its own order), and the second half runs hours ahead of the first.

1. Spark batch `from_json -> Parquet` over the same records: the reference (ticks/s).
2. `DeltaBatchWriter` (issue "Streaming core on Delta Lake"): one query, each record parsed once,
   quarantine appended and raw_data deduplicated on (symbol, event_time) against what is stored,
   per micro-batch, `trigger(availableNow=True)` until the topic is drained; once per raw strategy
   (anti join + idempotent append, insert-only MERGE), each into its own tables.
3. Today's job (`btcstream.streaming.job`): the quarantine and raw queries, each reading the whole
   topic, raw deduplicated within a global event-time watermark.

For 2 and 3: ticks/s, the ratio to 1 in the same run, and ticks stored in raw_data against ticks
sent (the watermark drops the interleaved writer's older half as late: lost, though counted).

Run on the local stack: `btcstream infra up`, then `python bench/bench_delta_batches.py [--ticks 2000000]`.
Writes bench/results/delta_batches.md (keeps its "## Notes"). Heavy: minutes of both cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the shared benchmark setup

from bench_streaming import (  # noqa: E402
    PARTITIONS,
    SYMBOL_COUNT,
    batch_throughput,
    bench_settings,
    end_offsets,
    fill_topic,
    wait_drained,
    write_results,
)

from btcstream import names  # noqa: E402
from btcstream.clients.kafka import spark_kafka_options  # noqa: E402
from btcstream.clients.spark import spark_session  # noqa: E402
from btcstream.streaming import job  # noqa: E402
from btcstream.streaming.delta_batches import RAW_STRATEGIES, DeltaBatchWriter  # noqa: E402
from btcstream.streaming.progress import read_progress  # noqa: E402

log = logging.getLogger("bench_delta_batches")
RESULTS = Path(__file__).parent / "results" / "delta_batches.md"
STRATEGY_TEXT = {"anti_join": "anti join on stored partitions + idempotent append", "merge": "insert-only MERGE"}


def delta_writer_throughput(spark, settings, strategy: str) -> tuple[float, int, int]:
    """(seconds to drain the topic, raw rows stored, distinct keys stored) with the Delta batch writer."""
    writer = DeltaBatchWriter(raw_url=settings.storage_url(f"delta-{strategy}", names.RAW_DATASET),
                              quarantine_url=settings.storage_url(f"delta-{strategy}", names.QUARANTINE_DATASET),
                              app_id=f"bench-{settings.topic}-{strategy}", raw_strategy=strategy)
    source = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
              .options(**{k: str(v) for k, v in spark_kafka_options(settings).items()})
              .option("subscribe", settings.topic).option("startingOffsets", "earliest")
              .option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger)).load())
    started = time.monotonic()
    batches: list[tuple[int, float]] = []

    def write(frame, batch_id: int) -> None:
        begun = time.monotonic()
        counts = writer(frame, batch_id)
        batches.append((counts.records, time.monotonic() - begun))
        log.info("delta batch %d: %s", batch_id, counts)

    query = (source.writeStream.foreachBatch(write).trigger(availableNow=True)
             .option("checkpointLocation", settings.storage_url(f"delta-{strategy}", "checkpoints", "ingest")).start())
    query.awaitTermination()
    seconds = time.monotonic() - started
    raw = spark.read.format("delta").load(writer.raw_url)
    log.info("delta batches, %s (records, seconds): %s", strategy, batches)
    return seconds, raw.count(), raw.select("symbol", "event_time").distinct().count()


def file_sink_job(spark, settings, count: int) -> tuple[float, int, int]:
    """(seconds until the quarantine and raw queries drained the topic, raw rows stored, late rows)."""
    ends = end_offsets(settings)
    started = time.monotonic()
    queries = job.start_queries(spark, settings, queries=[names.QUARANTINE_QUERY, names.RAW_QUERY],
                                trigger_interval_s=1.0)
    try:
        done = max(wait_drained(settings, "raw", ends, timeout=3600),
                   wait_drained(settings, "quarantine", ends, timeout=3600))
        for query in queries:
            query.processAllAvailable()
    finally:
        job.stop_queries(queries)
    stored = spark.read.parquet(settings.storage_url(names.RAW_DATASET)).count()
    late = (read_progress(settings, names.RAW_QUERY) or {}).get("totals", {}).get("late_rows", 0)
    return done - started, stored, int(late)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2_000_000)
    args = parser.parse_args()
    settings = bench_settings("delta")
    spark = spark_session(settings, "bench-delta-batches")

    started = time.monotonic()
    fill_topic(spark, settings, args.ticks, interleaved_writers=True)
    log.info("topic %s filled with %d ticks in %.1fs", settings.topic, sum(end_offsets(settings).values()),
             time.monotonic() - started)
    batch_rate = batch_throughput(spark, settings, args.ticks)
    log.info("batch reference: %.0f ticks/s", batch_rate)
    delta = {}
    for strategy in RAW_STRATEGIES:
        delta[strategy] = delta_writer_throughput(spark, settings, strategy)
        log.info("delta writer (%s): %.1fs, %d rows, %d keys", strategy, *delta[strategy])
    job_seconds, job_rows, job_late = file_sink_job(spark, settings, args.ticks)
    log.info("file-sink job: %.1fs, %d rows, %d late", job_seconds, job_rows, job_late)

    job_rate = args.ticks / job_seconds
    delta_lines = "\n".join(
        f"| `DeltaBatchWriter(raw_strategy=\"{strategy}\")`: one read, quarantine append + raw {STRATEGY_TEXT[strategy]} "
        f"| {seconds:.1f} | {args.ticks / seconds:,.0f} | {args.ticks / seconds / batch_rate:.2f} "
        f"| {rows:,} ({keys:,} distinct) | {args.ticks - keys:,} |"
        for strategy, (seconds, rows, keys) in delta.items())
    write_results(RESULTS, f"""# One Kafka read into Delta, out of event-time order

Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 shared cores), `local[2]`, Kafka and
HDFS from `btcstream infra up`, storage `{settings.storage_root}`. {args.ticks:,} ticks of {SYMBOL_COUNT} symbols on
{PARTITIONS} partitions, two writers' halves interleaved (the second half hours ahead in event time),
maxOffsetsPerTrigger {settings.max_offsets_per_trigger:,}.

| what | seconds | ticks/s | / batch | raw_data rows | lost |
|---|---|---|---|---|---|
| Spark batch `from_json -> Parquet` (reference) | {args.ticks / batch_rate:.1f} | {batch_rate:,.0f} | 1.00 | - | - |
{delta_lines}
| today's job: quarantine + raw queries (file sinks, watermark dedup) | {job_seconds:.1f} | {job_rate:,.0f} | {job_rate / batch_rate:.2f} | {job_rows:,} | {args.ticks - job_rows:,} ({job_late:,} counted late) |
""")
    log.info("results written to %s", RESULTS)
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
