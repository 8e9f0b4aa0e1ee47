"""Benchmark: end-to-end latency of the running job at a 1 s trigger, on a fresh topic (no backlog).

Starts the job's queries (all three, or `--queries`) on a fresh topic and storage root, sends
`--warm-up-seconds` of ticks first (the first batches with data compile their code and are
several times slower), then `--seconds` of ticks at `--rate`, stamped with the current time.
Latency = commit time of the raw sink's `_spark_metadata/<batch>` - event_time (as in
`bench_streaming.py`). Prints p50/p95/max and the raw query's median batch durations.
`--conf key=value` sets Spark configuration (e.g. spark.sql.shuffle.partitions=4) to compare
settings; alternate runs of the compared settings, the machine is noisy.

Run on the local stack: `btcstream infra up`, then `python bench/bench_latency.py [--conf k=v ...]`.
Results are written down by hand in bench/results/streaming.md (## Notes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bench_streaming import bench_settings, measure_latency
from btcstream import names
from btcstream.clients.spark import spark_session
from btcstream.streaming import job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warm-up-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="ticks per second")
    parser.add_argument("--queries", default=",".join(names.QUERY_NAMES))
    parser.add_argument("--hourly-trigger", type=float, default=1.0, help="seconds (raw and quarantine: 1 s)")
    parser.add_argument("--conf", action="append", default=[], help="Spark key=value")
    args = parser.parse_args()
    settings = bench_settings("latency")
    spark = spark_session(settings, "bench-latency", extra_conf=dict(kv.split("=", 1) for kv in args.conf))
    wanted = args.queries.split(",")
    queries = job.start_queries(spark, settings, queries=[q for q in wanted if q != names.HOURLY_QUERY],
                                trigger_interval_s=1.0)
    if names.HOURLY_QUERY in wanted:
        queries += job.start_queries(spark, settings, queries=[names.HOURLY_QUERY], trigger_interval_s=args.hourly_trigger)
    try:
        time.sleep(10)
        measure_latency(settings, args.warm_up_seconds, args.rate)
        latencies = measure_latency(settings, args.seconds, args.rate)
        raw = next(q for q in queries if q.name == names.RAW_QUERY)
        durations: dict[str, list[float]] = {}
        for progress in raw.recentProgress:
            if progress["numInputRows"]:
                for key, value in progress["durationMs"].items():
                    durations.setdefault(key, []).append(value)
    finally:
        job.stop_queries(queries)
        spark.stop()  # before exit, so no progress event reaches a Python listener that is gone
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"conf {args.conf} queries {wanted} hourly trigger {args.hourly_trigger:g} s: "
          f"{len(latencies)} ticks, p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(latencies):.2f} s")
    print("raw query, median durationMs of batches with data:",
          {key: statistics.median(values) for key, values in durations.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
