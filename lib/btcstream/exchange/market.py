"""The replayed market: real hourly bars, synthetic intra-bar top of book, and a simulated clock.

Inside each real bar the last-trade price follows piecewise Brownian bridges through four anchors:
the bar's open at its start, its high and its low at two random instants, its close at its end; the
path is clipped to [low, high] and rounded to the tick size, so it passes exactly through the real
open and close, touches the real high and low, and never leaves them. The best bid/ask sit on either
side of that price, one or a few ticks apart, also inside [low, high] (a bar whose high equals its low
has no room: there the bid is one tick below it). Quantities at the best levels are log-normal around
the bar's average trade size. Everything is seeded by (symbol, bar open time): the same instant
always shows the same book.

Windows (24 h statistics, klines of any interval) combine whole real bars with the partial path of the
bars cut by the window's edges; volumes of a partial bar are pro-rated by time. Gaps in the history
(exchange outages) hold the last price and add no volume. After the last bar the market stays at its
final price. Not for: HTTP (see `server`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from btcstream.errors import UnknownSymbol
from btcstream.exchange.history import History

DAY_MS = 86_400_000
SECOND_MS = 1000
PATH_CACHE_BARS = 256  # synthetic paths kept per market (a 24 h window touches 25 hourly bars)
QTY_LOG_MEAN = 1.0  # best-level size = average trade size * exp(N(QTY_LOG_MEAN, QTY_LOG_SIGMA))
QTY_LOG_SIGMA = 1.0
SPREAD_TICKS_P = 0.7  # spread in ticks ~ Geometric(p): one tick 70 % of the time, like liquid Binance books


class SimulatedClock:
    """Exchange time that advances `speed` times faster than the wall clock, from `start_ms`."""

    def __init__(self, start_ms: int, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._lock = threading.Lock()
        self._anchor_ms = float(start_ms)
        self._anchor_wall = time.monotonic()
        self._speed = float(speed)

    @property
    def speed(self) -> float:
        return self._speed

    def now_ms(self) -> int:
        """Current simulated time, epoch ms (UTC)."""
        with self._lock:
            return int(self._anchor_ms + (time.monotonic() - self._anchor_wall) * 1000.0 * self._speed)

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on (simulated time stays continuous)."""
        if speed <= 0:
            raise ValueError("speed must be > 0")
        with self._lock:
            now = time.monotonic()
            self._anchor_ms += (now - self._anchor_wall) * 1000.0 * self._speed
            self._anchor_wall, self._speed = now, float(speed)

    def wall_seconds(self, simulated_ms: float) -> float:
        """How long `simulated_ms` of exchange time lasts on the wall clock."""
        return simulated_ms / 1000.0 / self._speed


@dataclass(frozen=True)
class Quote:
    """Top of book at one instant."""

    last_price: float
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float


