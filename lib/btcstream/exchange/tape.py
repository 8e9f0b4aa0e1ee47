"""The replay exchange's tape: every book update and aggregate trade, numbered, derived from the seeded market.

Per symbol there are two numbered sequences on the simulated clock, both anchored at the first bar
of the symbol's history:

- book updates (`<symbol>@bookTicker`): update id `u = n` happens at `anchor + n * quote_step`;
- aggregate trades (`<symbol>@aggTrade`, `GET /api/v3/aggTrades`): trade id `a = n` happens at
  `anchor + n * trade_step`.

The steps are fixed in simulated time when the tape is built, from the wanted *wall-clock* rates
and the clock's speed at that moment: `step = speed / rate` (rates per symbol per wall second).
Changing the clock's speed later scales the wall rate with it; the ids and their times stay put.

Everything about id `n` is a pure function of (seed, symbol, n): its time, the book at that time
(the market's per-second path, `ReplayMarket.quote`), and per-id seeded draws (book sizes jittered
per update; the trade's side, its share of the resting level, how many fills it aggregates). So the
stream and the REST endpoint always agree, and a client can fill a gap by id. Fills: trade ids `f..l`
are contiguous across aggregates (`f` of one = `l` of the previous + 1), as on Binance.

Not for: sending (see `streams`) or JSON shapes (see `payloads`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from btcstream.exchange.market import ReplayMarket

BLOCK = 256  # ids per block of seeded draws (one RNG per block keeps lookups by id O(1))
FILLS_PER_BLOCK = 2 * BLOCK  # an aggregate trade covers two fills on average, at least one
QTY_JITTER_SIGMA = 0.35  # a book update's sizes = the path's sizes * exp(N(0, sigma))
MIN_LEVEL_SHARE = 0.02  # a trade takes U(MIN_LEVEL_SHARE, 1) of the resting level it hits
BLOCK_CACHE = 256  # blocks of draws kept (per tape)


@dataclass(frozen=True)
class BookUpdate:
    """The best bid/ask after book update `update_id` of `symbol`."""

    symbol: str
    update_id: int
    time_ms: int  # simulated time of the update
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float


@dataclass(frozen=True)
class AggTrade:
    """One aggregate trade: the fills of one taker order at one price."""

    symbol: str
    trade_id: int  # `a`
    time_ms: int  # `T`, simulated
    price: float
    qty: float
    first_trade_id: int  # `f`
    last_trade_id: int  # `l`
    buyer_is_maker: bool  # `m`: true = a sell hit the bid


class Schedule:
    """Ids at a fixed step of simulated time: id n happens at `anchor_ms + n * step_us // 1000`."""

    def __init__(self, anchor_ms: int, step_us: int | None) -> None:
        self.anchor_ms = anchor_ms
        self.step_us = step_us  # None: the sequence is switched off (rate 0)

    def time_of(self, n: int) -> int:
        assert self.step_us is not None
        return self.anchor_ms + n * self.step_us // 1000

    def last_id(self, at_ms: int) -> int:
        """The newest id that has happened by `at_ms` (inclusive); -1 when none has."""
        if self.step_us is None or at_ms < self.anchor_ms:
            return -1
        return ((at_ms - self.anchor_ms) * 1000 + 999) // self.step_us

    def first_id_at_or_after(self, at_ms: int) -> int:
        """The first id whose time is >= `at_ms` (it may lie in the future)."""
        return self.last_id(at_ms - 1) + 1


def step_us(rate_per_wall_second: float, speed: float) -> int | None:
    """Simulated microseconds between two ids for `rate` ids per wall second at clock speed `speed`."""
    if rate_per_wall_second < 0:
        raise ValueError("a stream rate must be >= 0")
    if rate_per_wall_second == 0:
        return None
    return max(1, round(speed * 1_000_000 / rate_per_wall_second))


class Tape:
    """Book updates and aggregate trades of every symbol of `market` (see the module docstring)."""

    def __init__(self, market: ReplayMarket, quotes_per_second: float, trades_per_second: float) -> None:
        self.market = market
        self.quotes_per_second = float(quotes_per_second)
        self.trades_per_second = float(trades_per_second)
        speed = market.clock.speed
        quote_step, trade_step = step_us(quotes_per_second, speed), step_us(trades_per_second, speed)
        self.quotes = {s: Schedule(market.history(s).start_ms, quote_step) for s in market.symbols}
        self.trades_schedule = {s: Schedule(market.history(s).start_ms, trade_step) for s in market.symbols}
        self._draws = lru_cache(maxsize=BLOCK_CACHE)(self._block_draws)

    @property
    def symbols(self) -> list[str]:
        return self.market.symbols

    # -- book updates --------------------------------------------------------------------------------------
    def last_update_id(self, symbol: str, at_ms: int) -> int:
        return self.quotes[symbol].last_id(at_ms)

    def book_update(self, symbol: str, update_id: int) -> BookUpdate:
        time_ms = self.quotes[symbol].time_of(update_id)
        quote = self.market.quote(symbol, time_ms)
        bid_jitter, ask_jitter = self._draws(symbol, "book", update_id // BLOCK)
        index = update_id % BLOCK
        history = self.market.history(symbol)
        return BookUpdate(symbol=symbol, update_id=update_id, time_ms=time_ms,
                          bid_price=quote.bid_price, bid_qty=_lots(quote.bid_qty * bid_jitter[index], history.lot_size, history.qty_decimals),
                          ask_price=quote.ask_price, ask_qty=_lots(quote.ask_qty * ask_jitter[index], history.lot_size, history.qty_decimals))

    # -- aggregate trades ----------------------------------------------------------------------------------
    def last_trade_id(self, symbol: str, at_ms: int) -> int:
        return self.trades_schedule[symbol].last_id(at_ms)

    def first_trade_id_at_or_after(self, symbol: str, at_ms: int) -> int:
        return self.trades_schedule[symbol].first_id_at_or_after(at_ms)

    def trade_time(self, symbol: str, trade_id: int) -> int:
        return self.trades_schedule[symbol].time_of(trade_id)

    def trade(self, symbol: str, trade_id: int) -> AggTrade:
        if trade_id < 0:
            raise ValueError("aggregate trade ids start at 0")
        time_ms = self.trades_schedule[symbol].time_of(trade_id)
        quote = self.market.quote(symbol, time_ms)
        maker, share, first_offset, fills = self._draws(symbol, "trade", trade_id // BLOCK)
        index = trade_id % BLOCK
        history = self.market.history(symbol)
        at_bid = maker[index]  # the buyer was the maker: a sell order hit the bid
        level_price, level_qty = (quote.bid_price, quote.bid_qty) if at_bid else (quote.ask_price, quote.ask_qty)
        first = trade_id // BLOCK * FILLS_PER_BLOCK + first_offset[index]
        return AggTrade(symbol=symbol, trade_id=trade_id, time_ms=time_ms, price=level_price,
                        qty=_lots(level_qty * share[index], history.lot_size, history.qty_decimals),
                        first_trade_id=first, last_trade_id=first + fills[index] - 1, buyer_is_maker=at_bid)

    def trades(self, symbol: str, first_id: int, last_id: int) -> list[AggTrade]:
        """Trades `first_id..last_id` inclusive (empty when last_id < first_id)."""
        return [self.trade(symbol, n) for n in range(max(0, first_id), last_id + 1)]

    # -- seeded draws -------------------------------------------------------------------------------------
    def _block_draws(self, symbol: str, kind: str, block: int) -> tuple[list, ...]:  # type: ignore[type-arg]
        digest = hashlib.sha256(f"{self.market.seed}:{symbol}:{kind}:{block}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        if kind == "book":
            return (np.exp(rng.normal(0.0, QTY_JITTER_SIGMA, BLOCK)).tolist(),
                    np.exp(rng.normal(0.0, QTY_JITTER_SIGMA, BLOCK)).tolist())
        maker = (rng.random(BLOCK) < 0.5).tolist()
        share = rng.uniform(MIN_LEVEL_SHARE, 1.0, BLOCK).tolist()
        # A random composition of FILLS_PER_BLOCK fills into BLOCK aggregates of at least one fill each:
        # every block holds the same number of fills, so `f` is known from the id without a running sum.
        cuts = np.sort(rng.choice(np.arange(1, FILLS_PER_BLOCK), size=BLOCK - 1, replace=False))
        bounds = np.concatenate([[0], cuts, [FILLS_PER_BLOCK]])
        return maker, share, bounds[:-1].tolist(), np.diff(bounds).tolist()


def _lots(qty: float, lot: float, decimals: int) -> float:
    """`qty` rounded to whole lots, at least one lot."""
    return round(max(lot, round(qty / lot) * lot), decimals)
