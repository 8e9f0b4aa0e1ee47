"""Benchmark: the two raw strategies of `DeltaBatchWriter` against Spark's batch, out of event-time order.

The backlog is written as two interleaved writers would leave it: record i carries the event time
of tick `(i % 2) * N/2 + i // 2`, so the topic alternates between the first and the second half
of the time range (each half in its own order), and the second half runs hours ahead of the first.

1. Warm-up (discarded): both strategies drain a small topic of the same shape, so neither pays
   alone for warming up Delta's code paths (the strategy that ran second used to win).
2. Spark batch `from_json -> Parquet` over the same records: the reference (ticks/s).
3. `DeltaBatchWriter`: one query, each record parsed once, quarantine appended and raw_data
   deduplicated on (symbol, event_time) against what is stored, per micro-batch,
   `trigger(availableNow=True)` until the topic is drained; once per raw strategy (anti join +
   idempotent append, insert-only MERGE), each into its own tables; with `--rounds` > 1 the
   strategies alternate which goes first.

Per strategy: ticks/s, the ratio to 1 in the same run, and the distinct ticks stored in raw_data
against the ticks sent. The whole job (hourly upserts included) is measured by `bench_streaming.py`.

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
    fresh_topic,
    write_results,
)

from btcstream import names  # noqa: E402
from btcstream.clients.kafka import spark_kafka_options  # noqa: E402
from btcstream.clients.spark import spark_session  # noqa: E402
from btcstream.streaming.delta_batches import RAW_STRATEGIES, DeltaBatchWriter  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2_000_000, help="backlog size (even)")
    parser.add_argument("--warm-up-ticks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both strategies, alternating which goes first")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.ticks % 2 or args.warm_up_ticks % 2:
        parser.error("--ticks and --warm-up-ticks must be even (two writers' halves)")
    settings = bench_settings("delta")
    spark = spark_session(settings, "bench-delta-batches")

    warm = fresh_topic(settings.replace(storage_root=settings.storage_url("warmup")), f"{settings.topic}-warmup")
    fill_topic(spark, warm, args.warm_up_ticks, interleaved_writers=True)
    for strategy in RAW_STRATEGIES:
        log.info("warm-up (discarded), %s: %.1fs", strategy, delta_writer_throughput(spark, warm, strategy)[0])

    started = time.monotonic()
    fill_topic(spark, settings, args.ticks, interleaved_writers=True)
    log.info("topic %s filled with %d ticks in %.1fs", settings.topic, sum(end_offsets(settings).values()),
             time.monotonic() - started)
    batch_rate = batch_throughput(spark, settings, args.ticks)
    log.info("batch reference: %.0f ticks/s", batch_rate)
    delta: dict[str, list[tuple[float, int, int]]] = {strategy: [] for strategy in RAW_STRATEGIES}
    for number in range(args.rounds):
        order = RAW_STRATEGIES if number % 2 == 0 else tuple(reversed(RAW_STRATEGIES))
        attempt = settings.replace(storage_root=settings.storage_url(f"round{number}"))
        for strategy in order:
            delta[strategy].append(delta_writer_throughput(spark, attempt, strategy))
            log.info("round %d, delta writer (%s): %.1fs, %d rows, %d keys", number, strategy, *delta[strategy][-1])

    delta_lines = "\n".join(
        f"| `DeltaBatchWriter(raw_strategy=\"{strategy}\")`: one read, quarantine append + raw {STRATEGY_TEXT[strategy]} "
        f"(round {number}) | {seconds:.1f} | {args.ticks / seconds:,.0f} | {args.ticks / seconds / batch_rate:.2f} "
        f"| {rows:,} ({keys:,} distinct) | {args.ticks - keys:,} |"
        for number in range(args.rounds) for strategy, runs in delta.items() for seconds, rows, keys in [runs[number]])
    write_results(args.results, f"""# One Kafka read into Delta, out of event-time order

Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 shared cores), `local[2]`, Kafka and
HDFS from `btcstream infra up`, storage `{settings.storage_root}`. {args.ticks:,} ticks of {SYMBOL_COUNT} symbols on
{PARTITIONS} partitions, two writers' halves interleaved (the second half hours ahead in event time),
maxOffsetsPerTrigger {settings.max_offsets_per_trigger:,}; both strategies warmed up first on
{args.warm_up_ticks:,} ticks (discarded), {args.rounds} round(s) alternating which goes first.

| what | seconds | ticks/s | / batch | raw_data rows | lost |
|---|---|---|---|---|---|
| Spark batch `from_json -> Parquet` (reference) | {args.ticks / batch_rate:.1f} | {batch_rate:,.0f} | 1.00 | - | - |
{delta_lines}
""")
    log.info("results written to %s", args.results)
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
