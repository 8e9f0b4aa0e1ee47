"""`btcstream compact`: Delta OPTIMIZE of every table's small files, then VACUUM (safe while the job writes).

See `btcstream.storage.maintenance` for why readers never see duplicates or gaps, why OPTIMIZE
runs in Spark, and why the VACUUM retention is at least 7 days unless forced.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from btcstream.names import DATASETS
from btcstream.settings import Settings

DEFAULT_RETENTION_HOURS = 168  # btcstream.storage.maintenance.MIN_RETENTION (not imported: --help stays light)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compact", help="Delta OPTIMIZE (merge small files) and VACUUM each table; "
                                                   "safe while the job writes", description=__doc__)
    parser.add_argument("--dataset", action="append", choices=DATASETS, dest="datasets",
                        help="only this table (repeatable; default: all)")
    parser.add_argument("--retention-hours", type=int, default=DEFAULT_RETENTION_HOURS, metavar="H",
                        help=f"VACUUM keeps files that versions of the last H hours reference "
                             f"(default and minimum without --force: {DEFAULT_RETENTION_HOURS})")
    parser.add_argument("--force", action="store_true", help="accept a retention below the minimum")
    parser.add_argument("--no-vacuum", action="store_true", help="OPTIMIZE only")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done (no JVM, nothing changed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.clients.spark import spark_session
    from btcstream.storage.maintenance import maintain

    reports = maintain(settings, args.datasets or DATASETS,
                       spark=lambda: spark_session(settings, "btcstream-compact"),
                       retention=timedelta(hours=args.retention_hours), force=args.force,
                       vacuum=not args.no_vacuum, dry_run=args.dry_run)
    for report in reports:
        print(report.line(dry_run=args.dry_run))
    return 0
