"""`btcstream data ls | head | hourly | history`: what the Delta tables under the storage root hold.

`ls` is `hdfs dfs -ls` that also knows the Delta log: at the root each table shows its version,
files and rows; inside a table each Parquet file is marked "in table" or "not in table" (replaced
by OPTIMIZE and not vacuumed yet, or left by an aborted write; readers never open it). `head`
shows rows of a table, `hourly` prints hourly metrics, `history` lists a table's commits (the
versions `--as-of` takes). All reads go through `btcstream.storage.readers`, so they need no JVM.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from btcstream.errors import LegacyLayout, StorageReadError
from btcstream.names import DATASETS, HOURLY_DATASET, QUARANTINE_DATASET
from btcstream.settings import Settings

if TYPE_CHECKING:  # pandas, pyarrow and the readers load on use, so `btcstream --help` stays quick
    import pandas as pd

HOURLY_SHOWN = ("symbol", "window_start", "avg_price", "avg_spread", "avg_spread_bps", "realized_volatility",
                "high_price", "low_price", "avg_liquidity", "tick_count", "is_final", "revision")
AS_OF_HELP = "read the table as of a version (e.g. 12, see `data history`) or a UTC ISO time"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="list the Delta tables and look at their rows (no JVM needed)")
    actions = parser.add_subparsers(dest="data_action", required=True)

    ls = actions.add_parser("ls", help="list a directory under the storage root, marking the files in each table")
    ls.add_argument("path", nargs="?", default="", help="path under the storage root, e.g. raw_data/date=2025-02-14")
    ls.set_defaults(func=run_ls)

    head = actions.add_parser("head", help="show the first (or newest) rows of a table")
    head.add_argument("dataset", choices=DATASETS)
    head.add_argument("-n", "--rows", type=int, default=10, help="rows to show (default 10)")
    head.add_argument("--latest", action="store_true", help="show the newest rows instead of the oldest")
    head.add_argument("--as-of", dest="as_of", help=AS_OF_HELP)
    head.set_defaults(func=run_head)

    hourly = actions.add_parser("hourly", help="print hourly metrics for a time range and symbols")
    hourly.add_argument("--start", type=_utc, help="UTC ISO time, inclusive (default: all)")
    hourly.add_argument("--end", type=_utc, help="UTC ISO time, exclusive (default: all)")
    hourly.add_argument("--symbols", help="comma-separated, e.g. BTCUSDT,ETHUSDT (default: all)")
    hourly.add_argument("--last", type=int, default=24, help="show only the last N hours per symbol (0: all)")
    hourly.add_argument("--engine", default="auto", choices=("auto", "pyarrow", "duckdb", "spark"))
    hourly.add_argument("--as-of", dest="as_of", help=AS_OF_HELP)
    hourly.set_defaults(func=run_hourly)

    history = actions.add_parser("history", help="list a table's newest commits (the versions --as-of takes)")
    history.add_argument("dataset", choices=DATASETS)
    history.add_argument("-n", "--commits", type=int, default=10, help="commits to show (default 10)")
    history.set_defaults(func=run_history)


def run_ls(args: argparse.Namespace, settings: Settings) -> int:
    """One line per entry: kind, size, modification time (UTC), path, and what the Delta log says of it."""
    print("\n".join(list_lines(settings, args.path)))
    return 0


def list_lines(settings: Settings, relative: str = "") -> list[str]:
    """The `ls` listing of `<root>/<relative>` as text lines."""
    from btcstream.storage.filesystem import storage_filesystem, storage_path

    fs = storage_filesystem(settings)
    parts = [p for p in relative.strip("/").split("/") if p]
    directory = storage_path(settings, *parts)
    if not fs.exists(directory):
        raise StorageReadError(f"{settings.storage_url(*parts)} does not exist")
    in_table = _table_files(settings, parts[0]) if parts and parts[0] in DATASETS else None
    entries = sorted(fs.ls(directory, detail=True), key=lambda e: e["name"])
    lines = [f"Found {len(entries)} items in {settings.storage_url(*parts)}"]
    for entry in entries:
        name = entry["name"].rstrip("/")
        kind = "d" if entry.get("type") == "directory" else "-"
        state = ""
        if in_table is not None and kind == "-" and name.endswith(".parquet"):
            state = "in table" if name in in_table else "not in table"
        elif not parts and kind == "d" and name.rsplit("/", 1)[-1] in DATASETS:
            state = _table_state(settings, name.rsplit("/", 1)[-1])
        lines.append(f"{kind} {entry.get('size', 0):>12,} {_mtime(entry)} {name}" + (f"  [{state}]" if state else ""))
    return lines


def run_head(args: argparse.Namespace, settings: Settings) -> int:
    """Rows of the oldest (or, with --latest, newest) partitions of a table, in time order."""
    from btcstream.storage.readers import read_head

    frame = read_head(settings, args.dataset, args.rows, latest=args.latest, as_of=args.as_of)
    if args.dataset == QUARANTINE_DATASET:
        frame = frame.drop(columns=["value"], errors="ignore")  # the raw bytes: value_preview shows them readably
    print(_show(frame) if len(frame) else f"{settings.storage_url(args.dataset)}: no rows")
    return 0


def run_hourly(args: argparse.Namespace, settings: Settings) -> int:
    """Hourly metrics, one line per (symbol, hour), live hours marked by is_final False."""
    from btcstream.storage.readers import TimeRange, read_hourly_metrics

    symbols = [s for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    frame = read_hourly_metrics(settings, TimeRange(args.start, args.end), symbols, engine=args.engine,
                                as_of=args.as_of)
    if frame.empty:
        print(f"{settings.storage_url(HOURLY_DATASET)}: no hourly rows in that range")
        return 0
    if args.last > 0:
        frame = frame.groupby("symbol", sort=True).tail(args.last)
    print(_show(frame[[c for c in HOURLY_SHOWN if c in frame.columns]]))
    print(f"({len(frame)} rows; {frame['symbol'].nunique()} symbols)")
    return 0


def run_history(args: argparse.Namespace, settings: Settings) -> int:
    """The table's newest commits, newest first."""
    from btcstream.storage.readers import table_history

    frame = table_history(settings, args.dataset, args.commits)
    if frame.empty:
        print(f"{settings.storage_url(args.dataset)}: not a Delta table yet")
        return 0
    frame = frame.astype({"rows_added": "Int64", "rows_updated": "Int64"})
    print(_show(frame))
    return 0


