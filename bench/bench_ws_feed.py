"""WebSocket feed benchmark: the replay exchange streaming >= 2,000 messages/s over 10 symbols into Kafka.

Needs the local stack (`btcstream infra up`). Run: `.venv/bin/python bench/bench_ws_feed.py [--seconds 120]`.
Writes bench/results/ws_feed.md.

1. The replay exchange runs as a child process (`btcstream exchange`, so its CPU is not the
   producer's), real time (speed 1), 10 symbols (BTCUSDT real, S2USDT..S10USDT derived from it),
   QUOTES_PER_S book updates + TRADES_PER_S aggregate trades per symbol per second, plus one 24 h
   ticker per symbol per second.
2. `run_websocket_feed` runs in this process with the project's defaults (10 quotes/s per symbol,
   buffer 10,000, acks=all idempotent Kafka producer) into fresh topics for `--seconds`.
3. Then the exchange's clock is slowed to a standstill (nothing new happens), the feed is given a
   few seconds to catch up, and is stopped (it flushes to Kafka).
4. Lost messages: every trade id the exchange emitted (its `/_control/state`) must be in the trades
   topic exactly once, and every frame it sent must have been received (received + duplicates +
   malformed = sent, per kind).
5. Producer CPU: this process's CPU time (all its threads: event loop, Kafka sender, kafka-python's
   I/O thread) during the run, per 1,000 messages received.
6. Added latency: frame received -> Kafka acknowledged, per record kind (trades: never held; quotes:
   including the wait for their conflation slot, which is also shown apart).
7. Kafka's own `org.apache.kafka.tools.ProducerPerformance` on the same broker at the trade record's
   size, for the throughput comparison (optional: skipped when the jars are missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' derived-symbol histories

from kafka import KafkaConsumer  # noqa: E402

from btcstream.exchange import spawn_exchange  # noqa: E402
from btcstream.infra.artifacts import jar_dir  # noqa: E402
from btcstream.infra.java import java_executable  # noqa: E402
from btcstream.ingest.feed_status import LatencyRecorder, read_feed_status  # noqa: E402
from btcstream.ingest.tick import Tick  # noqa: E402
from btcstream.ingest.trade import Trade  # noqa: E402
from btcstream.ingest.ws_feed import run_websocket_feed  # noqa: E402
from btcstream.settings import Settings, load_settings  # noqa: E402
from helpers.replay_exchange import symbol_histories  # noqa: E402

log = logging.getLogger("bench_ws_feed")

SYMBOL_COUNT = 10
QUOTES_PER_S = 120  # per symbol: 1,200 book updates/s in all
TRADES_PER_S = 80  # per symbol: 800 trades/s in all (+ 10 tickers/s: 2,010 messages/s)
CATCH_UP_S = 5.0
PERF_TOOL_RECORDS = 200_000
LATENCY_KEPT = 2_000_000
RESULTS = ROOT / "bench" / "results" / "ws_feed.md"


def exchange_state(binance_url: str) -> dict:
    return requests.get(f"{binance_url}/_control/state", timeout=10).json()


def read_topic(settings: Settings, topic: str) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=5000,
                             max_partition_fetch_bytes=8 << 20)
    records: list = []
    try:
        while True:
            batch = list(consumer)
            records += batch
            if not batch:
                return records
    finally:
        consumer.close()


def total_messages(document: dict) -> int:
    """Frames a feed-status document says were received: kept, duplicate or malformed."""
    counts = document["counts"]
    return sum(counts["received"].values()) + sum(counts["duplicates"].values()) + sum(counts["malformed"].values())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def kafka_perf_tool(settings: Settings, record_size: int) -> tuple[float, str] | None:
    try:
        classpath = str(jar_dir(settings, "kafka") / "*")
        java = java_executable()
    except Exception as error:  # noqa: BLE001 - optional part of the benchmark
        log.warning("no Kafka jars or Java (%s): skipping ProducerPerformance", error)
        return None
    command = [java, "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance",
               "--topic", f"bench-perf-{uuid.uuid4().hex[:6]}", "--num-records", str(PERF_TOOL_RECORDS),
               "--record-size", str(record_size), "--throughput", "-1", "--producer-props",
               f"bootstrap.servers={settings.kafka_bootstrap}", "acks=all", "enable.idempotence=true", "linger.ms=5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    summary = [line for line in done.stdout.splitlines() if "records sent" in line]
    if done.returncode != 0 or not summary:
        log.warning("ProducerPerformance failed (%d): %s", done.returncode, done.stderr[-400:])
        return None
    rate = float(re.search(r"([\d.]+) records/sec", summary[-1]).group(1))
    return rate, summary[-1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the exchange streams (default 120)")
    parser.add_argument("--no-perf-tool", action="store_true", help="skip Kafka's ProducerPerformance")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("websockets").setLevel(logging.WARNING)

    work = Path(f"/tmp/bench-ws-feed-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    history = symbol_histories(work, SYMBOL_COUNT)
    topic = f"bench-ws-{uuid.uuid4().hex[:6]}"
    base = load_settings().replace(symbols=tuple(history), topic=topic, trades_topic=f"{topic}-trades",
                                   state_dir=work / "state")
    extra = ["--ws-quotes-per-second", str(QUOTES_PER_S), "--ws-trades-per-second", str(TRADES_PER_S)]
    with spawn_exchange(history, speed=1.0, extra_args=extra) as exchange:
        settings = exchange.settings_for(base)
        stop = threading.Event()
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(run_websocket_feed(
            settings, stop, latency=LatencyRecorder(kept=LATENCY_KEPT))))
        log.info("streaming %d symbols at %d quotes + %d trades per symbol per second for %.0f s...", SYMBOL_COUNT,
                 QUOTES_PER_S, TRADES_PER_S, args.seconds)
        load_before = os.getloadavg()
        worker.start()
        baseline = None
        while baseline is None or total_messages(baseline) == 0:  # connected and streaming
            time.sleep(0.1)
            baseline = read_feed_status(settings)
        cpu_start, wall_start = time.process_time(), time.monotonic()
        time.sleep(args.seconds)
        requests.post(f"{exchange.binance_url}/_control/clock", json={"speed": 1e-6}, timeout=10)
        streamed_s = time.time() - datetime.fromisoformat(baseline["written_at"]).timestamp()
        time.sleep(CATCH_UP_S)
        cpu_s = time.process_time() - cpu_start
        window_s = time.monotonic() - wall_start
        load_during = os.getloadavg()
        stop.set()
        worker.join(300)
        state = exchange_state(exchange.binance_url)["ws"]
    stats = outcome[0]
    document = stats.document
    counts = document["counts"]
    window_messages = total_messages(document) - total_messages(baseline)

    log.info("reading the topics back...")
    trades = [Trade.from_json(r.value) for r in read_topic(settings, settings.trades_topic)]
    ticks = [Tick.from_json(r.value) for r in read_topic(settings, settings.topic)]
    lost_trades, duplicate_trades = 0, 0
    for symbol in settings.symbols:
        ids = [t.trade_id for t in trades if t.symbol == symbol]
        emitted = state["ids"][symbol]
        expected = set(range(emitted["first_trade_id"], emitted["last_trade_id"] + 1))
        lost_trades += len(expected - set(ids))
        duplicate_trades += len(ids) - len(set(ids))
    sent_by_exchange = {kind: sum(state["sent"][s][kind] for s in settings.symbols)
                        for kind in ("bookTicker", "aggTrade", "ticker")}
    seen = {"bookTicker": counts["received"]["quote"] + counts["duplicates"].get("quote", 0),
            "aggTrade": counts["received"]["trade"] + counts["duplicates"].get("trade", 0),
            "ticker": counts["received"]["ticker"] + counts["duplicates"].get("ticker", 0)}
    frames_lost = {kind: sent_by_exchange[kind] - seen[kind] for kind in seen}
    messages = sum(seen.values()) + sum(counts["malformed"].values())
    rate = window_messages / streamed_s  # what arrived after the first status document, until the market stopped
    holds = [(datetime.fromisoformat(t.timestamp) - datetime.fromisoformat(t.received_at)).total_seconds() * 1000
             for t in ticks]
    quote_latency, trade_latency = stats.latency.samples("quote"), stats.latency.samples("trade")
    record_size = round(statistics.mean(len(t.to_json()) for t in trades[:1000]))
    kafka_records_per_s = (len(trades) + len(ticks)) * window_messages / messages / streamed_s
    perf = None if args.no_perf_tool else kafka_perf_tool(settings, record_size)

    perf_rows = ""
    if perf is not None:
        perf_rows = (f"| `org.apache.kafka.tools.ProducerPerformance`, {PERF_TOOL_RECORDS:,} records of {record_size} B, "
                     f"as fast as it can | {perf[0]:,.0f} | 1 |\n")
    ratio = f"{kafka_records_per_s / perf[0]:.3f}" if perf else "-"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"""# WebSocket feed benchmark

