"""Producer benchmark: throughput into the local Kafka beside Kafka's own producer perf tool, and poll-cycle cost.

Needs the local stack (`btcstream infra up`). Run once: `.venv/bin/python bench/bench_producer.py`.
Writes bench/results/producer.md.

1. btcstream producer end to end: `run_producer` against a local exchange *child process* replaying at
   full speed (the clock so fast that every poll slot is already due: polls run back to back),
   2 symbols, records/s = acknowledged records / wall time of the run.
2. kafka-python alone: the same producer settings (idempotent, acks=all) sending a real tick's bytes
   as fast as it can: the ceiling the Python client sets.
3. Kafka's `org.apache.kafka.tools.ProducerPerformance` (Java) on the same broker, same record size,
   acks=all, idempotent: the broker's ceiling.
4. One poll cycle (clock sync when due, bookTicker and 24hr for all symbols, CoinGecko when due, publish):
   wall ms and CPU ms of the producer process (the exchange runs in another process, so its CPU
   is not counted), median and p95 over many cycles.
"""

from __future__ import annotations

import logging
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' two-symbol history helper

from kafka import KafkaProducer  # noqa: E402

from btcstream.ingest.clock import ExchangeClock  # noqa: E402
from btcstream.exchange import spawn_exchange  # noqa: E402
from btcstream.exchange.history import default_history_path  # noqa: E402
from btcstream.infra.artifacts import jar_dir  # noqa: E402
from btcstream.infra.java import java_executable  # noqa: E402
from btcstream.ingest.producer import MarketPoller, ProducerStats, run_producer  # noqa: E402
from btcstream.ingest.publisher import TickPublisher  # noqa: E402
from btcstream.settings import Settings, load_settings  # noqa: E402
from btcstream.ingest.sources.binance import BinanceClient  # noqa: E402
from btcstream.ingest.sources.coingecko import CoinGeckoClient  # noqa: E402
from helpers.replay_exchange import write_eth_history  # noqa: E402

log = logging.getLogger("bench_producer")

SYMBOLS = ("BTCUSDT", "ETHUSDT")
FULL_SPEED = 36_000.0  # 10 simulated hours per wall second: a 60 s slot (1.7 ms) is due before a poll ends
PRODUCER_RUN_S = 20.0
POLL_CYCLES = 300
CLIENT_RECORDS = 50_000
PERF_TOOL_RECORDS = 300_000
RESULTS = ROOT / "bench" / "results" / "producer.md"


def producer_throughput(settings: Settings, history: dict[str, Path]) -> tuple[ProducerStats, float]:
    with spawn_exchange(history, speed=FULL_SPEED) as exchange:
        run_settings = exchange.settings_for(settings.replace(topic=f"bench-producer-{uuid.uuid4().hex[:6]}"))
        stop = threading.Event()
        threading.Timer(PRODUCER_RUN_S, stop.set).start()
        started = time.perf_counter()
        stats = run_producer(run_settings, stop_event=stop)
        return stats, time.perf_counter() - started


def poll_cycle_cost(settings: Settings, history: dict[str, Path]) -> tuple[list[float], list[float], int]:
    """Wall and CPU milliseconds of POLL_CYCLES poll+publish cycles; returns them and a tick's JSON size."""
    with spawn_exchange(history, speed=60.0) as exchange:  # a realistic pace: CoinGecko due every 30 polls or so
        run_settings = exchange.settings_for(settings.replace(topic=f"bench-cycle-{uuid.uuid4().hex[:6]}"))
        binance, coingecko = BinanceClient(run_settings.binance_url), CoinGeckoClient(run_settings.coingecko_url)
        clock = ExchangeClock(binance.server_time)
        clock.calibrate()
        poller = MarketPoller(run_settings, binance, coingecko, clock, ProducerStats())
        publisher = TickPublisher(run_settings)
        publisher.connect()
        walls, cpus, size = [], [], 0
        for _ in range(POLL_CYCLES):
            wall, cpu = time.perf_counter(), time.process_time()
            for tick in poller.poll():
                publisher.publish(tick)
                size = len(tick.to_json())
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        publisher.flush(30)
        publisher.close()
        return walls, cpus, size


