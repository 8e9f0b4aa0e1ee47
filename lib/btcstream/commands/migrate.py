"""`btcstream migrate`: import a storage root of the old file-sink layout into Delta tables.

Only the files the old sinks committed are imported; hourly_metrics is recomputed from the
imported raw_data; the old folders and checkpoints move to `<root>/legacy/<stamp>/`; the new job
starts reading Kafka where the old one stopped. Resumable. See `btcstream.streaming.migration`.
"""

from __future__ import annotations

import argparse

from btcstream.names import LEGACY_DIR
from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("migrate", help="import an old file-sink storage root into Delta tables "
                                                   "(committed files only; resumable)", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print the plan only (no JVM, nothing changed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.streaming.migration import migrate, plan_migration

    plan = plan_migration(settings)
    for line in plan.lines(settings):
        print(line)
    if plan.empty or args.dry_run:
        return 0
    from btcstream.clients.spark import spark_session

    migrate(spark_session(settings, "btcstream-migrate"), settings, plan, say=lambda line: print(line, flush=True))
    print(f"migrated: the old files are under {settings.storage_url(LEGACY_DIR, plan.stamp)} (delete them once satisfied)")
    return 0
