"""Benchmark: live micro-batches into Delta on HDFS while their hour fills up with files.

A live batch (the soak's: ~1,000 quotes and ~1,000 trades over 5 symbols every ~8 s) deduplicates
against the keys already stored in its hour. The hour's partition gains a file or two per batch
until Delta's auto compaction merges them, so what a batch reads grows through the hour. This
feeds `DeltaBatchWriter` such batches, all within one hour, twice side by side (alternating, each
into its own tables): A reads every stored trade key of the hour (as before 2026-12-03), B only
the files whose trade_time range meets the batch's (Delta's file statistics; as shipped). Per
variant: the median batch time over the first and the last third of the batches.

Run on the local stack: `btcstream infra up`, then `python bench/bench_live_batches.py [--batches 90]`.
Writes bench/results/live_batches.md. About 10 minutes of both cores.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_streaming import _load, machine_facts  # noqa: E402

from btcstream.clients.spark import spark_session  # noqa: E402
from btcstream.ingest.tick import Tick, iso_utc  # noqa: E402
from btcstream.ingest.trade import Trade  # noqa: E402
from btcstream.settings import load_settings  # noqa: E402
from btcstream.streaming import delta_batches  # noqa: E402
from btcstream.streaming.delta_batches import DeltaBatchWriter  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "live_batches.md"
SYMBOLS = ("BTCUSDT", "S2USDT", "S3USDT", "S4USDT", "S5USDT")
START = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
KAFKA_COLUMNS = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
log = logging.getLogger("bench_live_batches")


def batch_records(number: int, per_symbol: int, seconds: float) -> list[tuple]:
    """Kafka-shaped rows of live batch `number`: per symbol `per_symbol` WebSocket quotes and trades
    spread over the batch's `seconds`, ids and times increasing from batch to batch."""
    rows: list[tuple] = []
    now = datetime.now(timezone.utc)
    for s, symbol in enumerate(SYMBOLS):
        for i in range(per_symbol):
            ordinal = number * per_symbol + i
            moment = START + timedelta(seconds=number * seconds + i * seconds / per_symbol)
            mid = 100.0 * (s + 1)
            quote = Tick(symbol, iso_utc(moment), iso_utc(moment), mid - 0.05, mid + 0.05, 1.0, 1.0,
                         feed="websocket", update_id=10 ** (s + 5) + ordinal, received_at=iso_utc(moment))
            trade = Trade(symbol=symbol, trade_id=10 ** (s + 4) + ordinal, price=mid, qty=0.5, quote_qty=mid / 2,
                          trade_time=iso_utc(moment), buyer_is_maker=ordinal % 2 == 0,
                          first_trade_id=ordinal, last_trade_id=ordinal)
            rows.append((b"k", quote.to_json(), "ticks", 0, ordinal * 2 + s, now))
            rows.append((b"k", trade.to_json(), "trades", 0, ordinal * 2 + s, now))
    return rows


def run(args: argparse.Namespace) -> str:
    settings = load_settings().replace(spark_master="local[2]")
    root = settings.storage_url("bench", f"live-{uuid.uuid4().hex[:8]}")
    spark = spark_session(settings, "bench-live-batches")
    writers = {variant: DeltaBatchWriter(f"{root}/{variant}/raw_data", f"{root}/{variant}/quarantine",
                                         app_id=f"bench-{variant}", trades_url=f"{root}/{variant}/trades",
                                         trades_topic="trades", partials=True)
               for variant in ("A", "B")}
    span_of = delta_batches._span_of
    seconds: dict[str, list[float]] = {"A": [], "B": []}
    loads = [_load()]
    for number in range(args.batches):
        frame = spark.createDataFrame(batch_records(number, args.per_symbol, args.seconds), KAFKA_COLUMNS).cache()
        frame.count()
        for variant in (("A", "B") if number % 2 == 0 else ("B", "A")):
            # A: no trade_time span, so the stored keys of the whole hour are read (the code before).
            delta_batches._span_of = (lambda groups: None) if variant == "A" else span_of
            started = time.monotonic()
            counts = writers[variant](frame, number)
            seconds[variant].append(time.monotonic() - started)
            assert counts.inserted == counts.trades_inserted == len(SYMBOLS) * args.per_symbol, counts
        delta_batches._span_of = span_of
        frame.unpersist()
        if number % 10 == 9:
            log.info("batch %d: A %.2f s, B %.2f s", number, seconds["A"][-1], seconds["B"][-1])
    loads.append(_load())
    from deltalake import DeltaTable

    files = {v: len(DeltaTable(f"{root}/{v}/trades").file_uris()) for v in writers}
    spark.stop()
    third = max(1, args.batches // 3)
    rows = []
    for variant, label in (("A", "every stored trade key of the hour"), ("B", "files meeting the batch's trade_time span")):
        first, last = statistics.median(seconds[variant][:third]), statistics.median(seconds[variant][-third:])
        rows.append(f"| {variant} | {label} | {first:.2f} | {last:.2f} | {max(seconds[variant]):.2f} | {files[variant]} |")
    ratio = statistics.median(seconds["B"][-third:]) / statistics.median(seconds["A"][-third:])
    return "\n".join([
        "# Live batches while their hour fills up", "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, `python bench/bench_live_batches.py --batches "
        f"{args.batches} --per-symbol {args.per_symbol} --seconds {args.seconds:g}`: {args.batches} batches of "
        f"{len(SYMBOLS)} symbols x {args.per_symbol} WebSocket quotes + {args.per_symbol} trades, {args.seconds:g} s "
        f"of event time each (all in one hour), into Delta on `{root}`; variants alternate which goes first.",
        "", f"- {machine_facts()}", f"- Load average (1/5/15 min): {loads[0]} at the start, {loads[1]} at the end.", "",
        "| variant | stored trade keys read | median s, first third | median s, last third | max s | trades files at the end |",
        "|---|---|---|---|---|---|", *rows, "",
        f"B / A over the last third: {ratio:.2f}.", "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=90)
    parser.add_argument("--per-symbol", type=int, default=200, help="quotes and trades per symbol per batch")
    parser.add_argument("--seconds", type=float, default=8.0, help="event time per batch")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.batches * args.seconds > 3600:
        parser.error("--batches x --seconds must fit in one hour")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    text = run(args)
    args.results.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