Run {datetime.now(timezone.utc).isoformat(timespec="seconds")} on {platform.node()} ({platform.machine()},
{os.cpu_count()} cores shared with other work; load average {load_before[0]:.1f} before, {load_during[0]:.1f} at the
end), local single-node broker on {settings.kafka_bootstrap}, one run of `bench/bench_ws_feed.py --seconds
{args.seconds:g}`. The replay exchange ran in a child process at real-time speed: {SYMBOL_COUNT} symbols x
({QUOTES_PER_S} book updates + {TRADES_PER_S} trades + 1 ticker) per second. The feed used the defaults:
{settings.ws_max_quotes_hz:g} quotes/s per symbol, a buffer of {settings.ws_buffer_size:,} records, acks=all idempotent producer.

## Messages

| | count |
|---|---:|
| frames received in the whole run | {messages:,} |
| of which book updates / trades / tickers | {seen["bookTicker"]:,} / {seen["aggTrade"]:,} / {seen["ticker"]:,} |
| message rate received ({window_messages:,} frames in the {streamed_s:.1f} s measured) | {rate:,.0f}/s |
| frames the exchange sent but the feed did not receive (book / trade / ticker) | {frames_lost["bookTicker"]} / {frames_lost["aggTrade"]} / {frames_lost["ticker"]} |
| trade ids the exchange emitted missing from the trades topic | {lost_trades} |
| trade ids in the topic more than once | {duplicate_trades} |
| quotes sent / conflated / overflowed | {counts["sent"]["quote"]:,} / {counts["conflated"]:,} / {counts["overflowed"]["quote"]} |
| trades sent from the stream / from REST / overflowed | {counts["sent"]["trade"]:,} / {counts["sent"]["trade_rest"]} / {counts["overflowed"]["trade"]} |
| malformed, reconnects, gaps | {sum(counts["malformed"].values())}, {document["connections"]["reconnects"] or 0}, {document["gaps"]["total"] or 0} |
| Kafka acknowledged / failed / pending | {document["kafka"]["acknowledged"]:,} / {document["kafka"]["failed"]} / {document["kafka"]["pending"]} |

