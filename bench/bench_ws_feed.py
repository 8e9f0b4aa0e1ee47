"""WebSocket feed benchmark: the replay exchange streaming >= 2,000 messages/s over 10 symbols into Kafka.

Needs the local stack (`btcstream infra up`). Run: `.venv/bin/python bench/bench_ws_feed.py [--seconds 120]`.
Writes bench/results/ws_feed.md.

1. The replay exchange runs as a child process (`btcstream exchange`, so its CPU is not the
   producer's), real time (speed 1), 10 symbols (BTCUSDT real, S2USDT..S10USDT derived from it),
   QUOTES_PER_S book updates + TRADES_PER_S aggregate trades per symbol per second, plus one 24 h
   ticker per symbol per second: 2,010 messages/s. A second, shorter phase streams STRESS_RATES
   (about 5,000 messages/s, 3,000 of them trades) to see where the feed's ceiling is on this machine.
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
from dataclasses import dataclass
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
STRESS_QUOTES_PER_S, STRESS_TRADES_PER_S = 200, 300  # per symbol: 5,010 messages/s
STRESS_SECONDS = 30.0
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


@dataclass
class Phase:
    """What one phase measured."""

    quotes_per_s: int
    trades_per_s: int
    seconds: float
    document: dict
    messages: int  # frames received in the whole phase
    seen: dict[str, int]  # per exchange stream kind: received + duplicates
    frames_lost: dict[str, int]
    window_messages: int
    streamed_s: float
    window_s: float
    cpu_s: float
    lost_trades: int
    duplicate_trades: int
    trades: int
    ticks: int
    holds_ms: list[float]
    quote_latency_ms: list[float]
    trade_latency_ms: list[float]
    record_size: int
    load: tuple[float, float]

    @property
    def rate(self) -> float:
        return self.window_messages / self.streamed_s

    @property
    def cpu_ms_per_1000(self) -> float:
        return self.cpu_s / (self.window_messages / 1000) * 1000

    @property
    def kafka_records_per_s(self) -> float:
        return (self.trades + self.ticks) * self.window_messages / self.messages / self.streamed_s

    @property
    def lost(self) -> int:
        return self.lost_trades + sum(max(0, v) for v in self.frames_lost.values())


def run_phase(history: dict[str, Path], work: Path, quotes_per_s: int, trades_per_s: int, seconds: float) -> Phase:
    """Stream from a fresh exchange into fresh topics for `seconds`, stop the market, catch up, measure."""
    topic = f"bench-ws-{uuid.uuid4().hex[:6]}"
    base = load_settings().replace(symbols=tuple(history), topic=topic, trades_topic=f"{topic}-trades",
                                   state_dir=work / "state")
    extra = ["--ws-quotes-per-second", str(quotes_per_s), "--ws-trades-per-second", str(trades_per_s)]
    with spawn_exchange(history, speed=1.0, extra_args=extra) as exchange:
        settings = exchange.settings_for(base)
        stop = threading.Event()
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(run_websocket_feed(
            settings, stop, latency=LatencyRecorder(kept=LATENCY_KEPT))))
        log.info("streaming %d symbols at %d quotes + %d trades per symbol per second for %.0f s...", len(history),
                 quotes_per_s, trades_per_s, seconds)
        load_before = os.getloadavg()[0]
        worker.start()
        baseline = None
        while baseline is None or total_messages(baseline) == 0:  # connected and streaming
            time.sleep(0.1)
            baseline = read_feed_status(settings)
        cpu_start, wall_start = time.process_time(), time.monotonic()
        time.sleep(seconds)
        requests.post(f"{exchange.binance_url}/_control/clock", json={"speed": 1e-6}, timeout=10)
        streamed_s = time.time() - datetime.fromisoformat(baseline["written_at"]).timestamp()
        time.sleep(CATCH_UP_S)
        cpu_s = time.process_time() - cpu_start
        window_s = time.monotonic() - wall_start
        load_end = os.getloadavg()[0]
        stop.set()
        worker.join(300)
        state = exchange_state(exchange.binance_url)["ws"]
    stats = outcome[0]
    document = stats.document
    counts = document["counts"]

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
    holds = [(datetime.fromisoformat(t.timestamp) - datetime.fromisoformat(t.received_at)).total_seconds() * 1000
             for t in ticks]
    return Phase(quotes_per_s, trades_per_s, seconds, document, sum(seen.values()) + sum(counts["malformed"].values()),
                 seen, {kind: sent_by_exchange[kind] - seen[kind] for kind in seen},
                 total_messages(document) - total_messages(baseline), streamed_s, window_s, cpu_s, lost_trades,
                 duplicate_trades, len(trades), len(ticks), holds, stats.latency.samples("quote"),
                 stats.latency.samples("trade"), round(statistics.mean(len(t.to_json()) for t in trades[:1000])),
                 (load_before, load_end))


def phase_report(title: str, phase: Phase) -> str:
    counts = phase.document["counts"]
    kafka = phase.document["kafka"]
    lost = phase.frames_lost
    rows = [("quotes: frame received -> acknowledged (incl. the wait for their conflation slot)", phase.quote_latency_ms),
            ("quotes: the conflation wait alone (built - received)", phase.holds_ms),
            ("trades (never held): frame received -> acknowledged", phase.trade_latency_ms)]
    latency = "\n".join(f"| {name} | {len(values):,} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} | "
                        f"{max(values, default=float('nan')):.1f} |" for name, values in rows)
    return f"""## {title}

