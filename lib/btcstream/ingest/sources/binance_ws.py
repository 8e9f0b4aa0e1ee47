"""Binance WebSocket market streams: the payloads, and one combined-stream connection kept alive.

Contracts: `/work/shared/reference/market-apis.md`. What a `StreamConnection` does about each
thing a stream connection goes through:

- URL: one combined stream `<base>/stream?streams=a/b/c` (each message `{"stream":..,"data":..}`),
  at most `MAX_STREAMS_PER_CONNECTION`; `combined_stream_urls` splits a longer list so that a
  symbol's streams share a connection. The streams are in the URL, so every reconnect resubscribes.
- Pings: the `websockets` library answers the server's pings by itself whenever the event loop
  runs; the sink called for each frame must therefore never block (the feed hands records to
  Kafka on another thread). The client sends no pings of its own: Binance counts pongs and pings
  against the 5 incoming messages per second.
- Reconnects: after a lost connection or a failed attempt, a jittered exponential `Backoff` that
  resets once a connection has been healthy for `healthy_after_s`; every attempt (planned ones
  too) first passes an `AttemptLimiter`: at most 300 connection attempts per 5 minutes, per IP.
- Planned cut: at `max_age_s` of *exchange* time (23 h: before Binance's 24 h cut; a replay's
  simulated clock runs faster) or on `{"e":"serverShutdown"}`, a successor connection opens
  while the old one keeps streaming. The successor's frames are held until the old connection
  has delivered, on every stream, the position (update id, trade id, event time) the successor
  started at, or `handover_timeout_s` passed; then the old one closes and the held frames follow.
  The overlap's duplicates are for the sink to drop by id (it must anyway); nothing falls between.
- Watchdog: no frame and no ping for `stale_after_s` means a half-open socket: it is aborted
  and replaced (reason `stale`).
- A frame that is not JSON or not a stream envelope is counted through the sink and skipped.
- A handshake answered 451 or 403 raises `AccessDenied` (restricted location, firewall): retrying
  cannot fix it, as on REST.

Not for: turning payloads into records, conflation, Kafka (see `btcstream.ingest.ws_feed`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import urlparse

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode

from btcstream.errors import AccessDenied
from btcstream.ingest.sources.binance import AggTrade, Ticker24h, _as_int, parse_agg_trade
from btcstream.ingest.sources.fields import as_float, as_utc_from_ms
from btcstream.ingest.sources.http import ACCESS_DENIED_CAUSES

log = logging.getLogger(__name__)

MAX_STREAMS_PER_CONNECTION = 1024
STREAM_KINDS = ("bookTicker", "ticker", "aggTrade")  # per symbol: top of book, 24 h statistics, trades
MAX_CONNECTION_AGE_S = 23 * 3600.0  # exchange seconds: hand over well before Binance's 24 h cut
HANDOVER_TIMEOUT_S = 5.0  # longest overlap of two connections before the old one is closed anyway
HANDOVER_MAX_HELD = 100_000  # frames a successor may hold before it takes over regardless
ATTEMPTS_PER_WINDOW, ATTEMPT_WINDOW_S = 300, 300.0  # Binance: 300 connection attempts per 5 minutes per IP
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 60.0
HEALTHY_AFTER_S = 30.0  # a connection that lived this long resets the backoff
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
WATCHDOG_TICK_S = 0.25  # at most; shorter when stale_after_s is short
RECEIVE_QUEUE_FRAMES = 4096  # frames websockets may buffer before it stops reading the socket
MAX_FRAME_BYTES = 1 << 20

# Why a connection ended, as counted in `ConnectionCounters.reconnects`.
REASON_CLOSED = "closed"  # the server closed it with a close frame
REASON_ABNORMAL = "abnormal_closure"  # no close frame (code 1006): TCP reset or end of stream
REASON_ERROR = "error"  # another close code or protocol error
REASON_STALE = "stale"  # watchdog: no frame and no ping for stale_after_s
REASON_MAX_AGE = "max_age"  # planned: before the 24 h cut
REASON_SHUTDOWN = "server_shutdown"  # planned: the server announced maintenance


# -- payloads ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BookTickerEvent:
    """Best bid and ask of one symbol from `<symbol>@bookTicker` (no event time on this stream)."""

    symbol: str
    update_id: int  # `u`: the order book's update id (jumps when several book changes leave the top alone)
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float


@dataclass(frozen=True)
class AggTradeEvent:
    """One aggregate trade from `<symbol>@aggTrade`, with the time the exchange sent it."""

    trade: AggTrade
    event_time: datetime  # `E`


@dataclass(frozen=True)
class TickerEvent:
    """Rolling 24 h statistics from `<symbol>@ticker` (every 1000 ms)."""

    stats: Ticker24h
    event_time_ms: int  # `E`: orders the events of one symbol


def parse_book_ticker_event(data: Any) -> BookTickerEvent | None:
    """A bookTicker payload -> BookTickerEvent, or None when a field is missing or of the wrong type.

    Raw: `{"u":400900217,"s":"BTCUSDT","b":"97017.57000000","B":"0.10025000","a":"97017.58000000","A":"7.11458000"}`
    """
    if not isinstance(data, dict) or not isinstance(data.get("s"), str):
        return None
    update_id = _as_int(data.get("u"))
    values = [as_float(data.get(key)) if isinstance(data.get(key), str) else None for key in ("b", "B", "a", "A")]
    if update_id is None or any(value is None for value in values):
        return None
    bid_price, bid_qty, ask_price, ask_qty = values
    return BookTickerEvent(symbol=data["s"].upper(), update_id=update_id, bid_price=bid_price,  # type: ignore[arg-type]
                           bid_qty=bid_qty, ask_price=ask_price, ask_qty=ask_qty)  # type: ignore[arg-type]


def parse_agg_trade_event(data: Any) -> AggTradeEvent | None:
    """An aggTrade payload -> AggTradeEvent, or None when a field is missing or of the wrong type.

    Raw: `{"e":"aggTrade","E":1672515782136,"s":"BTCUSDT","a":26129,"p":"16500.01","q":"0.010","f":100,"l":105,
    "T":1672515782136,"m":true,"M":true}`
    """
    if not isinstance(data, dict) or not isinstance(data.get("s"), str):
        return None
    trade = parse_agg_trade(data, data["s"])
    event_time = as_utc_from_ms(_as_int(data.get("E")))
    if trade is None or event_time is None:
        return None
    return AggTradeEvent(trade=trade, event_time=event_time)


def parse_ticker_event(data: Any) -> TickerEvent | None:
    """A 24hrTicker payload -> TickerEvent, or None when it names no symbol or has no event time.

    Raw: `{"e":"24hrTicker","E":..,"s":"BTCUSDT","p":"887.80","P":"0.923","w":"96502.11","x":"96129.77",
    "c":"97017.57","Q":"0.001","b":"97017.57","B":"0.10025","a":"97017.58","A":"7.11458","o":"96129.77",
    "h":"97231.00","l":"95410.00","v":"18012.3","q":"1738221467.31","O":1739444316000,"C":1739530716000,
    "F":28385,"L":28460,"n":76}`. A single unreadable statistic becomes None, as in the REST parser.
    """
    if not isinstance(data, dict) or not isinstance(data.get("s"), str):
        return None
    event_ms = _as_int(data.get("E"))
    if event_ms is None:
        return None
    stats = Ticker24h(symbol=data["s"].upper(), price_change=as_float(data.get("p")),
                      price_change_percent=as_float(data.get("P")), last_price=as_float(data.get("c")),
                      open_price=as_float(data.get("o")), high_price=as_float(data.get("h")),
                      low_price=as_float(data.get("l")), volume=as_float(data.get("v")),
                      quote_volume=as_float(data.get("q")), open_time=as_utc_from_ms(_as_int(data.get("O"))),
                      close_time=as_utc_from_ms(_as_int(data.get("C"))))
    return TickerEvent(stats=stats, event_time_ms=event_ms)


# -- URLs ---------------------------------------------------------------------------------------------

def stream_names(symbols: Iterable[str]) -> list[str]:
    """`["BTCUSDT"]` -> `["btcusdt@bookTicker", "btcusdt@ticker", "btcusdt@aggTrade"]` (symbols lower case)."""
    return [f"{symbol.lower()}@{kind}" for symbol in symbols for kind in STREAM_KINDS]


def combined_stream_urls(base_url: str, symbols: Iterable[str],
                         max_streams: int = MAX_STREAMS_PER_CONNECTION) -> list[tuple[str, tuple[str, ...]]]:
    """(URL, symbols) of each connection needed for `symbols`: at most `max_streams` streams each,
    a symbol's streams always on the same connection."""
    per_connection = max(1, max_streams // len(STREAM_KINDS))
    ordered = list(dict.fromkeys(symbol.upper() for symbol in symbols))
    if urlparse(base_url).scheme not in ("ws", "wss"):
        raise ValueError(f"expected a ws:// or wss:// base URL, got {base_url!r}")
    chunks = [tuple(ordered[i:i + per_connection]) for i in range(0, len(ordered), per_connection)]
    return [(f"{base_url.rstrip('/')}/stream?streams={'/'.join(stream_names(chunk))}", chunk) for chunk in chunks]


# -- pacing of connection attempts -----------------------------------------------------------------------

class AttemptLimiter:
    """At most `max_attempts` connection attempts in any sliding window of `window_s` seconds."""

    def __init__(self, max_attempts: int = ATTEMPTS_PER_WINDOW, window_s: float = ATTEMPT_WINDOW_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._monotonic = monotonic
        self._attempts: deque[float] = deque()

    def wait_s(self) -> float:
        """Seconds before another attempt is allowed (0 when one is allowed now)."""
        now = self._monotonic()
        while self._attempts and now - self._attempts[0] >= self.window_s:
            self._attempts.popleft()
        if len(self._attempts) < self.max_attempts:
            return 0.0
        return self._attempts[0] + self.window_s - now

    def record(self) -> None:
        """Count an attempt made now."""
        self._attempts.append(self._monotonic())

    @property
    def in_window(self) -> int:
        self.wait_s()
        return len(self._attempts)


class Backoff:
    """Jittered exponential delays: the n-th delay is uniform in [c/2, c], c = min(cap, base * 2**(n-1))."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S,
                 rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** (self.failures - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


# -- the connection ----------------------------------------------------------------------------------------

class StreamSink(Protocol):
    """What a `StreamConnection` tells its user; called on the event loop, must never block."""

    def on_message(self, stream: str, data: dict[str, Any], received_monotonic: float, received_wall: float) -> None:
        """One stream message, in the order this connection received it (overlap duplicates included)."""

    def on_malformed(self, reason: str) -> None:
        """A frame that was skipped: `not_json` or `not_a_stream_message`."""

    def on_down(self, connection: "StreamConnection", reason: str, since_monotonic: float) -> None:
        """No connection is streaming since `since_monotonic` (the last frame or ping)."""

    def on_up(self, connection: "StreamConnection", at_monotonic: float) -> None:
        """Streaming again after a `on_down` (the downtime window is closed)."""


@dataclass
class ConnectionCounters:
    """What happened to one connection slot (read by the feed-status document)."""

    attempts: int = 0
    failed_attempts: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)  # by reason, planned ones included
    handovers: int = 0  # planned reconnects that overlapped (no downtime)
    overlap_frames_discarded: int = 0  # the old connection's frames after its successor took over
    pings_received: int = 0
    open: bool = False
    opened_at_wall: float | None = None


class _PingAwareConnection(ClientConnection):
    """A client connection that notes when the server pinged (the library answers the ping itself)."""

    last_ping_at: float = 0.0
    counters: ConnectionCounters | None = None

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.last_ping_at = time.monotonic()
            if self.counters is not None:
                self.counters.pings_received += 1
        super().process_event(event)


class _Link:
    """One open WebSocket and what the connection manager tracks about it."""

    def __init__(self, ws: _PingAwareConnection, number: int, opened_at: float) -> None:
        self.ws = ws
        self.number = number
        self.opened_at = opened_at
        self.last_frame_at = opened_at
        self.reader: asyncio.Task[None] | None = None
        self.end_reason: str | None = None
        self.shutdown_announced = False
        self.held: list[tuple[str, dict[str, Any], float, float]] | None = None  # frames held as a successor
        self.first_position: dict[str, int] = {}  # as a successor: first position per stream
        self.last_position: dict[str, int] = {}  # as the primary: last position delivered per stream

    @property
    def ended(self) -> bool:
        return self.reader is not None and self.reader.done()

    @property
    def last_activity(self) -> float:
        return max(self.last_frame_at, self.ws.last_ping_at)


def _position(data: dict[str, Any]) -> int | None:
    """Where a message stands in its stream: update id (`u`), trade id (`a`) or event time (`E`)."""
    for key in ("u", "a", "E"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class StreamConnection:
    """Keeps one combined-stream URL streaming into a `StreamSink` (see the module docstring).

    `run(stop)` returns when `stop` is set. Time: `time.monotonic` local seconds; `exchange_rate()`
    gives exchange seconds per local second (1 live; the replay's speed) to age connections on
    the exchange's clock.
    """

    def __init__(self, url: str, sink: StreamSink, *, name: str = "stream", symbols: tuple[str, ...] = (),
                 stale_after_s: float = 30.0, max_age_s: float = MAX_CONNECTION_AGE_S,
                 exchange_rate: Callable[[], float] = lambda: 1.0, backoff: Backoff | None = None,
                 limiter: AttemptLimiter | None = None, healthy_after_s: float = HEALTHY_AFTER_S,
                 handover_timeout_s: float = HANDOVER_TIMEOUT_S, open_timeout_s: float = OPEN_TIMEOUT_S) -> None:
        self.url = url
        self.sink = sink
        self.name = name
        self.symbols = symbols
        self.stale_after_s = stale_after_s
        self.max_age_s = max_age_s
        self.exchange_rate = exchange_rate
        self.backoff = backoff or Backoff()
        self.limiter = limiter or AttemptLimiter()
        self.healthy_after_s = healthy_after_s
        self.handover_timeout_s = handover_timeout_s
        self.open_timeout_s = open_timeout_s
        self.counters = ConnectionCounters()
        self._stop = asyncio.Event()
        self._primary: _Link | None = None
        self._successor: _Link | None = None
        self._opening: asyncio.Task[_Link | None] | None = None
        self._handover_reason: str | None = None
        self._links_opened = 0
        self._wake = asyncio.Event()
        self._limited_logged = False
        self._closing: set[asyncio.Task[None]] = set()  # old links being closed after a handover

    # The supervisor ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stream, replace, until `stop` is set; closes every socket before returning."""
        self._stop = stop
        try:
            if await self._open(successor=False) is None:
                return
            while True:
                reason = await self._supervise()
                if reason is None:  # stopped
                    return
                lost = self._primary
                assert lost is not None
                self.counters.reconnects[reason] += 1
                self._handover_reason = None
                self.sink.on_down(self, reason, lost.last_activity)
                if time.monotonic() - lost.opened_at >= self.healthy_after_s:
                    self.backoff.reset()
                successor = await self._successor_after_loss()
                if successor is not None:  # opened before the loss, not yet caught up: a short downtime
                    log.warning("%s: connection %d lost (%s) during a handover; connection %d takes over",
                                self.name, lost.number, reason, successor.number)
                    self.sink.on_up(self, successor.opened_at)
                    self._promote(successor)
                    continue
                self._primary = None
                self.counters.open = False
                delay = self.backoff.next_delay()
                log.warning("%s: connection %d lost (%s) after %.1f s; reconnecting in %.2f s", self.name, lost.number,
                            reason, time.monotonic() - lost.opened_at, delay)
                await _sleep_unless(stop, delay)
                link = await self._open(successor=False)
                if link is None:
                    return
                self.sink.on_up(self, link.opened_at)
        finally:
            await self._close_all()

    async def _supervise(self) -> str | None:
        """Watch the primary (and a successor) until the primary is lost; the reason, or None when stopped."""
        tick = min(WATCHDOG_TICK_S, self.stale_after_s / 4)
        while not self._stop.is_set():
            primary = self._primary
            assert primary is not None
            successor = self._successor
            if primary.ended:
                if successor is not None and not successor.ended and self._caught_up(primary, successor):
                    self._count_handover()
                    self._promote(successor)
                    continue
                return primary.end_reason or REASON_ERROR
            now = time.monotonic()
            if now - primary.last_activity > self.stale_after_s:
                log.warning("%s: no frame and no ping on connection %d for %.1f s: taking it for dead", self.name,
                            primary.number, now - primary.last_activity)
                primary.end_reason = REASON_STALE
                primary.ws.transport.abort()
                return REASON_STALE
            self._check_handover(primary, now)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            except TimeoutError:
                pass
        return None

    def _check_handover(self, primary: _Link, now: float) -> None:
        """Start a planned handover when due; finish one that waited too long; forget a successor that died."""
        successor = self._successor
        if self._opening is not None and self._opening.done():
            self._opening = None
        if successor is not None:
            if successor.ended:
                log.warning("%s: connection %d ended (%s) before taking over", self.name, successor.number,
                            successor.end_reason)
                self._successor = None
            elif now - successor.opened_at >= self.handover_timeout_s or len(successor.held or ()) >= HANDOVER_MAX_HELD:
                self._count_handover()
                self._promote(successor)
            return
        if self._opening is not None:
            return
        age_exchange_s = (now - primary.opened_at) * self.exchange_rate()
        if primary.shutdown_announced or age_exchange_s >= self.max_age_s:
            self._handover_reason = REASON_SHUTDOWN if primary.shutdown_announced else REASON_MAX_AGE
            log.info("%s: %s: opening the next connection before closing connection %d", self.name,
                     "server shutdown announced" if primary.shutdown_announced
                     else f"{age_exchange_s / 3600:.2f} exchange hours old", primary.number)
            self._opening = asyncio.get_running_loop().create_task(self._open(successor=True))

    async def _successor_after_loss(self) -> _Link | None:
        """The successor to use after the primary was lost (waiting for one being opened), else None."""
        if self._opening is not None:
            try:
                await self._opening
            except Exception:  # noqa: BLE001 - counted as a failed attempt inside; reconnect normally
                log.exception("%s: opening the next connection failed", self.name)
            self._opening = None
        successor = self._successor
        if successor is not None and successor.ended:
            self._successor = None
            return None
        return successor

    @staticmethod
    def _caught_up(primary: _Link, successor: _Link) -> bool:
        """True when the primary has delivered, on every stream, the position the successor started at."""
        return bool(successor.first_position) and all(
            primary.last_position.get(stream, -1) >= first for stream, first in successor.first_position.items())

    def _count_handover(self) -> None:
        self.counters.handovers += 1
        self.counters.reconnects[self._handover_reason or REASON_MAX_AGE] += 1
        self._handover_reason = None

    def _promote(self, new: _Link) -> None:
        """`new` becomes the primary: the old link closes, then the frames `new` held follow."""
        old = self._primary
        self._primary, self._successor = new, None
        held, new.held = new.held or [], None
        if old is not None and old is not new and not old.ended:
            closing = asyncio.get_running_loop().create_task(self._close(old))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        log.info("%s: connection %d took over%s (%d frames held during the overlap)", self.name, new.number,
                 f" from {old.number}" if old is not None else "", len(held))
        for stream, data, received_monotonic, received_wall in held:
            self._deliver(new, stream, data, received_monotonic, received_wall)

    # Links ----------------------------------------------------------------------------------------------------

    async def _open(self, successor: bool) -> _Link | None:
        """Open a link (as many attempts as needed, limited and backed off) as the primary or as a successor;
        None when stopped first."""
        while not self._stop.is_set():
            wait = self.limiter.wait_s()
            if wait > 0:
                if not self._limited_logged:
                    log.warning("%s: %d connection attempts in the last %.0f s: waiting %.1f s before the next",
                                self.name, self.limiter.max_attempts, self.limiter.window_s, wait)
                    self._limited_logged = True
                await _sleep_unless(self._stop, min(wait, 1.0))
                continue
            self._limited_logged = False
            self.limiter.record()
            self.counters.attempts += 1
            try:
                ws = await connect(self.url, open_timeout=self.open_timeout_s, ping_interval=None,
                                   close_timeout=CLOSE_TIMEOUT_S, max_queue=RECEIVE_QUEUE_FRAMES,
                                   max_size=MAX_FRAME_BYTES, create_connection=_PingAwareConnection)
            except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as error:
                status = error.response.status_code if isinstance(error, InvalidStatus) else None
                if status in ACCESS_DENIED_CAUSES:  # 451/403: retrying cannot fix it
                    parsed = urlparse(self.url)
                    raise AccessDenied(parsed.netloc, parsed.path, status, ACCESS_DENIED_CAUSES[status]) from None
                self.counters.failed_attempts += 1
                delay = self.backoff.next_delay()
                log.warning("%s: cannot connect to %s (%s); retrying in %.2f s", self.name, _short(self.url),
                            str(error) or type(error).__name__, delay)
                await _sleep_unless(self._stop, delay)
                continue
            assert isinstance(ws, _PingAwareConnection)
            if self._stop.is_set():
                await ws.close()
                return None
            ws.counters = self.counters
            self._links_opened += 1
            link = _Link(ws, self._links_opened, time.monotonic())
            if successor:
                link.held = []
                self._successor = link
            else:
                self._primary = link
            link.reader = asyncio.get_running_loop().create_task(self._read(link))  # starts after this returns
            self.counters.open = True
            self.counters.opened_at_wall = time.time()
            log.info("%s: connection %d open to %s", self.name, link.number, _short(self.url))
            return link
        return None

    async def _read(self, link: _Link) -> None:
        try:
            async for frame in link.ws:
                received_monotonic, received_wall = time.monotonic(), time.time()
                link.last_frame_at = received_monotonic
                self._on_frame(link, frame, received_monotonic, received_wall)
        except ConnectionClosed as closed:  # not 1000/1001: `async for` ends quietly on those
            link.end_reason = link.end_reason or (REASON_ABNORMAL if closed.rcvd is None else REASON_ERROR)
        except Exception:  # noqa: BLE001 - a bug in a sink must not leave a dead reader unnoticed
            log.exception("%s: reading connection %d failed", self.name, link.number)
            link.end_reason = link.end_reason or REASON_ERROR
            link.ws.transport.abort()
        else:
            link.end_reason = link.end_reason or REASON_CLOSED
        finally:
            self._wake.set()

    def _on_frame(self, link: _Link, frame: str | bytes, received_monotonic: float, received_wall: float) -> None:
        try:
            payload = json.loads(frame)
        except (ValueError, RecursionError):  # invalid UTF-8: ValueError; `[[[[...` too deep: RecursionError
            self.sink.on_malformed("not_json")
            return
        if not isinstance(payload, dict):
            self.sink.on_malformed("not_a_stream_message")
            return
        stream, data = payload.get("stream"), payload.get("data")
        if payload.get("e") == "serverShutdown" or (isinstance(data, dict) and data.get("e") == "serverShutdown"):
            self._shutdown_announced(link)
            return
        if not isinstance(stream, str) or not isinstance(data, dict):
            if "result" in payload and "id" in payload:  # the answer to a SUBSCRIBE: nothing to pass on
                return
            self.sink.on_malformed("not_a_stream_message")
            return
        if link is self._successor and link.held is not None:
            position = _position(data)
            if position is not None:
                link.first_position.setdefault(stream, position)
            link.held.append((stream, data, received_monotonic, received_wall))
            if self._primary is not None and not self._primary.ended and self._caught_up(self._primary, link):
                self._count_handover()
                self._promote(link)
            return
        if link is not self._primary:  # the old link, after its successor took over: the successor has these
            self.counters.overlap_frames_discarded += 1
            return
        self._deliver(link, stream, data, received_monotonic, received_wall)
        successor = self._successor
        if successor is not None and self._caught_up(link, successor):
            self._count_handover()
            self._promote(successor)

    def _deliver(self, link: _Link, stream: str, data: dict[str, Any], received_monotonic: float,
                 received_wall: float) -> None:
        position = _position(data)
        if position is not None:
            link.last_position[stream] = position
        self.sink.on_message(stream, data, received_monotonic, received_wall)

    def _shutdown_announced(self, link: _Link) -> None:
        if link is self._primary and not link.shutdown_announced:
            log.info("%s: serverShutdown announced on connection %d", self.name, link.number)
            link.shutdown_announced = True
            self._wake.set()

    async def _close(self, link: _Link) -> None:
        try:
            await asyncio.wait_for(link.ws.close(), timeout=CLOSE_TIMEOUT_S + 1)
        except (TimeoutError, OSError):
            link.ws.transport.abort()
        if link.reader is not None:
            await asyncio.wait({link.reader}, timeout=CLOSE_TIMEOUT_S + 1)

    async def _close_all(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.wait({self._opening})
            self._opening = None
        for link in (self._successor, self._primary):
            if link is not None:
                await self._close(link)
        if self._closing:
            await asyncio.wait(set(self._closing))
        self._primary = self._successor = None
        self.counters.open = False


async def _sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less when `stop` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _short(url: str) -> str:
    """A combined-stream URL for a log line: base and stream count, not 1024 stream names."""
    base, _, streams = url.partition("?streams=")
    return f"{base} ({len(streams.split('/'))} streams)" if streams else url