Messages lost: **{lost_trades + sum(max(0, v) for v in frames_lost.values())}**.

## Producer CPU

{cpu_s:.1f} s of CPU time of the producer process for {window_messages:,} messages in {window_s:.1f} s of wall time
(the measured window, then {CATCH_UP_S:g} s of catching up and flushing):
**{cpu_s / (window_messages / 1000) * 1000:.1f} ms of CPU per 1,000 messages** ({cpu_s / window_s * 100:.0f} % of one core).

## Throughput into Kafka

| producer | records/s | ratio to Kafka's tool |
|---|---:|---:|
| btcstream WebSocket feed (conflated quotes + every trade; bound by the input rate) | {kafka_records_per_s:,.0f} | {ratio} |
{perf_rows}
{f"Kafka tool: `{perf[1]}`" if perf else "Kafka's ProducerPerformance was not run."}

## Added latency inside the producer (frame received -> Kafka acknowledged)

| records | n | p50 ms | p99 ms | max ms |
|---|---:|---:|---:|---:|
| trades (never held) | {len(trade_latency):,} | {percentile(trade_latency, 0.5):.1f} | {percentile(trade_latency, 0.99):.1f} | {max(trade_latency, default=float("nan")):.1f} |
| quotes (incl. the wait for their conflation slot) | {len(quote_latency):,} | {percentile(quote_latency, 0.5):.1f} | {percentile(quote_latency, 0.99):.1f} | {max(quote_latency, default=float("nan")):.1f} |
| quotes: the conflation wait alone (build time - receive time) | {len(holds):,} | {percentile(holds, 0.5):.1f} | {percentile(holds, 0.99):.1f} | {max(holds, default=float("nan")):.1f} |

Every record of the run is in the latency figures (the recorder kept up to {LATENCY_KEPT:,} per kind).
Final feed-status document: `{json.dumps(document["connections"])}`.
""")
    log.info("wrote %s", RESULTS)
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
