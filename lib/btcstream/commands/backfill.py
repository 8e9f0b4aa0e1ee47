"""`btcstream backfill`: store Binance klines of a past range in `<root>/klines` (resumable, idempotent).

Pages `GET /api/v3/klines` on BTCSTREAM_BINANCE_URL within half of Binance's request-weight limit,
keeps only closed, valid bars, and appends those not stored yet; an interrupted run continues where it
stopped, a rerun adds nothing. Bars are those whose open time lies in [--from, --to). Times are UTC:
a bare date is UTC midnight; a time needs its zone (`Z` or `+00:00`), a time without one is refused.
Progress goes to the log (stderr); one summary line per symbol, then the exchange's history gaps, to stdout.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone

from btcstream.errors import BtcstreamError
from btcstream.settings import Settings

INTERVALS = ("1m", "1h")  # btcstream.ingest.backfill.BACKFILL_INTERVALS (not imported: --help stays light)
DEFAULT_ROWS_PER_COMMIT = 50_000  # btcstream.ingest.backfill.ROWS_PER_COMMIT
_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}$")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("backfill", help="store Binance klines of a past range in <root>/klines "
                                                    "(resumable; a rerun adds no duplicate)", description=__doc__)
    parser.add_argument("--from", dest="start", required=True, metavar="START",
                        help="first open time, UTC: 2021-01-01 (a bare date is UTC midnight) or 2021-01-01T06:00Z")
    parser.add_argument("--to", dest="end", required=True, metavar="END",
                        help="end, exclusive, UTC like --from (bars open before it; only bars already closed "
                             "on the exchange's clock are stored)")
    parser.add_argument("--interval", default="1h", metavar="|".join(INTERVALS),
                        help=f"kline interval: {' or '.join(INTERVALS)} (default 1h)")
    parser.add_argument("--symbols", default=None, metavar="SYMBOLS",
                        help="comma-separated Binance symbols, e.g. BTCUSDT,ETHUSDT (default: BTCSTREAM_SYMBOLS)")
    parser.add_argument("--rows-per-commit", type=int, default=DEFAULT_ROWS_PER_COMMIT, metavar="N",
                        help=f"rows fetched per batch written to the table (default {DEFAULT_ROWS_PER_COMMIT:,}; "
                             "smaller loses less to a kill, larger makes fewer Delta commits)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    start, end = parse_utc("--from", args.start), parse_utc("--to", args.end)
    if end <= start:
        raise BtcstreamError(f"--from {args.start} is not before --to {args.end}: nothing to backfill")
    if args.interval not in INTERVALS:
        raise BtcstreamError(f"--interval {args.interval!r}: expected one of {', '.join(INTERVALS)}")
    if args.rows_per_commit < 1:
        raise BtcstreamError(f"--rows-per-commit {args.rows_per_commit}: expected 1 or more")
    symbols = parse_symbols(args.symbols) if args.symbols is not None else list(settings.symbols)

    from btcstream.ingest.backfill import KlineBackfill
    from btcstream.ingest.sources.binance import BinanceClient
    from btcstream.storage.klines import KlinesTable

    client = BinanceClient(settings.binance_url)
    try:
        backfill = KlineBackfill(client, KlinesTable(settings), args.interval, rows_per_commit=args.rows_per_commit)
        reports = backfill.run(symbols, start, end)
    finally:
        client.close()
    for report in reports:
        print(report.line())
        for gap in report.gaps:
            print(f"  gap: {gap.describe()}")
    return 0


def parse_utc(flag: str, text: str) -> datetime:
    """A bare date (UTC midnight) or an ISO time with a zone, as aware UTC; anything else one clear error."""
    value = text.strip()
    example = "e.g. 2021-01-01 (UTC midnight) or 2021-01-01T06:00Z"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BtcstreamError(f"{flag} {text!r} is not a date or time: {example}") from None
    if _BARE_DATE.match(value):
        return moment.replace(tzinfo=timezone.utc)
    if moment.tzinfo is None:
        raise BtcstreamError(f"{flag} {text!r} has no time zone: write it in UTC ({value}Z or {value}+00:00), "
                             f"or give a bare date (UTC midnight)")
    return moment.astimezone(timezone.utc)


def parse_symbols(text: str) -> list[str]:
    """`btcusdt, ETHUSDT` -> ["BTCUSDT", "ETHUSDT"]; an empty or malformed list is one clear error."""
    symbols = [part.strip().upper() for part in text.split(",") if part.strip()]
    wrong = [symbol for symbol in symbols if not _SYMBOL.match(symbol)]
    if not symbols or wrong:
        raise BtcstreamError(f"--symbols {text!r}: expected comma-separated Binance symbols such as BTCUSDT,ETHUSDT")
    return list(dict.fromkeys(symbols))
