"""Test helpers for the local replay exchange: more symbols' history and a started server.

The project ships real BTCUSDT history only; tests that need several symbols replay an "ETHUSDT"
whose bars are the real BTCUSDT bars divided by ETH_PRICE_DIVISOR (clearly synthetic, still real
shapes), or `symbol_histories(directory, n)` for n symbols (each the BTCUSDT bars divided by its rank).
"""

from __future__ import annotations

import csv
from pathlib import Path

from btcstream.exchange import start_exchange
from btcstream.exchange.history import default_history_path
from btcstream.exchange.server import ExchangeServer

ETH_PRICE_DIVISOR = 30.0
ETH_ROWS = 2000


def write_eth_history(directory: Path) -> Path:
    """An ETHUSDT kline CSV (with header) derived from the first ETH_ROWS real BTCUSDT bars."""
    return write_derived_history(directory, "ETHUSDT", ETH_PRICE_DIVISOR)


def write_derived_history(directory: Path, symbol: str, divisor: float, rows: int = ETH_ROWS) -> Path:
    """A kline CSV for `symbol`: the first `rows` real BTCUSDT bars with prices divided by `divisor`."""
    target = directory / f"{symbol.lower()}_1h.csv"
    if target.exists():
        return target
    with default_history_path().open() as source, target.open("w", newline="") as sink:
        reader, writer = csv.reader(source), csv.writer(sink)
        writer.writerow(next(reader))
        for index, row in enumerate(reader):
            if index >= rows:
                break
            prices = [f"{float(v) / divisor:.2f}" for v in row[1:5]]
            low, high = min(prices, key=float), max(prices, key=float)
            writer.writerow([row[0], prices[0], high, low, prices[3], row[5], row[6], row[7], row[8]])
    return target


def symbol_histories(directory: Path, count: int) -> dict[str, Path]:
    """`count` symbols to replay: the real BTCUSDT history, then S2USDT, S3USDT... derived from it."""
    histories = {"BTCUSDT": default_history_path()}
    for rank in range(2, count + 1):
        histories[f"S{rank}USDT"] = write_derived_history(directory, f"S{rank}USDT", float(rank))
    return histories


def two_symbol_exchange(directory: Path, speed: float = 3600.0, **options: object) -> ExchangeServer:
    """A started local exchange replaying BTCUSDT (real) and ETHUSDT (derived), on ephemeral ports."""
    history = {"BTCUSDT": default_history_path(), "ETHUSDT": write_eth_history(directory)}
    return start_exchange(history, speed=speed, **options)


def expected_trade_ids(stored: list[int], emitted: dict[str, int | None]) -> list[int]:
    """The trade ids a feed must have stored, given the exchange's `state()["ws"]["ids"][symbol]`.

    Every id from the first the stream sent to the last it sent, and beyond that any the feed fetched over
    REST while filling a gap (trades that had happened but no stream had sent yet), without a hole, up to at
    most the newest trade that had happened.
    """
    first, last, newest = emitted["first_trade_id"], emitted["last_trade_id"], emitted["newest_trade_id"]
    assert first is not None and last is not None and newest is not None, emitted
    end = min(max([last, *stored]), newest)
    return list(range(first, end + 1))