@dataclass(frozen=True)
class WindowStats:
    """OHLCV of a time window [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    last_trade_id: int  # cumulative trade count at end_ms (Binance's trade ids are cumulative)


@dataclass(frozen=True)
class _BarPath:
    price: np.ndarray  # last-trade price at each second 0..N of the bar (N = bar seconds)
    spread_ticks: np.ndarray
    trade_at_bid: np.ndarray  # bool: the last trade hit the bid (else lifted the ask)
    bid_qty: np.ndarray
    ask_qty: np.ndarray


class ReplayMarket:
    """Real history for several symbols, replayed on one simulated clock."""

    def __init__(self, histories: dict[str, History], clock: SimulatedClock, seed: int = 0) -> None:
        if not histories:
            raise ValueError("a replay market needs at least one symbol's history")
        self.histories = {symbol.upper(): history for symbol, history in histories.items()}
        self.clock = clock
        self.seed = seed
        self._cumulative_trades = {s: np.concatenate([[0], np.cumsum(h.trades)]) for s, h in self.histories.items()}
        self._path = lru_cache(maxsize=PATH_CACHE_BARS)(self._build_path)

    @property
    def symbols(self) -> list[str]:
        return list(self.histories)

    def history(self, symbol: str) -> History:
        try:
            return self.histories[symbol.upper()]
        except KeyError:
            raise UnknownSymbol(f"no history for {symbol}; this exchange replays {', '.join(self.histories)}") from None

    def quote(self, symbol: str, at_ms: int) -> Quote:
        """Best bid/ask and the last trade price of `symbol` at `at_ms`."""
        history = self.history(symbol)
        index, second = self._locate(history, at_ms)
        path = self._path(history.symbol, index)
        tick = history.tick_size
        price = float(path.price[second])
        spread = int(path.spread_ticks[second]) * tick
        low, high = float(history.low[index]), float(history.high[index])
        spread = min(spread, max(tick, high - low))  # a narrow bar leaves room for fewer ticks
        at_bid = bool(path.trade_at_bid[second])
        if at_bid and price + spread > high + tick / 2:
            at_bid = False
        elif not at_bid and price - spread < low - tick / 2:
            at_bid = True
        bid, ask = (price, price + spread) if at_bid else (price - spread, price)
        decimals = history.price_decimals
        return Quote(last_price=round(price, decimals), bid_price=round(bid, decimals), ask_price=round(ask, decimals),
                     bid_qty=float(path.bid_qty[second]), ask_qty=float(path.ask_qty[second]))

    def price_at(self, symbol: str, at_ms: int) -> float:
        """Last trade price at `at_ms`."""
        history = self.history(symbol)
        index, second = self._locate(history, at_ms)
        return float(self._path(history.symbol, index).price[second])

    def window(self, symbol: str, start_ms: int, end_ms: int) -> WindowStats | None:
        """OHLCV over [start_ms, end_ms) (clipped to the history), or None when no bar overlaps it."""
        history = self.history(symbol)
        start_ms, end_ms = max(start_ms, history.start_ms), min(end_ms, history.end_ms)
        if end_ms <= start_ms:
            return None
        bar_seconds = history.bar_ms // SECOND_MS
        first = max(0, int(np.searchsorted(history.open_ms, start_ms, side="right")) - 1)
        last = int(np.searchsorted(history.open_ms, end_ms, side="left"))  # exclusive
        opened = high = low = closed = None
        volume = quote_volume = 0.0
        trades = 0
        last_trade_id = int(self._cumulative_trades[history.symbol][first])
        for index in range(first, last):
            bar_start = int(history.open_ms[index])
            s0 = max(0, (start_ms - bar_start) // SECOND_MS)
            s1 = min(bar_seconds, -(-(end_ms - bar_start) // SECOND_MS))  # ceil
            if s1 <= s0:
                continue
            if s0 == 0 and s1 == bar_seconds:
                bar_open, bar_high, bar_low, bar_close = (float(a[index]) for a in (history.open, history.high, history.low, history.close))
            else:
                path = self._path(history.symbol, index)
                segment = path.price[s0:s1 + 1] if s1 == bar_seconds else path.price[s0:s1]
                bar_open, bar_close = float(segment[0]), float(segment[-1])
                bar_high, bar_low = float(segment.max()), float(segment.min())
            share = (s1 - s0) / bar_seconds  # pro-rated volume of a partial bar
            opened = bar_open if opened is None else opened
            closed = bar_close
            high = bar_high if high is None else max(high, bar_high)
            low = bar_low if low is None else min(low, bar_low)
            volume += float(history.volume[index]) * share
            quote_volume += float(history.quote_volume[index]) * share
            bar_trades = int(round(int(history.trades[index]) * share))
            trades += bar_trades
            last_trade_id = int(self._cumulative_trades[history.symbol][index]) + int(round(int(history.trades[index]) * (s1 / bar_seconds)))
        if opened is None:
            return None
        return WindowStats(start_ms=start_ms, end_ms=end_ms, open=opened, high=high, low=low, close=closed,  # type: ignore[arg-type]
                           volume=volume, quote_volume=quote_volume, trades=trades, last_trade_id=last_trade_id)

    def _locate(self, history: History, at_ms: int) -> tuple[int, int]:
        """(bar index, second within the bar) showing the market at `at_ms`; gaps and the end hold the last close."""
        if at_ms < history.start_ms:
            return 0, 0
        index = int(np.searchsorted(history.open_ms, at_ms, side="right")) - 1
        bar_seconds = history.bar_ms // SECOND_MS
        offset = (at_ms - int(history.open_ms[index])) // SECOND_MS
        return index, int(min(offset, bar_seconds))

    def _build_path(self, symbol: str, index: int) -> _BarPath:
        history = self.histories[symbol]
        n = history.bar_ms // SECOND_MS
        digest = hashlib.sha256(f"{self.seed}:{symbol}:{int(history.open_ms[index])}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        o, h, l, c = (float(a[index]) for a in (history.open, history.high, history.low, history.close))
        t_high, t_low = rng.choice(np.arange(1, n), size=2, replace=False)
        anchors = sorted([(0, o), (int(t_high), h), (int(t_low), l), (n, c)])
        sigma = max(h - l, history.tick_size) / np.sqrt(n) * 0.6
        price = np.empty(n + 1)
        for (ta, va), (tb, vb) in zip(anchors, anchors[1:]):
            steps = tb - ta
            walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sigma, steps))])
            share = np.arange(steps + 1) / steps
            # Brownian bridge from va to vb: a random walk with its end pinned, W(s) - s * W(1).
            price[ta:tb + 1] = va + (vb - va) * share + walk - share * walk[-1]
        tick = history.tick_size
        price = np.clip(np.round(price / tick) * tick, l, h)
        price[0], price[n], price[int(t_high)], price[int(t_low)] = o, c, h, l
        average_trade = float(history.volume[index]) / max(1, int(history.trades[index]))
        lot = history.lot_size

        def sizes() -> np.ndarray:
            raw = average_trade * np.exp(rng.normal(QTY_LOG_MEAN, QTY_LOG_SIGMA, n + 1))
            return np.maximum(lot, np.round(raw / lot) * lot).round(history.qty_decimals)

        return _BarPath(price=price.round(history.price_decimals), spread_ticks=rng.geometric(SPREAD_TICKS_P, n + 1),
                        trade_at_bid=rng.random(n + 1) < 0.5, bid_qty=sizes(), ask_qty=sizes())
