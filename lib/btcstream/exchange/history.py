"""Loading real Binance kline history (CSV) for the local exchange to replay.

Accepts the project's shipped file (`open_time,open,high,low,close,volume,close_time,quote_volume,count`
with a header) and Binance's public data dumps (data.binance.vision: no header, 12 columns, open time
in milliseconds, or microseconds in dumps from 2025 on). Not for: synthesising prices (see `market`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from btcstream.errors import HistoryError

DEFAULT_SYMBOL = "BTCUSDT"
MICROSECOND_EPOCH_THRESHOLD = 10**14  # open times above this are in microseconds (ms epochs are ~1.7e12)
MAX_DECIMALS = 8  # Binance formats every price and quantity with 8 decimals
_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count")


@dataclass(frozen=True)
class History:
    """One symbol's bars, oldest first, as arrays (times in epoch ms, UTC)."""

    symbol: str
    open_ms: np.ndarray  # int64
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # base asset
    quote_volume: np.ndarray
    trades: np.ndarray  # int64
    bar_ms: int  # bar length (3_600_000 for hourly files)
    price_decimals: int  # from the file: the exchange's tick size is 10 ** -price_decimals
    qty_decimals: int

    @property
    def tick_size(self) -> float:
        return 10.0 ** -self.price_decimals

    @property
    def lot_size(self) -> float:
        return 10.0 ** -self.qty_decimals

    @property
    def start_ms(self) -> int:
        return int(self.open_ms[0])

    @property
    def end_ms(self) -> int:
        """End of the last bar (exclusive)."""
        return int(self.open_ms[-1]) + self.bar_ms

    def __len__(self) -> int:
        return len(self.open_ms)


def default_history_path() -> Path:
    """The real BTCUSDT hourly history shipped with btcstream (2020-09-01 to 2022-06-15 UTC)."""
    return Path(str(resources.files("btcstream") / "data" / "binance_btcusdt_1h.csv"))


def load_history(path: Path | str, symbol: str) -> History:
    """Read a Binance kline CSV (with or without header) for `symbol`; validates every bar."""
    path = Path(path)
    if not path.exists():
        raise HistoryError(f"kline history {path} does not exist")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and not _is_number(rows[0][0]):
        header = [name.strip().lower() for name in rows[0]]
        missing = [name for name in _COLUMNS if name not in header]
        if missing:
            raise HistoryError(f"{path}: header lacks {', '.join(missing)}")
        order = [header.index(name) for name in _COLUMNS]
        rows = [[row[i] for i in order] for row in rows[1:]]
    if not rows:
        raise HistoryError(f"{path} holds no klines")
    try:
        table = np.array([[float(value) for value in row[:9]] for row in rows], dtype=np.float64)
    except (ValueError, IndexError) as error:
        raise HistoryError(f"{path}: not a Binance kline CSV ({error})") from None
    open_ms = table[:, 0].astype(np.int64)
    if open_ms[0] > MICROSECOND_EPOCH_THRESHOLD:
        open_ms //= 1000
    order = np.argsort(open_ms, kind="stable")
    table, open_ms = table[order], open_ms[order]
    opens, highs, lows, closes = (table[:, i] for i in (1, 2, 3, 4))
    bad = (highs < np.maximum(opens, closes)) | (lows > np.minimum(opens, closes)) | (lows <= 0)
    if bad.any():
        raise HistoryError(f"{path}: {int(bad.sum())} bars break low <= open/close <= high, first at row {int(np.argmax(bad)) + 1}")
    steps = np.diff(open_ms)
    if (steps <= 0).any():
        raise HistoryError(f"{path}: duplicate open times")
    bar_ms = int(np.min(steps)) if len(steps) else 3_600_000
    return History(symbol=symbol.upper(), open_ms=open_ms, open=opens, high=highs, low=lows, close=closes,
                   volume=table[:, 5], quote_volume=table[:, 7], trades=table[:, 8].astype(np.int64), bar_ms=bar_ms,
                   price_decimals=_decimals(row[i] for row in rows for i in (1, 2, 3, 4)),
                   qty_decimals=_decimals(row[5] for row in rows))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decimals(values: object) -> int:
    """The most digits after the decimal point among `values` (trailing zeros ignored), capped at 8."""
    most = 0
    for value in values:  # type: ignore[attr-defined]
        _, _, fraction = str(value).partition(".")
        most = max(most, len(fraction.rstrip("0")))
        if most >= MAX_DECIMALS:
            return MAX_DECIMALS
    return most