def kafka_python_throughput(settings: Settings, record: bytes) -> float:
    topic = f"bench-client-{uuid.uuid4().hex[:6]}"
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    producer.send(topic, record).get(timeout=30)  # topic auto-created, metadata warm
    started = time.perf_counter()
    for index in range(CLIENT_RECORDS):
        producer.send(topic, key=SYMBOLS[index % 2].encode(), value=record)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return CLIENT_RECORDS / elapsed


def kafka_perf_tool(settings: Settings, record_size: int) -> tuple[float, str]:
    classpath = str(jar_dir(settings, "kafka") / "*")
    command = [java_executable(), "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance",
               "--topic", f"bench-perf-{uuid.uuid4().hex[:6]}", "--num-records", str(PERF_TOOL_RECORDS),
               "--record-size", str(record_size), "--throughput", "-1", "--producer-props",
               f"bootstrap.servers={settings.kafka_bootstrap}", "acks=all", "enable.idempotence=true", "linger.ms=5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    summary = [line for line in done.stdout.splitlines() if "records sent" in line]
    if done.returncode != 0 or not summary:
        raise RuntimeError(f"ProducerPerformance failed ({done.returncode}): {done.stderr[-800:]}")
    rate = float(re.search(r"([\d.]+) records/sec", summary[-1]).group(1))
    return rate, summary[-1].strip()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    settings = load_settings().replace(symbols=SYMBOLS)
    history = {"BTCUSDT": default_history_path(), "ETHUSDT": write_eth_history(Path("/tmp"))}

    log.info("poll cycle cost (%d cycles)...", POLL_CYCLES)
    walls, cpus, record_size = poll_cycle_cost(settings, history)
    log.info("btcstream producer at full replay speed for %.0f s...", PRODUCER_RUN_S)
    stats, elapsed = producer_throughput(settings, history)
    producer_rate = stats.sent / elapsed
    record = b"x" * record_size
    log.info("kafka-python alone, %d records of %d bytes...", CLIENT_RECORDS, record_size)
    client_rate = kafka_python_throughput(settings, record)
    log.info("Kafka ProducerPerformance, %d records of %d bytes...", PERF_TOOL_RECORDS, record_size)
    perf_rate, perf_line = kafka_perf_tool(settings, record_size)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"""# Producer benchmark

Run {datetime.now(timezone.utc).isoformat(timespec="seconds")} on {platform.node()} ({platform.processor() or platform.machine()},
2 cores shared with other work), local single-node KRaft broker on {settings.kafka_bootstrap}, one run of
`bench/bench_producer.py`. Record size {record_size} bytes (one tick's JSON). All producers: acks=all, idempotent, linger 5 ms.

## Throughput into Kafka

| producer | records/s | ratio to Kafka's tool |
|---|---:|---:|
| btcstream `run_producer`, replay at full speed, {len(SYMBOLS)} symbols, {stats.polls} polls in {elapsed:.1f} s | {producer_rate:,.0f} | {producer_rate / perf_rate:.4f} |
| kafka-python alone, same settings, {CLIENT_RECORDS:,} records | {client_rate:,.0f} | {client_rate / perf_rate:.3f} |
| `org.apache.kafka.tools.ProducerPerformance`, {PERF_TOOL_RECORDS:,} records | {perf_rate:,.0f} | 1 |

Producer run: {stats.summary()}.
Kafka tool: `{perf_line}`

The producer is bound by its HTTP polls, not by Kafka: each poll makes 1 bookTicker request for all
symbols + 1 24hr request for all symbols (+ a clock sync each second, CoinGecko when due) and yields one
record per symbol. At the default 60 s interval a live producer needs {len(SYMBOLS)}/60 = {len(SYMBOLS) / 60:.3f} records/s.

## One poll cycle ({POLL_CYCLES} cycles, {len(SYMBOLS)} symbols, exchange in another process)

| | median | p95 | mean |
|---|---:|---:|---:|
| wall ms | {statistics.median(walls):.2f} | {percentile(walls, 0.95):.2f} | {statistics.mean(walls):.2f} |
| producer CPU ms | {statistics.median(cpus):.2f} | {percentile(cpus, 0.95):.2f} | {statistics.mean(cpus):.2f} |

At a 60 s interval this is {statistics.mean(cpus) / 60_000 * 100:.4f} % of one core.
""")
    log.info("wrote %s", RESULTS)
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
