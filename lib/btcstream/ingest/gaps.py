"""Continuity of the WebSocket feed: which update ids and trade ids arrived per symbol, which are missing,
and the task that fills trade-id gaps from REST.

Three things are told apart:

- An *update-id jump*: a bookTicker `u` more than one above the last on a live connection. `u` is
  the order book's update id, so on the real exchange it jumps whenever several book changes leave
  the top of the book alone. Counted per symbol with the ids; not a data gap.
- A *downtime window*: no connection streamed the symbol, from the last frame or ping before the
  loss to the reconnect. For quotes it is a data gap (a past top of book cannot be fetched again):
  recorded per symbol with the update ids on both sides, never filled.
- A *trade-id gap*: an aggTrade id more than one above the last (inside a connection or across a
  downtime), or trades the feed had to drop because its buffer was full. Recorded, and filled by
  `GapFiller` from `GET /api/v3/aggTrades?fromId=`; ids the exchange no longer has are counted as
  unrecoverable. After a downtime, a symbol that gets no new trade soon is asked from REST anyway
  (trades missed at the end of the window show no gap until the next trade).

Every trade id is accepted once, whichever source brings it first (the stream, the REST fill, the
old or new connection of a handover); later copies are duplicates. `ContinuityTracker` runs on the
feed's event loop (no locks); `GapFiller` is a task there that calls REST in a worker thread.
Not for: building records or Kafka (see `ws_feed`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable

from btcstream.errors import AccessDenied, BadResponse, RateLimited, SourceUnavailable
from btcstream.ingest.clock import ExchangeClock
from btcstream.ingest.sources.binance import AGG_TRADES_MAX_LIMIT, AGG_TRADES_WEIGHT, AggTrade, BinanceClient

log = logging.getLogger(__name__)

MAX_GAPS_KEPT = 200  # most recent gap records in the status document (totals count all)
PROBE_DELAY_S = 2.0  # after a reconnect, how long a symbol's next trade may take before REST is asked
WEIGHT_LIMIT_1M = 6000  # Binance's request weight per minute per IP
FILL_WEIGHT_CEILING = WEIGHT_LIMIT_1M // 2  # gap fills stop for the minute above this used weight
RETRY_BASE_S, RETRY_CAP_S = 1.0, 60.0  # after a 5xx/timeout/bad answer from aggTrades

KIND_DOWNTIME = "downtime"
KIND_TRADE_IDS = "trade_ids"
KIND_TRADE_OVERFLOW = "trade_overflow"


@dataclass
class Gap:
    """A window of missing data of one symbol. Times are epoch seconds (producer clock)."""

    symbol: str
    kind: str  # downtime | trade_ids | trade_overflow
    start: float  # last data before the gap
    end: float | None  # first data after it (None while the window is open)
    from_id: int | None  # trades: first missing id; downtime: last update id before
    to_id: int | None  # trades: last missing id; downtime: first update id after
    reason: str | None = None  # downtime: why the connection was lost
    missing: int = 0  # trades: ids not (yet) recovered
    recovered: int = 0  # trades: ids recovered (from REST, or late from the stream)
    unrecoverable: int = 0  # trades: ids the exchange did not return

    @property
    def filled(self) -> bool:
        """True when every id of a trade gap was recovered; a downtime window is never filled."""
        return self.kind != KIND_DOWNTIME and self.missing == 0 and self.unrecoverable == 0

    def document(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "kind": self.kind, "from_id": self.from_id, "to_id": self.to_id,
                "start": _iso(self.start), "end": _iso(self.end) if self.end is not None else None,
                "duration_s": round(max(0.0, self.end - self.start), 3) if self.end is not None else None,
                "filled": self.filled, "missing": self.missing, "recovered": self.recovered,
                "unrecoverable": self.unrecoverable, "reason": self.reason}


@dataclass(frozen=True)
class FillRequest:
    """Ask REST for trades of `symbol` from `from_id`; up to `to_id` (a gap) or open-ended (a probe)."""

    symbol: str
    from_id: int
    to_id: int | None


@dataclass
class UpdateIdJumps:
    """bookTicker update-id jumps of one symbol on live connections (normal on the real exchange)."""

    count: int = 0
    ids_skipped: int = 0
    last: tuple[int, int, float] | None = None  # (from id, to id, when)

    def document(self) -> dict[str, Any]:
        last = None if self.last is None else {"from_id": self.last[0], "to_id": self.last[1], "at": _iso(self.last[2])}
        return {"count": self.count, "ids_skipped": self.ids_skipped, "last": last}


@dataclass
class _QuoteState:
    last_id: int | None = None
    last_at: float = 0.0
    downtime: Gap | None = None  # the window waiting for its first quote after the reconnect
    down: bool = False


@dataclass
class _TradeState:
    high: int | None = None  # highest id accepted
    high_at: float = 0.0
    missing: list[list[Any]] = field(default_factory=list)  # [lo, hi, Gap], sorted, below `high`
    probe_after: float | None = None  # monotonic time from which to ask REST past `high` (after a downtime)
    probe_gap: Gap | None = None
    down_since: float | None = None


class ContinuityTracker:
    """Per-symbol continuity of quotes and trades, and the gap records (see the module docstring)."""

    def __init__(self, symbols: Iterable[str], max_gaps_kept: int = MAX_GAPS_KEPT,
                 probe_delay_s: float = PROBE_DELAY_S) -> None:
        self.symbols = tuple(symbols)
        self.probe_delay_s = probe_delay_s
        self._quotes = {symbol: _QuoteState() for symbol in self.symbols}
        self._trades = {symbol: _TradeState() for symbol in self.symbols}
        self.update_id_jumps = {symbol: UpdateIdJumps() for symbol in self.symbols}
        self.gaps: deque[Gap] = deque(maxlen=max_gaps_kept)
        self.gap_totals: Counter[str] = Counter()
        self._open_gaps: list[Gap] = []  # trade gaps with ids still missing (whether or not still in `gaps`)
        self._closed_unfilled = 0  # trade gaps closed with ids the exchange did not return
        self.on_trade_gap: Callable[[Gap], None] | None = None  # called when trade ids go missing (wakes the filler)
        self._next_symbol = 0

    # Quotes ---------------------------------------------------------------------------------------------

    def quote(self, symbol: str, update_id: int, at: float) -> bool:
        """A bookTicker update: True to keep it, False for a duplicate (id not above the last)."""
        state = self._quotes[symbol]
        if state.last_id is not None and update_id <= state.last_id:
            return False
        if state.downtime is not None:
            state.downtime.to_id = update_id
            state.downtime = None
        elif state.last_id is not None and update_id > state.last_id + 1:
            jumps = self.update_id_jumps[symbol]
            jumps.count += 1
            jumps.ids_skipped += update_id - state.last_id - 1
            jumps.last = (state.last_id, update_id, at)
        state.last_id, state.last_at = update_id, at
        return True

    # Connections ------------------------------------------------------------------------------------------

    def connection_down(self, symbols: Iterable[str], since: float, reason: str) -> None:
        """The connection carrying `symbols` is lost; nothing arrived after `since` (epoch s)."""
        for symbol in symbols:
            quotes = self._quotes[symbol]
            gap = Gap(symbol=symbol, kind=KIND_DOWNTIME, start=since, end=None, from_id=quotes.last_id, to_id=None,
                      reason=reason)
            quotes.downtime, quotes.down = gap, True
            self._record(gap)
            trades = self._trades[symbol]
            trades.down_since = since
            trades.probe_after = None

    def connection_up(self, symbols: Iterable[str], at: float, monotonic_now: float | None = None) -> None:
        """Streaming again at `at` (epoch s): the downtime windows close; quiet symbols get a REST probe."""
        now = time.monotonic() if monotonic_now is None else monotonic_now
        for symbol in symbols:
            quotes = self._quotes[symbol]
            if quotes.down and quotes.downtime is not None:
                quotes.downtime.end = max(at, quotes.downtime.start)
            quotes.down = False
            trades = self._trades[symbol]
            if trades.high is not None:
                trades.probe_after = now + self.probe_delay_s
                trades.probe_gap = None

    # Trades ------------------------------------------------------------------------------------------------

    def trade(self, symbol: str, trade_id: int, at: float) -> bool:
        """A stream trade: True to send it, False for a duplicate. A jump opens a trade-id gap."""
        state = self._trades[symbol]
        state.probe_after = None  # a trade after the reconnect: a jump, if any, shows as a gap
        return self._accept(state, symbol, trade_id, at, from_stream=True)

    def trade_overflowed(self, symbol: str, trade_id: int, at: float) -> None:
        """An accepted trade could not be sent (buffer full): it becomes missing, to be fetched again."""
        state = self._trades[symbol]
        last = state.missing[-1] if state.missing else None
        if last is not None and last[2].kind == KIND_TRADE_OVERFLOW and last[1] + 1 == trade_id:
            last[1] = trade_id
            last[2].to_id, last[2].end = trade_id, at
            last[2].missing += 1
            return
        gap = Gap(symbol=symbol, kind=KIND_TRADE_OVERFLOW, start=at, end=at, from_id=trade_id, to_id=trade_id,
                  reason="buffer_full", missing=1)
        self._add_missing(state, trade_id, trade_id, gap)
        self._record(gap)

    def _accept(self, state: _TradeState, symbol: str, trade_id: int, at: float, from_stream: bool) -> bool:
        if state.high is None or trade_id > state.high:
            if from_stream and state.high is not None and trade_id > state.high + 1:
                gap = Gap(symbol=symbol, kind=KIND_TRADE_IDS, start=state.high_at, end=at, from_id=state.high + 1,
                          to_id=trade_id - 1, reason="downtime" if state.down_since is not None else "id_jump",
                          missing=trade_id - state.high - 1)
                self._add_missing(state, state.high + 1, trade_id - 1, gap)
                self._record(gap)
            if not from_stream:  # past `high` from REST: a probe after a downtime found missed trades
                # (ids its answer skipped do not exist at the exchange: nothing to wait for)
                if state.probe_gap is None:
                    state.probe_gap = Gap(symbol=symbol, kind=KIND_TRADE_IDS, start=state.down_since or state.high_at,
                                          end=at, from_id=trade_id, to_id=trade_id, reason="downtime")
                    self._record(state.probe_gap)
                state.probe_gap.to_id, state.probe_gap.end = trade_id, at
                state.probe_gap.recovered += 1
            state.high, state.high_at = trade_id, at
            if from_stream:
                state.down_since = None
            return True
        gap = self._take_missing(state, trade_id)
        if gap is None:
            return False
        gap.missing -= 1
        gap.recovered += 1
        if gap.missing == 0:
            self._closed(gap)
        return True

    # Fills ---------------------------------------------------------------------------------------------------

    def next_fill(self, monotonic_now: float | None = None) -> FillRequest | None:
        """The next REST request to make: the lowest missing ids of a symbol (round robin), else a due probe."""
        now = time.monotonic() if monotonic_now is None else monotonic_now
        count = len(self.symbols)
        for offset in range(count):
            symbol = self.symbols[(self._next_symbol + offset) % count]
            state = self._trades[symbol]
            if state.missing:
                self._next_symbol = (self._next_symbol + offset + 1) % count
                lo, hi, _ = state.missing[0]
                return FillRequest(symbol, lo, hi)
        for symbol in self.symbols:
            state = self._trades[symbol]
            if state.probe_after is not None and now >= state.probe_after and state.high is not None:
                return FillRequest(symbol, state.high + 1, None)
        return None

    def next_probe_due(self) -> float | None:
        """Monotonic time of the earliest pending probe (None when none is pending)."""
        due = [s.probe_after for s in self._trades.values() if s.probe_after is not None]
        return min(due) if due else None

    def apply_fill(self, request: FillRequest, trades: list[AggTrade], at: float,
                   limit: int = AGG_TRADES_MAX_LIMIT) -> list[AggTrade]:
        """Take a REST answer to `request`: returns the trades to send (new ids only, oldest first).

        Ids of the requested range that the answer skipped, or that lie before the end of a short
        (last-page) answer, are counted as unrecoverable.
        """
        state = self._trades[request.symbol]
        ordered = sorted(trades, key=lambda t: t.trade_id)
        accepted: list[AggTrade] = []
        expected = request.from_id
        for trade in ordered:
            if trade.trade_id < expected:
                continue
            if request.to_id is not None and trade.trade_id > request.to_id:
                break
            if trade.trade_id > expected:
                self._unrecoverable(state, expected, trade.trade_id - 1)
            if self._accept(state, request.symbol, trade.trade_id, at, from_stream=False):
                accepted.append(trade)
            expected = trade.trade_id + 1
        last_page = len(trades) < limit
        if request.to_id is not None:
            if expected <= request.to_id and (last_page or (ordered and ordered[-1].trade_id > request.to_id)):
                self._unrecoverable(state, expected, request.to_id)
        elif last_page:
            state.probe_after = None  # the probe reached the exchange's latest trade
        elif state.probe_after is not None:
            state.probe_after = 0.0  # more pages: ask again at once
        return accepted

    def abandon_fills(self, reason: str) -> None:
        """REST refuses us for good (e.g. 451): every missing id becomes unrecoverable."""
        for state in self._trades.values():
            for lo, hi, _ in list(state.missing):
                self._unrecoverable(state, lo, hi)
            state.probe_after = None
        log.error("trade gaps can no longer be filled (%s): missing ids counted as unrecoverable", reason)

    @property
    def missing_trades(self) -> int:
        """Trade ids known to be missing and not yet recovered."""
        return sum(hi - lo + 1 for state in self._trades.values() for lo, hi, _ in state.missing)

    # Missing-id intervals --------------------------------------------------------------------------------------

    @staticmethod
    def _add_missing(state: _TradeState, lo: int, hi: int, gap: Gap) -> None:
        index = bisect.bisect_left([item[0] for item in state.missing], lo)
        state.missing.insert(index, [lo, hi, gap])

    @staticmethod
    def _take_missing(state: _TradeState, trade_id: int) -> Gap | None:
        """Remove `trade_id` from the missing intervals; the gap it belonged to, or None."""
        index = bisect.bisect_right([item[0] for item in state.missing], trade_id) - 1
        if index < 0:
            return None
        lo, hi, gap = state.missing[index]
        if trade_id > hi:
            return None
        if lo == hi:
            del state.missing[index]
        elif trade_id == lo:
            state.missing[index][0] = lo + 1
        elif trade_id == hi:
            state.missing[index][1] = hi - 1
        else:
            state.missing[index][1] = trade_id - 1
            state.missing.insert(index + 1, [trade_id + 1, hi, gap])
        return gap

    def _unrecoverable(self, state: _TradeState, lo: int, hi: int) -> None:
        """The exchange does not have ids lo..hi: those still missing are counted as unrecoverable."""
        kept: list[list[Any]] = []
        for start, end, gap in state.missing:
            overlap = min(end, hi) - max(start, lo) + 1
            if overlap <= 0:
                kept.append([start, end, gap])
                continue
            if start < lo:
                kept.append([start, lo - 1, gap])
            if end > hi:
                kept.append([hi + 1, end, gap])
            gap.missing -= overlap
            gap.unrecoverable += overlap
            if gap.missing == 0:
                self._closed(gap)
        state.missing = kept

    # Records ----------------------------------------------------------------------------------------------------

    def _record(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self.gap_totals[gap.kind] += 1
        if gap.kind != KIND_DOWNTIME and gap.missing:
            self._open_gaps.append(gap)
        if gap.kind == KIND_DOWNTIME:
            log.warning("%s: no stream since %s (%s)", gap.symbol, _iso(gap.start), gap.reason)
        elif gap.missing:
            log.info("%s: trade ids %s..%s missing (%s): filling from REST", gap.symbol, gap.from_id, gap.to_id,
                     gap.reason)
            if self.on_trade_gap is not None:
                self.on_trade_gap(gap)

    def _closed(self, gap: Gap) -> None:
        if gap in self._open_gaps:
            self._open_gaps.remove(gap)
        if gap.unrecoverable:
            self._closed_unfilled += 1
            log.warning("%s: trade gap %s..%s closed: %d recovered, %d not available from the exchange", gap.symbol,
                        gap.from_id, gap.to_id, gap.recovered, gap.unrecoverable)

    def document(self) -> dict[str, Any]:
        """The gaps part of the feed-status document."""
        return {"gaps": {"total": dict(self.gap_totals),
                         "unfilled_trade_gaps": len(self._open_gaps) + self._closed_unfilled,
                         "missing_trade_ids": self.missing_trades,
                         "recent": [gap.document() for gap in self.gaps]},
                "update_id_jumps": {symbol: jumps.document() for symbol, jumps in self.update_id_jumps.items()}}


class GapFiller:
    """Fills trade-id gaps from `GET /api/v3/aggTrades` within the request-weight limit.

    Pacing: after each answer, `X-MBX-USED-WEIGHT-1M` is compared with `weight_ceiling`; above it,
    fills wait for the next minute of the exchange's clock. A 429/418 waits its Retry-After (the
    shared host cooldowns refuse earlier calls anyway). 5xx/timeouts/bad answers retry with a
    capped exponential delay; 403/451 stop the filling (the missing ids are counted as unrecoverable).
    """

    def __init__(self, tracker: ContinuityTracker, binance: BinanceClient,
                 send: Callable[[AggTrade], Awaitable[None]], clock: ExchangeClock | None = None,
                 weight_ceiling: int = FILL_WEIGHT_CEILING) -> None:
        self.tracker = tracker
        self.binance = binance
        self.send = send
        self.clock = clock
        self.weight_ceiling = weight_ceiling
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.weight_waits = 0
        self._wake = asyncio.Event()
        self._weight_minute: int | None = None  # the exchange minute `used_weight_1m` was read in
        self._retry_delay = RETRY_BASE_S

    def wake(self) -> None:
        """A gap was recorded: look at once."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            request = self.tracker.next_fill()
            if request is None:
                self._wake.clear()
                due = self.tracker.next_probe_due()
                wait = 1.0 if due is None else max(0.01, min(1.0, due - time.monotonic()))
                await _wait_any(stop, self._wake, wait)
                continue
            await self._pace(stop)
            if stop.is_set():
                return
            try:
                self.requests += 1
                trades = await asyncio.to_thread(self.binance.agg_trades, request.symbol, request.from_id)
            except RateLimited as error:
                self.errors["rate_limited"] += 1
                await _wait_any(stop, None, max(0.0, error.until - time.monotonic()) + 0.01)
                continue
            except AccessDenied as error:
                self.errors["access_denied"] += 1
                self.tracker.abandon_fills(str(error))
                return
            except (SourceUnavailable, BadResponse) as error:
                self.errors[type(error).__name__] += 1
                log.warning("filling %s trades from %d: %s; retrying in %.0f s", request.symbol, request.from_id,
                            error, self._retry_delay)
                await _wait_any(stop, None, self._retry_delay)
                self._retry_delay = min(RETRY_CAP_S, self._retry_delay * 2)
                continue
            self._retry_delay = RETRY_BASE_S
            self._weight_minute = self._exchange_minute()
            for trade in self.tracker.apply_fill(request, trades, time.time()):
                await self.send(trade)

    async def _pace(self, stop: asyncio.Event) -> None:
        used = self.binance.used_weight_1m
        if used is None or used + AGG_TRADES_WEIGHT <= self.weight_ceiling or self._weight_minute is None:
            return
        if self._exchange_minute() != self._weight_minute:
            return  # a new minute: the count restarted
        self.weight_waits += 1
        wait = self._seconds_to_next_minute()
        log.info("request weight %d/min used (ceiling %d for gap fills): waiting %.1f s", used, self.weight_ceiling,
                 wait)
        await _wait_any(stop, None, wait)

    def _exchange_minute(self) -> int:
        now = self.clock.now().timestamp() if self.clock is not None and self.clock.synced else time.time()
        return int(now // 60)

    def _seconds_to_next_minute(self) -> float:
        if self.clock is not None and self.clock.synced:
            now = self.clock.now().timestamp()
            return (60 - now % 60) / self.clock.rate + 0.01
        return 60 - time.time() % 60 + 0.01


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    """Wait `seconds`, or less when `stop` (or `wake`) is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat()
