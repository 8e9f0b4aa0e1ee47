"""`btcstream compact`: merge the small files of closed partitions (safe while the job runs)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from btcstream.names import DATASETS
from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    from btcstream.storage.compaction import DEFAULT_GRACE

    parser = subparsers.add_parser("compact", help="merge small Parquet files of closed partitions "
                                                   "(readers never see duplicates or gaps)")
    parser.add_argument("--dataset", action="append", choices=DATASETS, dest="datasets",
                        help="compact only this dataset (repeatable; default: all)")
    parser.add_argument("--min-files", type=int, default=2, help="compact a partition holding at least this many files")
    parser.add_argument("--grace-minutes", type=float, default=DEFAULT_GRACE.total_seconds() / 60,
                        help="delete replaced files only this long after the swap (readers may still hold them)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.storage.compaction import compact

    reports = compact(settings, args.datasets or DATASETS, min_files=args.min_files,
                      grace=timedelta(minutes=args.grace_minutes))
    for report in reports:
        print(f"{report.dataset}: {report.partitions_compacted} partitions compacted "
              f"({report.files_replaced} files replaced), {report.files_deleted} files deleted, "
              f"{report.partitions_skipped_open} partitions still open")
        for line in report.details:
            print(f"  {line}")
    return 0
