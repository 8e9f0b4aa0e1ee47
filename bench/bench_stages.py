"""Benchmark: what each stage of the raw and quarantine queries costs, draining the same backlog.

One topic is filled once (as in `bench_streaming.py`). Each variant is a streaming query that drains
it from a fresh checkpoint with `trigger(availableNow=True)` and the job's `maxOffsetsPerTrigger`,
writing Parquet like the job; variants are alternated `--rounds` times so that all see the same
machine load, beside Spark's batch `from_json -> Parquet` on the same records. Medians go to
bench/results/stages.md.

Variants: `parsed` (from_json only), `valid` (parse.split's valid ticks), `valid_parsed_twice`
(the same without `parse_once`), `enriched` (+ enrich, repartitioned and partitioned like the
sink), `raw` (the raw query: + deduplication), `raw_sorted_writes` (the same with each task sorting
its rows by partition before writing, Spark's default, instead of keeping up to 16 files open:
`spark.sql.maxConcurrentOutputFileWriters`), `raw_not_repartitioned` (without the hash
repartition by date and hour), `quarantine` (the quarantine query), `quarantine_parse_once` (the same with `parse_once`).

Run on the local stack: `btcstream infra up`, then `python bench/bench_stages.py [--ticks 1000000]`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bench_streaming import PARTITIONS, batch_throughput, bench_settings, fill_topic, write_results
from btcstream import names
from btcstream.ingest import tick
from btcstream.clients.spark import spark_session
from btcstream.streaming import job, parse, transforms

log = logging.getLogger("bench_stages")
RESULTS = Path(__file__).parent / "results" / "stages.md"
CONCURRENT_WRITERS = "spark.sql.maxConcurrentOutputFileWriters"


def variants(spark, settings) -> dict[str, Callable[[], tuple]]:
    """Name -> builder of (streaming DataFrame, partition columns)."""
    from pyspark.sql import functions as F

    def source():
        return job.kafka_source(spark, settings)

    def quarantine(parse_once: bool):
        refused = parse.quarantined(parse.classify(source(), parse_once=parse_once))
        return refused.withColumn("date", F.to_date("kafka_timestamp")).repartition("date"), ["date"]

    def deduplicated():
        return transforms.enrich(job.deduplicated_ticks(parse.split(source())[0], settings.allowed_lateness))

    partitions = list(names.RAW_PARTITION_COLUMNS)
    return {
        "parsed": lambda: (source().select(F.from_json(F.col("value").cast("string"), tick.spark_schema()).alias("t"))
                           .select("t.*"), []),
        "valid": lambda: (parse.split(source())[0], []),
        "valid_parsed_twice": lambda: (parse.valid_ticks(parse.classify(source(), parse_once=False)), []),
        "enriched": lambda: (transforms.enrich(parse.split(source())[0]).repartition(*partitions), partitions),
        "raw": lambda: (deduplicated().repartition(*partitions), partitions),
        "raw_sorted_writes": lambda: (deduplicated().repartition(*partitions), partitions),
        "raw_not_repartitioned": lambda: (deduplicated(), partitions),
        "quarantine": lambda: quarantine(parse_once=False),
        "quarantine_parse_once": lambda: quarantine(parse_once=True),
    }


def drain(spark, settings, name: str, build: Callable[[], tuple], count: int) -> float:
    """Ticks/s of one variant draining the whole topic from a fresh checkpoint."""
    default = spark.sparkContext.getConf().get(CONCURRENT_WRITERS)
    spark.conf.set(CONCURRENT_WRITERS, "0" if name == "raw_sorted_writes" else default)
    frame, partitions = build()
    path = settings.storage_url("stages", f"{name}-{uuid.uuid4().hex[:6]}")
    writer = (frame.writeStream.format("parquet").option("path", path)
              .option("checkpointLocation", f"{path}-checkpoint").trigger(availableNow=True))
    if partitions:
        writer = writer.partitionBy(*partitions)
    started = time.monotonic()
    writer.start().awaitTermination()
    return count / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    settings = bench_settings("stages")
    spark = spark_session(settings, "bench-stages")
    fill_topic(spark, settings, args.ticks)
    chosen = {name: build for name, build in variants(spark, settings).items()
              if not args.only or name in args.only.split(",")}

    batch_throughput(spark, settings, args.ticks)  # warm-up: JIT, connector, HDFS client
    rates: dict[str, list[float]] = {"batch": []}
    for round_number in range(args.rounds):
        rates["batch"].append(batch_throughput(spark, settings, args.ticks))
        for name, build in chosen.items():
            rates.setdefault(name, []).append(drain(spark, settings, name, build, args.ticks))
            log.info("round %d %s: %.0f ticks/s", round_number, name, rates[name][-1])

    reference = statistics.median(rates["batch"])
    rows = "\n".join(f"| {name} | {statistics.median(r):,.0f} | {statistics.median(r) / reference:.2f} | "
                     f"{', '.join(f'{x:,.0f}' for x in r)} |" for name, r in rates.items())
    write_results(RESULTS, f"""# Stage costs of the raw and quarantine queries

Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 shared cores), `local[2]`, {args.ticks:,} ticks
in {PARTITIONS} partitions, maxOffsetsPerTrigger {settings.max_offsets_per_trigger:,}, each variant draining the topic from
a fresh checkpoint (`availableNow`), {args.rounds} alternated rounds after a warm-up batch run.

| variant | median ticks/s | / batch | runs |
|---|---|---|---|
{rows}
""")
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
