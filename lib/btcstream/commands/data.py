"""`btcstream data ls | head | hourly`: what is stored under the storage root, and a quick look at rows.

`ls` is `hdfs dfs -ls` that also knows the file sink's log: each Parquet file is marked committed
or not (an uncommitted file is half-written, from a failed batch or replaced by `btcstream compact`;
readers skip it). `head` shows rows of a dataset; `hourly` prints hourly metrics. All reads go
through `btcstream.storage.readers`, so they need no JVM.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from btcstream.errors import StorageReadError
from btcstream.names import DATASETS, HOURLY_DATASET, TIME_COLUMNS
from btcstream.settings import Settings
if TYPE_CHECKING:  # pandas, pyarrow and the readers load on use, so `btcstream --help` stays quick
    import pandas as pd

HOURLY_SHOWN = ("symbol", "window_start", "avg_price", "avg_spread", "avg_spread_bps", "realized_volatility",
                "high_price", "low_price", "avg_liquidity", "tick_count")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="list stored datasets and look at their rows (no JVM needed)")
    actions = parser.add_subparsers(dest="data_action", required=True)

    ls = actions.add_parser("ls", help="list a directory under the storage root, marking committed files")
    ls.add_argument("path", nargs="?", default="", help="path under the storage root, e.g. raw_data/date=2025-02-14")
    ls.set_defaults(func=run_ls)

    head = actions.add_parser("head", help="show the first rows of a dataset")
    head.add_argument("dataset", choices=DATASETS)
    head.add_argument("-n", "--rows", type=int, default=10, help="rows to show (default 10)")
    head.add_argument("--latest", action="store_true", help="show the newest rows instead of the oldest")
    head.set_defaults(func=run_head)

    hourly = actions.add_parser("hourly", help="print hourly metrics for a time range and symbols")
    hourly.add_argument("--start", type=_utc, help="UTC ISO time, inclusive (default: all)")
    hourly.add_argument("--end", type=_utc, help="UTC ISO time, exclusive (default: all)")
    hourly.add_argument("--symbols", help="comma-separated, e.g. BTCUSDT,ETHUSDT (default: all)")
    hourly.add_argument("--last", type=int, default=24, help="show only the last N hours per symbol (0: all)")
    hourly.add_argument("--engine", default="auto", choices=("auto", "pyarrow", "duckdb", "spark"))
    hourly.set_defaults(func=run_hourly)


def run_ls(args: argparse.Namespace, settings: Settings) -> int:
    """One line per entry: kind, size, modification time (UTC), state, path."""
    print("\n".join(list_lines(settings, args.path)))
    return 0


def list_lines(settings: Settings, relative: str = "") -> list[str]:
    """The `ls` listing of `<root>/<relative>` as text lines."""
    from btcstream.storage.filesystem import storage_filesystem, storage_path
    from btcstream.storage.manifest import committed_files

    fs = storage_filesystem(settings)
    parts = [p for p in relative.strip("/").split("/") if p]
    directory = storage_path(settings, *parts)
    if not fs.exists(directory):
        raise StorageReadError(f"{settings.storage_url(*parts)} does not exist")
    committed = _committed_in(fs, settings, parts)
    entries = sorted(fs.ls(directory, detail=True), key=lambda e: e["name"])
    lines = [f"Found {len(entries)} items in {settings.storage_url(*parts)}"]
    for entry in entries:
        name = entry["name"].rstrip("/")
        kind = "d" if entry.get("type") == "directory" else "-"
        state = ""
        if committed is not None and kind == "-" and name.endswith(".parquet"):
            state = "committed" if name in committed else "UNCOMMITTED"
        elif not parts and kind == "d" and name.rsplit("/", 1)[-1] in DATASETS:
            files = committed_files(fs, name)
            state = f"{len(files)} committed files"
        lines.append(f"{kind} {entry.get('size', 0):>12,} {_mtime(entry)} {state:<18} {name}")
    return lines


def run_head(args: argparse.Namespace, settings: Settings) -> int:
    """Rows of the oldest (or, with --latest, newest) committed files of a dataset.

    Reads files one by one from that end until it has enough rows, so a big dataset stays cheap.
    """
    import pandas as pd

    from btcstream.storage.filesystem import storage_path
    from btcstream.storage.readers import chronological, committed_partition_files, read_files

    time_column = TIME_COLUMNS.get(args.dataset)
    files = chronological(committed_partition_files(settings, args.dataset), storage_path(settings, args.dataset))
    if args.latest:
        files.reverse()
    pieces: list[pd.DataFrame] = []
    for path in files:
        pieces.append(read_files(settings, args.dataset, [path]))
        if sum(len(piece) for piece in pieces) >= args.rows:
            break
    frame = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    if time_column and time_column in frame.columns and len(frame):
        frame = frame.sort_values(time_column, kind="stable")
    rows = frame.tail(args.rows) if args.latest else frame.head(args.rows)
    print(_show(rows) if len(rows) else f"{settings.storage_url(args.dataset)}: no committed rows")
    return 0


def run_hourly(args: argparse.Namespace, settings: Settings) -> int:
    """Hourly metrics, one line per (symbol, hour)."""
    from btcstream.storage.readers import TimeRange, read_hourly_metrics

    symbols = [s for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    frame = read_hourly_metrics(settings, TimeRange(args.start, args.end), symbols, engine=args.engine)
    if frame.empty:
        print(f"{settings.storage_url(HOURLY_DATASET)}: no hourly rows in that range")
        return 0
    if args.last > 0:
        frame = frame.groupby("symbol", sort=True).tail(args.last)
    print(_show(frame[[c for c in HOURLY_SHOWN if c in frame.columns]]))
    print(f"({len(frame)} rows; {frame['symbol'].nunique()} symbols)")
    return 0


def _committed_in(fs, settings: Settings, parts: list[str]) -> set[str] | None:
    """Committed files of the dataset that `parts` lies in (None outside a dataset)."""
    from btcstream.storage.readers import committed_partition_files

    if not parts or parts[0] not in DATASETS:
        return None
    return set(committed_partition_files(settings, parts[0]))


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

