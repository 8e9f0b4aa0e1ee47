"""`btcstream status`: the Delta tables, the ingest query and the hourly rows, without Spark.

Per table its Delta version, files, rows and last commit; per query its state, rates, batch time,
Kafka lag and totals (inserted, duplicates, late, quarantined); hourly rows open / final / revised.
`--json` prints one JSON object instead. `--watch` redraws every `--every` seconds, with the lag
and how long draining it should take at the current rate, until the job has read all the topic
holds (exit 0), a query failed (exit 1) or Ctrl-C. If Kafka cannot be reached the rest is still
shown, the lag as "-", with a one-line warning.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from btcstream.settings import Settings

if TYPE_CHECKING:
    from btcstream.streaming.status import QueryStatus

CLEAR_SCREEN = "\x1b[H\x1b[2J"
DEFAULT_WATCH_EVERY_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show the Delta tables (version, files, rows), the streaming query "
                                                  "(rates, batch time, Kafka lag, totals) and the hourly rows",
                                   description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--watch", action="store_true",
                        help="refresh until the job has caught up with the topic (a backlog drained)")
    parser.add_argument("--every", type=float, default=DEFAULT_WATCH_EVERY_S, metavar="SECONDS",
                        help=f"with --watch: seconds between refreshes (default {DEFAULT_WATCH_EVERY_S:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.streaming.status import format_report, status_report

    if args.watch:
        return watch(settings, args.every)
    report = status_report(settings)
    if args.json:
        print(report.to_json())
    else:
        for warning in report.warnings:
            print(f"btcstream: warning: {warning}", file=sys.stderr)
        print(f"topic {settings.topic} -> {settings.storage_root}\n")
        print(format_report(report))
    return 1 if any(q.state == "failed" for q in report.queries) else 0


def watch(settings: Settings, every_s: float, *, max_refreshes: int | None = None) -> int:
    """Redraw until caught up (0), a query failed (1) or `max_refreshes` passed (1)."""
    from btcstream.streaming import status

    terminal = sys.stdout.isatty()
    refreshes = 0
    while True:
        report = status.status_report(settings)
        refreshes += 1
        view = "\n".join([
            f"{datetime.now(timezone.utc):%H:%M:%S} UTC  topic {settings.topic} -> {settings.storage_root}",
            *(f"warning: {warning}" for warning in report.warnings), "",
            status.format_report(report), "", progress_line(report.queries)])
        print((CLEAR_SCREEN if terminal else "") + view + ("" if terminal else "\n"), flush=True)
        if any(q.state == "failed" for q in report.queries):
            return 1
        if caught_up(report.queries):
            print("caught up: the job has read all the topic holds")
            return 0
        if max_refreshes is not None and refreshes >= max_refreshes:
            return 1
        time.sleep(every_s)


def total_lag(queries: list[QueryStatus]) -> int | None:
    """Kafka offsets behind the topic's end, summed over the queries; None when unknown."""
    lags = [q.lag_offsets for q in queries if q.lag_offsets is not None]
    return sum(lags) if lags else None


def caught_up(queries: list[QueryStatus]) -> bool:
    """Some query runs or ran, and the known lag is 0 (an unknown lag is not caught up)."""
    started = any(q.state != "never started" for q in queries)
    return started and total_lag(queries) == 0


def progress_line(queries: list[QueryStatus]) -> str:
    """`lag 120,000 offsets, draining at 19,000 rows/s: about 6 s to catch up` (or why not)."""
    lag = total_lag(queries)
    if lag is None:
        return "lag unknown (Kafka not reachable or topic missing)"
    running = [q for q in queries if q.state == "running"]
    if not running:
        return f"lag {lag:,} offsets; no query is running: start `btcstream stream`"
    behind = [q for q in running if (q.lag_offsets or 0) > 0]
    rates = [q.processed_rows_per_s for q in behind if q.processed_rows_per_s]
    if not behind or not rates:
        return f"lag {lag:,} offsets"
    slowest = max((q.lag_offsets or 0) / (q.processed_rows_per_s or float("inf")) for q in behind)
    return f"lag {lag:,} offsets, draining at {min(rates):,.0f} rows/s or more: about {slowest:,.0f} s to catch up"