def _table_state(settings: Settings, dataset: str) -> str:
    """'Delta v7, 12 files, 3,456 rows' from the Delta log, or what stands in the way."""
    import pandas as pd

    from btcstream.storage.readers import dataset_summary

    try:
        summary = dataset_summary(settings, [dataset]).iloc[0]
    except LegacyLayout:
        return "old file-sink layout: run `btcstream migrate`"
    if pd.isna(summary["version"]):
        return "no Delta table yet"
    return f"Delta v{int(summary['version'])}, {int(summary['files']):,} files, {int(summary['rows']):,} rows"


def _table_files(settings: Settings, dataset: str) -> set[str]:
    """The data files (paths without scheme) of the table's newest version; empty without a table."""
    from urllib.parse import unquote, urlparse

    from btcstream.storage.readers import open_table

    try:
        table = open_table(settings, dataset)
    except LegacyLayout:
        return set()
    return set() if table is None else {unquote(urlparse(uri).path) for uri in table.file_uris()}


def _mtime(entry: dict) -> str:
    """fsspec names it `mtime` (seconds) locally and `modificationTime` (ms) over WebHDFS."""
    if "modificationTime" in entry:
        seconds = entry["modificationTime"] / 1000.0
    elif "mtime" in entry:
        seconds = float(entry["mtime"])
    else:
        return " " * 16
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _show(frame: pd.DataFrame) -> str:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        return frame.to_string(index=False)


def _utc(text: str) -> datetime:
    """Parse an ISO time; a time without offset is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
