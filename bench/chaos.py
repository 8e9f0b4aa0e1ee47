"""Chaos run: the whole pipeline under a seeded schedule of faults, then an independent check of every record.

Runs (on a stack of its own: Kafka on --kafka-port, HDFS on --hdfs-port/--webhdfs-port, a temporary
state directory; the default stack on 9092/9000 is never touched) the replay exchange's WebSocket
streams (--symbols 5 symbols x (--quotes-per-second + --trades-per-second) per symbol, plus one 24 h
ticker per symbol per second: 205 messages/s by default) -> `btcstream produce --feed websocket` ->
Kafka -> `btcstream stream` -> Delta tables on HDFS, for --minutes (15), with the faults of
`chaos_schedule` (--each-once: one of every kind, the CI run) in an order and at moments drawn
from --seed. Each fault waits for the previous one's recovery; a fault's recovery time runs from
its start until the job has committed records of both topics written after it started and the
producer streams with no trade gap left to fill. The harness restarts a producer or job that
exits on its own (counted in the table).

At the end the exchange's clock stands still, the producer fills what it missed and stops, the
job drains both topics, and `chaos_check` compares the tables with what the exchange really sent
(`chaos_ledger`) and what the harness wrote into the topics. Prints the table (faults, ticks sent,
stored, lost, duplicated, recovery per fault kind) ending with `lost: N` and `duplicated: N`, writes
it to --results (bench/results/chaos.md), and exits 1 when anything was lost or duplicated or a
check failed (2 when the run itself could not be completed).

Run: `make chaos` or `.venv/bin/python bench/chaos.py [--minutes 15] [--seed 1] [--each-once]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the derived-symbol histories the WebSocket benchmarks use
from helpers.replay_exchange import symbol_histories  # noqa: E402

from btcstream.errors import BtcstreamError  # noqa: E402

import chaos_check as check  # noqa: E402
from chaos_pipeline import ChaosConfig, ChaosPipeline, InjectedFault  # noqa: E402
from chaos_schedule import FAULT_KINDS, PlannedFault, schedule  # noqa: E402

log = logging.getLogger("chaos")

FIRST_FLOW_TIMEOUT_S = 900.0  # stack, job and producer up and the first records committed (a busy machine: minutes)
RECOVERY_TIMEOUT_S = 600.0  # a fault not recovered by then counts as not survived (a job restart: JVM + first batch)
POLL_S = 2.0
SETTLE_TIMEOUT_S = 90.0  # after the clock stops: the producer fills its gaps
DRAIN_TIMEOUT_S = 900.0  # the job commits everything in both topics
AFTER_DRAIN_S = 6.0  # one or two more triggers: nothing more may arrive
RESULTS = ROOT / "bench" / "results" / "chaos.md"


class RunAborted(Exception):
    """The run could not be completed (the pipeline never flowed, a service did not come back)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="run length after the pipeline first flows")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument("--each-once", action="store_true", help="one fault of each kind (the CI run)")
    parser.add_argument("--faults", type=lambda text: [k.strip() for k in text.split(",") if k.strip()], default=None,
                        help=f"only these kinds, one each (comma-separated: {', '.join(FAULT_KINDS)})")
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--quotes-per-second", type=float, default=20.0, help="book updates per symbol per second")
    parser.add_argument("--trades-per-second", type=float, default=20.0, help="trades per symbol per second")
    parser.add_argument("--speed", type=float, default=60.0, help="exchange seconds per wall second")
    parser.add_argument("--kafka-port", type=int, default=19092, help="the chaos broker (its controller on +1)")
    parser.add_argument("--hdfs-port", type=int, default=19000)
    parser.add_argument("--webhdfs-port", type=int, default=19870)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the markdown table goes")
    parser.add_argument("--keep-state", action="store_true", help="leave the state dir (logs, HDFS data) behind")
    return parser.parse_args(argv)


