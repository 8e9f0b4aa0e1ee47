"""`btcstream status`: the streaming job's queries, from the progress they persist (no Spark needed)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show each streaming query: rates, batch time, Kafka lag, "
                                                  "watermark, late and quarantined counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.streaming.status import format_table, query_statuses

    statuses = query_statuses(settings)
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        print(f"topic {settings.topic} -> {settings.storage_root}")
        print(format_table(statuses))
    return 0 if all(s.state in ("running", "stopped", "never started") for s in statuses) else 1
