"""Benchmark: the raw query draining a backlog with the in-memory (HDFS-backed) vs the RocksDB state store.

The raw query's deduplication is its only state. One topic is filled once (as in
`bench_streaming.py`), then the raw query alone drains it from a fresh checkpoint, alternating the
two providers `--rounds` times (after one discarded warm-up drain) so that both see the same machine
load; medians and their ratio go to bench/results/state_store.md.

Run on the local stack: `btcstream infra up`, then `python bench/bench_state_store.py [--ticks 1000000]`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_streaming import bench_settings, end_offsets, fill_topic, wait_drained, write_results
from btcstream import names
from btcstream.clients.spark import spark_session
from btcstream.streaming import job

log = logging.getLogger("bench_state_store")
RESULTS = Path(__file__).parent / "results" / "state_store.md"
PROVIDERS = {
    "in-memory (HDFSBackedStateStoreProvider)": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
    "RocksDB (changelog checkpointing)": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = bench_settings("state")
    spark = spark_session(settings, "bench-state-store")
    fill_topic(spark, settings, args.ticks)
    ends = end_offsets(settings)

    def drain(provider: str, name: str) -> float:
        """Ticks/s of the raw query draining the topic from a fresh checkpoint with `provider`."""
        attempt = settings.replace(storage_root=settings.storage_url(name))
        spark.conf.set("spark.sql.streaming.stateStore.providerClass", provider)  # fresh checkpoint: taken
        started = time.monotonic()
        queries = job.start_queries(spark, attempt, queries=[names.RAW_QUERY], trigger_interval_s=1.0)
        try:
            return args.ticks / (wait_drained(attempt, "raw", ends, timeout=3600) - started)
        finally:
            job.stop_queries(queries)

    # The first drain in a JVM runs cold (class loading, JIT) and was up to 30% slower: discarded.
    warmup = drain(next(iter(PROVIDERS.values())), "warmup")
    log.info("warm-up drain (discarded): %.0f ticks/s", warmup)
    rates: dict[str, list[float]] = {label: [] for label in PROVIDERS}
    for round_ in range(args.rounds):
        for label, provider in PROVIDERS.items():
            rates[label].append(drain(provider, f"{round_}-{provider.rsplit('.', 1)[1]}"))
            log.info("round %d, %s: %.0f ticks/s", round_ + 1, label, rates[label][-1])

    medians = {label: statistics.median(values) for label, values in rates.items()}
    memory, rocks = medians.values()
    rows = "\n".join(f"| {label} | {', '.join(f'{v:,.0f}' for v in rates[label])} | {medians[label]:,.0f} |"
                     for label in PROVIDERS)
    write_results(RESULTS, f"""# State store benchmark: the raw query alone draining a backlog

Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 shared cores), `local[2]`, local
Kafka and HDFS; {args.ticks:,} ticks, 3 partitions, maxOffsetsPerTrigger {settings.max_offsets_per_trigger:,},
a fresh checkpoint per attempt, providers alternated after one discarded warm-up drain ({warmup:,.0f} ticks/s).

| state store | ticks/s per round | median |
|---|---|---|
{rows}

Ratio of medians, in-memory / RocksDB: {memory / rocks:.2f}.
""")
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