def wait_for(condition, timeout: float, what: str, pipeline: ChaosPipeline) -> float:
    """Poll `condition` (restarting exited processes meanwhile); returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pipeline.restart_exited()
        if condition():
            return time.monotonic() - started
        time.sleep(POLL_S)
    raise RunAborted(f"timed out after {timeout:.0f} s waiting for {what}")


def run_faults(pipeline: ChaosPipeline, plan: list[PlannedFault], minutes: float, done: list[InjectedFault]) -> None:
    """Inject the planned faults one after another (each once the previous recovered), until `minutes` passed;
    each is appended to `done` as it is injected (so a run cut short still reports them)."""
    started = time.monotonic()
    current: InjectedFault | None = None
    marks = pipeline.end_offsets() or {}  # the offsets last seen (the broker may be the thing that goes down)
    remaining = list(plan)
    while remaining or current is not None or time.monotonic() - started < minutes * 60:
        elapsed = time.monotonic() - started
        pipeline.restart_exited()
        offsets = pipeline.end_offsets()
        if offsets is not None:
            marks = offsets
        if current is not None:
            if pipeline.feed_settled(current.ended_wall) and pipeline.flowing_past(current.marks):
                current.recovered = time.monotonic()
                log.info("fault %d %s recovered in %.1f s", current.planned.number, current.planned.kind,
                         current.recovery_s)
                current = None
            elif time.monotonic() - current.started > RECOVERY_TIMEOUT_S:
                log.error("fault %d %s NOT recovered within %.0f s", current.planned.number, current.planned.kind,
                          RECOVERY_TIMEOUT_S)
                current = None
        if current is None and remaining and elapsed >= remaining[0].at_s:
            planned = remaining.pop(0)
            log.info("fault %d/%d at %.0f s: %s", planned.number, len(plan), elapsed, planned.kind)
            before = marks
            current = pipeline.inject(planned)
            current.marks = before  # the offsets last seen (the broker may be the thing that went down)
            log.info("  %s (%.1f s)", current.detail, current.ended - current.started)
            done.append(current)
            continue
        time.sleep(POLL_S)


def finish(pipeline: ChaosPipeline) -> dict[str, int | None]:
    """Stop the market, let the producer fill its gaps and stop, let the job drain; returns the newest trade ids."""
    pipeline.exchange.market.clock.set_speed(1e-6)  # nothing new happens from here on
    stopped_at = time.time()
    wait_for(lambda: pipeline.feed_settled(stopped_at), SETTLE_TIMEOUT_S, "the producer to fill its trade gaps", pipeline)
    newest = {symbol: ids["newest_trade_id"] for symbol, ids in pipeline.exchange.state()["ws"]["ids"].items()}
    pipeline.stop_producer()
    pipeline.producer = None  # not restarted from here on

    def drained() -> bool:
        ends, committed = pipeline.end_offsets(), pipeline.committed_offsets()
        return ends is not None and committed is not None and all(committed[t] >= ends[t] for t in ends)

    seconds = wait_for(drained, DRAIN_TIMEOUT_S, "the job to commit both topics to their end", pipeline)
    log.info("job drained both topics in %.1f s", seconds)
    time.sleep(AFTER_DRAIN_S)
    return newest


def verdict_of(pipeline: ChaosPipeline, faults: list[InjectedFault], newest: dict[str, int | None]) -> check.Verdict:
    settings = pipeline.settings
    raw = check.read_table(settings, "raw_data", ["symbol", "feed", "update_id", "event_time", "bid_price",
                                                  "ask_price", "bid_qty", "ask_qty", "volume_24h"])
    trades = check.read_table(settings, "trades", ["symbol", "trade_id", "feed", "price", "qty", "trade_time",
                                                   "buyer_is_maker"])
    hourly = check.read_table(settings, "hourly_metrics")
    quarantine = check.read_table(settings, "quarantine", ["value", "reason", "topic"])
    windows = [check.FaultWindow(f.planned.kind, f.started, f.ended or f.started) for f in faults]
    sent = {symbol: {kind: pipeline.ledger.sent(symbol, kind) for kind in ("quote", "trade")}
            for symbol in pipeline.histories}
    verdict = check.Verdict()
    check.check_quotes_and_trades(verdict, raw, trades, sent, newest, windows)
    check.check_quarantine(verdict, quarantine, pipeline.malformed_markers)
    check.check_hourly(verdict, hourly, raw, trades)
    check.check_feed_documents(verdict, pipeline.feed_documents)
    check.settle_conflated(verdict)
    if not verdict.counters_add_up():
        verdict.problems.append("counters do not add up (received != stored + quarantined + conflated + gap + lost)")
    return verdict


def fault_table(faults: list[InjectedFault]) -> list[str]:
    """Per fault kind: injected, survived (recovered), median and max recovery."""
    lines = ["| fault kind | injected | survived | recovery median (s) | recovery max (s) |", "|---|---|---|---|---|"]
    for kind in FAULT_KINDS:
        mine = [f for f in faults if f.planned.kind == kind]
        if not mine:
            continue
        times = [f.recovery_s for f in mine if f.recovery_s is not None]
        lines.append(f"| {kind} | {len(mine)} | {len(times)} | "
                     f"{statistics.median(times):.1f} | {max(times):.1f} |" if times else
                     f"| {kind} | {len(mine)} | 0 | - | - |")
    return lines


def report(args: argparse.Namespace, faults: list[InjectedFault], verdict: check.Verdict,
           pipeline: ChaosPipeline, wall_s: float, rate: float) -> str:
    lines = fault_table(faults)
    survived = sum(1 for f in faults if f.recovery_s is not None)
    gap = ", ".join(f"{kind} {n}" for kind, n in sorted(verdict.gap.items())) or "none"
    exits = ", ".join(f"{name} {n}" for name, n in sorted(pipeline.unplanned_exits.items())) or "none"
    lines += [
        "",
        f"faults injected: {len(faults)}, survived (recovered within {RECOVERY_TIMEOUT_S:.0f} s): {survived}",
        f"ticks sent: {verdict.sent['quote'] + verdict.sent['trade']} (quotes {verdict.sent['quote']}, "
        f"trades {verdict.sent['trade']}; ~{rate:.0f} messages/s with the 24 h tickers)",
        f"stored: {verdict.stored['quote'] + verdict.stored['trade']} (quotes {verdict.stored['quote']}, trades "
        f"{verdict.stored['trade']}), plus {verdict.rest_fills} trades filled over REST that no stream sent",
        f"malformed records written: {verdict.malformed_written}, quarantined once: {verdict.quarantined}",
        f"conflated: {verdict.conflated}",
        f"gap (in flight when a connection or the producer died, explained): {gap}",
        f"counters: received {verdict.received} = stored + quarantined + conflated + gap + lost: "
        f"{'adds up' if verdict.counters_add_up() else 'DOES NOT ADD UP'}",
        f"final hourly rows checked against a recomputation from raw_data/trades: {verdict.hourly_final_rows}, "
        f"differing: {len(verdict.hourly_mismatches)}",
        f"processes that exited on their own and were restarted: {exits}",
        f"wall time: {wall_s / 60:.1f} min",
    ]
    if verdict.problems:
        lines += ["", "problems:", *(f"- {p}" for p in verdict.problems)]
    lines += ["", f"lost: {verdict.lost_total}", f"duplicated: {verdict.duplicated_total}"]
    return "\n".join(lines)


def write_results(args: argparse.Namespace, table: str, faults: list[InjectedFault]) -> None:
    fault_lines = [f"| {f.planned.number} | {f.planned.kind} | {f.detail} | "
                   f"{'-' if f.recovery_s is None else f'{f.recovery_s:.1f}'} |" for f in faults]
    text = "\n".join([
        f"# Chaos run: {args.minutes:g} minutes, seed {args.seed}{', one fault of each kind' if args.each_once else ''}",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: `python bench/chaos.py --minutes {args.minutes:g} "
        f"--seed {args.seed}{' --each-once' if args.each_once else ''}"
        f"{' --faults ' + ','.join(args.faults) if args.faults else ''}` on {os.cpu_count()} cores "
        f"({platform.machine()}, {platform.python_version()}), {args.symbols} symbols x ({args.quotes_per_second:g} "
        f"book updates + {args.trades_per_second:g} trades + 1 ticker) per second from the replay exchange at speed "
        f"{args.speed:g}; its own Kafka (:{args.kafka_port}) and HDFS (:{args.hdfs_port}). Load average (1 min) "
        f"{os.getloadavg()[0]:.1f} at the end: the machine is shared, and the job's batches are slower the busier it is.",
        "",
        "HDFS faults: the NameNode and the DataNode are two JVMs (`btcstream.infra.hdfs`); "
        "`hdfs_datanode_restart` stops (SIGTERM) and starts the DataNode alone, `hdfs_namenode_restart` the "
        "NameNode alone (the DataNode registers again by itself).",
        "",
        "```", table, "```", "",
        "| # | fault | what was done | recovery (s) |", "|---|---|---|---|", *fault_lines, ""])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    wall_started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="btcstream-chaos-"))
    config = ChaosConfig(state_dir=state, kafka_port=args.kafka_port, hdfs_port=args.hdfs_port,
                         webhdfs_port=args.webhdfs_port, symbols=args.symbols,
                         quotes_per_second=args.quotes_per_second, trades_per_second=args.trades_per_second,
                         speed=args.speed)
    pipeline = ChaosPipeline(config, symbol_histories(state, args.symbols))
    unknown = sorted(set(args.faults or ()) - set(FAULT_KINDS))
    if unknown:
        print(f"error: unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}", file=sys.stderr)
        return 2
    plan = schedule(args.seed, args.minutes, each_once=args.each_once, only=args.faults)
    rate = args.symbols * (args.quotes_per_second + args.trades_per_second + 1)
    log.info("chaos: %g minutes, seed %d, %d faults, ~%.0f messages/s, state in %s", args.minutes, args.seed,
             len(plan), rate, state)
    verdict: check.Verdict | None = None
    faults: list[InjectedFault] = []
    try:
        pipeline.start()
        seconds = wait_for(lambda: pipeline.flowing_past({pipeline.settings.topic: 0, pipeline.settings.trades_topic: 0}),
                           FIRST_FLOW_TIMEOUT_S, "the first records to be committed", pipeline)
        log.info("pipeline flowing %.0f s after the start", seconds)
        run_faults(pipeline, plan, args.minutes, faults)
        newest = finish(pipeline)
        verdict = verdict_of(pipeline, faults, newest)
    except (RunAborted, BtcstreamError, KeyboardInterrupt) as error:
        log.error("chaos run aborted: %s", str(error) or type(error).__name__)
    finally:
        pipeline.stop()
        if verdict is not None and verdict.passed and not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)
        else:
            log.info("logs and data left in %s", state)
    if verdict is None:
        survived = sum(1 for f in faults if f.recovery_s is not None)
        print("\n".join(["chaos run not completed (see the log above); the faults injected until then:",
                         *fault_table(faults), f"faults injected: {len(faults)}, survived: {survived}",
                         f"wall time: {(time.monotonic() - wall_started) / 60:.1f} min",
                         "lost: unknown", "duplicated: unknown"]))
        return 2
    table = report(args, faults, verdict, pipeline, time.monotonic() - wall_started, rate)
    write_results(args, table, faults)
    print(table)
    unrecovered = [f for f in faults if f.recovery_s is None]
    return 0 if verdict.passed and not unrecovered else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "websockets", "btcstream.exchange"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(main())
