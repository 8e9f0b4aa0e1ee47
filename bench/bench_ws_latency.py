"""Benchmark: an exchange event -> readable in raw_data / trades, over the WebSocket feed, at a 1 s trigger.

The replay exchange (real-time speed) streams quotes and trades over WebSocket; the producer's feed
(`run_websocket_feed`) sends them to Kafka; the streaming job (`btcstream_ingest`, trigger 1 s) stores
them. Pollers follow raw_data and trades with delta-rs (`bench_streaming.TablePoller`, every ~100 ms)
and stamp when each new record is first readable. Latency per record = first readable - `received_at`
(when the producer received the frame; the exchange -> producer hop on loopback adds a few ms, measured
separately by bench_ws_feed.py). Results: bench/results/ws_latency.md.

Run: `btcstream infra up`, then `python bench/bench_ws_latency.py [--seconds 60]`. Heavy: a quiet machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_streaming as streaming  # noqa: E402  (the shared settings and table poller)

from btcstream.clients.spark import spark_session  # noqa: E402
from btcstream.exchange import start_exchange  # noqa: E402
from btcstream.ingest.ws_feed import run_websocket_feed  # noqa: E402
from btcstream.streaming import job  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ws_latency.md"
log = logging.getLogger("bench_ws_latency")


def latencies(poller: streaming.TablePoller, since: float) -> list[float]:
    """First readable time - received_at, per record the poller saw that the producer received at or
    after `since` (epoch seconds: the end of the warm-up), in seconds."""
    values = []
    for seen_at, table in poller.observations:
        for received in streaming._column_micros(table.column("received_at")):
            if received / 1e6 >= since:
                values.append(seen_at - received / 1e6)
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quotes-per-second", type=float, default=10.0)
    parser.add_argument("--trades-per-second", type=float, default=10.0)
    parser.add_argument("--warm-up-seconds", type=float, default=30.0,
                        help="after the tables exist, records received during this long are left out of the figures")
    args = parser.parse_args()
    settings = streaming.bench_settings("ws-latency").replace(symbols=("BTCUSDT",))
    spark = spark_session(settings, "bench-ws-latency")
    queries = job.start_queries(spark, settings, trigger_interval_s=1.0)
    exchange = start_exchange(speed=1.0, ws_quotes_per_second=args.quotes_per_second,
                              ws_trades_per_second=args.trades_per_second)
    feed_settings = exchange.settings_for(settings)
    stop = threading.Event()
    producer = threading.Thread(target=run_websocket_feed, args=(feed_settings, stop), daemon=True)
    try:
        producer.start()
        streaming._wait_for_tables(settings, queries[0])
        from deltalake import DeltaTable

        deadline = time.monotonic() + 120
        while not DeltaTable.is_deltatable(settings.storage_url("trades")) and time.monotonic() < deadline:
            time.sleep(0.5)
        pollers = [streaming.TablePoller(settings, name, ["received_at"]) for name in ("raw_data", "trades")]
        for poller in pollers:
            poller.start()
        time.sleep(args.warm_up_seconds)  # the job's first batches (JIT, caches, first commits) settle
        measured_from = time.time()
        time.sleep(args.seconds)
        stop.set()
        producer.join(60)
        time.sleep(10.0)  # the last records reach the tables
        for poller in pollers:
            poller.stop()
    finally:
        stop.set()
        job.stop_queries(queries)
        exchange.stop()
    rows = []
    for poller in pollers:
        values = latencies(poller, measured_from)
        p50, p95, top = (np.percentile(values, 50), np.percentile(values, 95), max(values)) if values else (0, 0, 0)
        rows.append(f"| received by the producer -> readable in {poller.url.rsplit('/', 1)[-1]} | {len(values):,} | "
                    f"{p50:.2f} s | {p95:.2f} s | {top:.2f} s |")
    text = "\n".join([
        "# Exchange event -> readable in the tables, WebSocket feed, 1 s trigger", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python bench/bench_ws_latency.py --seconds "
        f"{args.seconds:g} --warm-up-seconds {args.warm_up_seconds:g}` (records received during the warm-up "
        f"after the tables exist are left out): the replay exchange at real-time speed streaming BTCUSDT ({args.quotes_per_second:g} "
        f"book updates and {args.trades_per_second:g} trades a second), the producer's WebSocket feed, Kafka and the "
        f"job on `local[2]` with a 1 s trigger, on the local Kafka and HDFS. {streaming.machine_facts()}", "",
        "| what | n | p50 | p95 | max |", "|---|---|---|---|---|", *rows, "",
        "The exchange -> producer hop adds milliseconds (bench/results/ws_feed.md: frame received -> Kafka "
        "acknowledged p99 11.7 ms for trades); the job's batches set the rest (bench/results/streaming.md).", ""])
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