{SYMBOL_COUNT} symbols x ({phase.quotes_per_s} book updates + {phase.trades_per_s} trades + 1 ticker) per second for
{phase.seconds:g} s (load average {phase.load[0]:.1f} at the start, {phase.load[1]:.1f} at the end).

| | |
|---|---:|
| frames received (whole phase) | {phase.messages:,} (book {phase.seen["bookTicker"]:,}, trades {phase.seen["aggTrade"]:,}, tickers {phase.seen["ticker"]:,}) |
| message rate received | **{phase.rate:,.0f}/s** ({phase.window_messages:,} frames in {phase.streamed_s:.1f} s) |
| frames the exchange sent that the feed did not receive (book / trade / ticker) | {lost["bookTicker"]} / {lost["aggTrade"]} / {lost["ticker"]} |
| emitted trade ids missing from the trades topic / there more than once | {phase.lost_trades} / {phase.duplicate_trades} |
| **messages lost** | **{phase.lost}** |
| quotes sent / conflated / overflowed | {counts["sent"]["quote"]:,} / {counts["conflated"]:,} / {counts["overflowed"]["quote"]} |
| trades sent from the stream / from REST / overflowed | {counts["sent"]["trade"]:,} / {counts["sent"]["trade_rest"]} / {counts["overflowed"]["trade"]} |
| malformed / duplicates / reconnects / gaps | {sum(counts["malformed"].values())} / {sum(counts["duplicates"].values())} / {phase.document["connections"]["reconnects"] or 0} / {phase.document["gaps"]["total"] or 0} |
| Kafka acknowledged / failed / pending | {kafka["acknowledged"]:,} / {kafka["failed"]} / {kafka["pending"]} |
| records into Kafka | {phase.kafka_records_per_s:,.0f}/s |
| producer CPU | {phase.cpu_s:.1f} s in {phase.window_s:.1f} s: **{phase.cpu_ms_per_1000:.0f} ms per 1,000 messages** ({phase.cpu_s / phase.window_s * 100:.0f} % of one core) |

Added latency inside the producer:

| records | n | p50 ms | p99 ms | max ms |
|---|---:|---:|---:|---:|
{latency}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the nominal phase streams (default 120)")
    parser.add_argument("--stress-seconds", type=float, default=STRESS_SECONDS, help="the stress phase (0: skip it)")
    parser.add_argument("--no-perf-tool", action="store_true", help="skip Kafka's ProducerPerformance")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("btcstream.ingest.ws_feed").setLevel(logging.ERROR)  # 9 "no CoinGecko id" lines per phase

    work = Path(f"/tmp/bench-ws-feed-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    history = symbol_histories(work, SYMBOL_COUNT)
    nominal = run_phase(history, work, QUOTES_PER_S, TRADES_PER_S, args.seconds)
    stress = run_phase(history, work, STRESS_QUOTES_PER_S, STRESS_TRADES_PER_S, args.stress_seconds) \
        if args.stress_seconds > 0 else None
    settings = load_settings()
    perf = None if args.no_perf_tool else kafka_perf_tool(settings, nominal.record_size)

    comparison = [("btcstream WebSocket feed, nominal phase (conflated quotes + every trade; the input's rate)",
                   nominal.kafka_records_per_s)]
    if stress is not None:
        comparison.append(("btcstream WebSocket feed, stress phase", stress.kafka_records_per_s))
    if perf is not None:
        comparison.append((f"`org.apache.kafka.tools.ProducerPerformance`, {PERF_TOOL_RECORDS:,} records of "
                           f"{nominal.record_size} B, as fast as it can", perf[0]))
    table = "\n".join(f"| {name} | {rate:,.0f} | {rate / perf[0]:.3f} |" if perf else f"| {name} | {rate:,.0f} | - |"
                      for name, rate in comparison)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"""# WebSocket feed benchmark

Run {datetime.now(timezone.utc).isoformat(timespec="seconds")} on {platform.node()} ({platform.machine()},
{os.cpu_count()} cores shared with other work), local single-node broker on {settings.kafka_bootstrap}, one run of
`bench/bench_ws_feed.py --seconds {args.seconds:g} --stress-seconds {args.stress_seconds:g}`. The replay exchange
runs in a child process at real-time speed with {SYMBOL_COUNT} symbols; at the end of a phase its clock is slowed to a
standstill and the feed gets {CATCH_UP_S:g} s to catch up before it stops and flushes. The feed uses the defaults:
{settings.ws_max_quotes_hz:g} quotes/s per symbol, a buffer of {settings.ws_buffer_size:,} records, an idempotent
acks=all producer (linger 5 ms). "Lost" compares what the exchange says it sent and emitted (`/_control/state`) with
what the feed received and what the topics hold. CPU is the producer process's (all its threads).

{phase_report(f"Nominal: {nominal.rate:,.0f} messages/s for {args.seconds:g} s", nominal)}
{phase_report(f"Stress: {stress.rate:,.0f} messages/s for {args.stress_seconds:g} s", stress) if stress else ""}
## Throughput into Kafka

| producer | records/s | ratio to Kafka's tool |
|---|---:|---:|
{table}

{f"Kafka tool: `{perf[1]}`" if perf else "Kafka's ProducerPerformance was not run."}
""")
    log.info("wrote %s", RESULTS)
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
