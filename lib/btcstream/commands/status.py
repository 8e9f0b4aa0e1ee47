"""`btcstream status`: the streaming job's queries, from the progress they persist (no Spark needed).

`--watch` redraws the table every `--every` seconds, with the total lag and how long draining it
should take at the current rate, until every query has caught up with the topic (exit 0) or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from btcstream.settings import Settings

if TYPE_CHECKING:
    from btcstream.streaming.status import QueryStatus

CLEAR_SCREEN = "\x1b[H\x1b[2J"
DEFAULT_WATCH_EVERY_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show each streaming query: rates, batch time, Kafka lag, "
                                                  "watermark, late and quarantined counts", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--watch", action="store_true",
                        help="refresh the table until every query has caught up (a backlog drained)")
    parser.add_argument("--every", type=float, default=DEFAULT_WATCH_EVERY_S, metavar="SECONDS",
                        help=f"with --watch: seconds between refreshes (default {DEFAULT_WATCH_EVERY_S:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.streaming.status import format_table, query_statuses

    if args.watch:
        return watch(settings, args.every)
    statuses = query_statuses(settings)
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        print(f"topic {settings.topic} -> {settings.storage_root}")
        print(format_table(statuses))
    return 0 if all(s.state in ("running", "stopped", "never started") for s in statuses) else 1


def watch(settings: Settings, every_s: float, *, max_refreshes: int | None = None) -> int:
    """Redraw until caught up (0), a query failed (1) or `max_refreshes` passed (1)."""
    from btcstream.streaming.status import format_table, query_statuses

    logging.getLogger("kafka.coordinator.consumer").setLevel(logging.ERROR)  # a warning on every refresh
    terminal = sys.stdout.isatty()
    refreshes = 0
    while True:
        statuses = query_statuses(settings)
        refreshes += 1
        view = (f"{datetime.now(timezone.utc):%H:%M:%S} UTC  topic {settings.topic} -> {settings.storage_root}\n"
                f"{format_table(statuses)}\n{progress_line(statuses)}")
        print((CLEAR_SCREEN if terminal else "") + view + ("" if terminal else "\n"), flush=True)
        if any(s.state == "failed" for s in statuses):
            return 1
        if caught_up(statuses):
            print("caught up: every query has read all the topic holds")
            return 0
        if max_refreshes is not None and refreshes >= max_refreshes:
            return 1
        time.sleep(every_s)


def total_lag(statuses: list[QueryStatus]) -> int | None:
    """Kafka offsets behind the topic's end, summed over the Kafka queries; None when unknown."""
    lags = [s.lag_offsets for s in statuses if s.lag_offsets is not None]
    return sum(lags) if lags else None


def caught_up(statuses: list[QueryStatus]) -> bool:
    """Some query runs or ran, and none is behind: no offsets left in Kafka, no raw files unread."""
    started = any(s.state != "never started" for s in statuses)
    behind = any((s.lag_offsets or 0) > 0 or (s.lag_files or 0) > 0 for s in statuses)
    return started and not behind and total_lag(statuses) is not None


def progress_line(statuses: list[QueryStatus]) -> str:
    """`lag 120,000 offsets, draining at 19,000 rows/s: about 6 s to catch up` (or why not)."""
    lag = total_lag(statuses)
    if lag is None:
        return "lag unknown (topic or checkpoints not readable yet)"
    running = [s for s in statuses if s.state == "running"]
    if not running:
        return f"lag {lag:,} offsets; no query is running: start `btcstream stream`"
    behind = [s for s in running if (s.lag_offsets or 0) > 0]
    rates = [s.processed_rows_per_s for s in behind if s.processed_rows_per_s]
    if not behind or not rates:
        return f"lag {lag:,} offsets"
    slowest = max((s.lag_offsets or 0) / (s.processed_rows_per_s or float("inf")) for s in behind)
    return f"lag {lag:,} offsets, draining at {min(rates):,.0f} rows/s or more: about {slowest:,.0f} s to catch up"
