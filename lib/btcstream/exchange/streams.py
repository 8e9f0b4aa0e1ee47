"""The replay exchange's WebSocket market streams: Binance's stream protocol, served from the tape.

Paths as on `wss://stream.binance.com:9443`: raw `/ws/<stream>[/<stream>...]` (or bare `/ws`, then
SUBSCRIBE) and combined `/stream?streams=<a>/<b>`, whose messages are wrapped as
`{"stream":"<name>","data":{...}}`. Streams (lowercase symbol): `<symbol>@bookTicker`,
`<symbol>@aggTrade` (both from `tape`, every id in order) and `<symbol>@ticker` (24 h statistics
every `ticker_interval_s` of wall time). A path naming an unknown stream is refused with HTTP 400.

Control messages: SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY
(`combined`), answered `{"result":..,"id":..}` or `{"error":{"code":2,"msg":"Invalid request: invalid
stream"},"id":..}`; at most `max_streams` (1024) streams per connection; more than
`max_incoming_per_second` (5) messages in one second closes the connection (1008 "Too many requests").
Control frames (ping/pong) are not counted. Keepalive: a ping every `ping_interval_s`; a connection
whose oldest unanswered ping is older than `pong_timeout_s` is closed (1011). A connection lives at
most `max_connection_age_ms` of simulated time (the 24 h cut, 1001). Faults on request: see
`faults.StreamFault`.

Sending: one pump on the event loop every `tick_s` serialises each new message once (raw bytes, and
the combined wrapping once), then writes it to every subscriber with `websockets.broadcast` (no
per-message awaits); a subscriber whose write buffer passes MAX_WRITE_BUFFER is dropped (slow consumer).
Nobody subscribed: the stream's cursor follows the clock, so a new subscriber gets messages from now.
The server runs its own asyncio loop in a thread; `inject`, `clear_faults` and `state` may be called
from any other thread. Not for: HTTP (see `server`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import socket
import struct
import threading
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from btcstream.errors import BtcstreamError
from btcstream.exchange import payloads
from btcstream.exchange.faults import MALFORMED_VARIANTS, StreamFault
from btcstream.exchange.market import DAY_MS, ReplayMarket
from btcstream.exchange.tape import Tape

log = logging.getLogger(__name__)

T = TypeVar("T")
STREAM_KINDS = ("bookTicker", "aggTrade", "ticker")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_PER_SECOND = 5
PING_INTERVAL_S = 20.0
PONG_TIMEOUT_S = 60.0
TICK_S = 0.01  # the pump's period: messages due in between go out together
TICKER_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 2.0  # how long a close handshake may take before the TCP connection is dropped
MAX_FRAMES_PER_TICK = 2000  # per stream; a backlog beyond it (the clock sped up) drains over later ticks
MAX_WRITE_BUFFER = 16 * 1024 * 1024
APPLIED_FAULTS_KEPT = 1000
SKIPPED_IDS_KEPT = 1000  # per applied gap fault
CONTROL_TIMEOUT_S = 10.0
GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR = 1001, 1008, 1011
INVALID_STREAM = "Invalid request: invalid stream"


@dataclass(eq=False)
class _Client:
    """One open connection and what the server does to it."""

    id: int
    ws: ServerConnection
    path: str
    combined: bool
    connected_ms: int  # simulated
    next_ping_at: float  # loop time
    streams: dict[str, None] = field(default_factory=dict)  # ordered set of stream names
    pings: deque[tuple[float, asyncio.Future[float]]] = field(default_factory=deque)
    incoming: deque[float] = field(default_factory=deque)
    silenced_until: float | None = None  # loop time; math.inf = until cleared
    close_at: float | None = None  # loop time: the close after a serverShutdown event
    skips: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, symbol) -> ids still to skip
    gap_records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    sent: int = 0
    closing: bool = False
    close_reason: str | None = None


class StreamServer:
    """Binance-style market streams of `tape` on a loopback port (see the module docstring)."""

    def __init__(self, market: ReplayMarket, tape: Tape, host: str = "127.0.0.1", port: int = 0, *,
                 ping_interval_s: float = PING_INTERVAL_S, pong_timeout_s: float = PONG_TIMEOUT_S,
                 max_connection_age_ms: int | None = DAY_MS, max_streams: int = MAX_STREAMS_PER_CONNECTION,
                 max_incoming_per_second: int = MAX_INCOMING_PER_SECOND, tick_s: float = TICK_S,
                 ticker_interval_s: float = TICKER_INTERVAL_S, close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        if ping_interval_s <= 0 or pong_timeout_s <= 0 or tick_s <= 0 or ticker_interval_s <= 0:
            raise ValueError("ping_interval_s, pong_timeout_s, tick_s and ticker_interval_s must be > 0")
        self.market = market
        self.tape = tape
        self.host = host
        self.port = port
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.max_connection_age_ms = max_connection_age_ms
        self.max_streams = max_streams
        self.max_incoming_per_second = max_incoming_per_second
        self.tick_s = tick_s
        self.ticker_interval_s = ticker_interval_s
        self.close_timeout_s = close_timeout_s
        self._streams = {f"{s.lower()}@{kind}": (s, kind) for s in market.symbols for kind in STREAM_KINDS}
        self._names = {value: name for name, value in self._streams.items()}
        self._prefix = {name: f'{{"stream":"{name}","data":'.encode() for name in self._streams}
        self._subscribers: dict[str, set[_Client]] = {name: set() for name in self._streams}
        self._clients: dict[int, _Client] = {}
        self._next_id = 1
        self._opened = 0
        self._closed: Counter[str] = Counter()
        self._cursor: dict[tuple[str, str], int] = {}  # (symbol, kind) -> last id the stream has passed
        self._emitted: dict[tuple[str, str], list[int]] = {}  # (symbol, kind) -> [first, last] id sent to someone
        self._ticker_due: dict[str, float] = {}
        self._sent: Counter[tuple[str, str]] = Counter()  # (symbol, kind) -> frames written, all connections
        self._events: Counter[str] = Counter()
        self._pending: list[list[Any]] = []  # [StreamFault, connections still to hit] for target "next"
        self._applied: deque[dict[str, Any]] = deque(maxlen=APPLIED_FAULTS_KEPT)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._observers: list[Callable[[str, str, list[int]], None]] = []

    def observe(self, callback: Callable[[str, str, list[int]], None]) -> None:
        """Call `callback(symbol, kind, ids)` after each delivery, on the server's loop, with the ids
        written to at least one connection (none to a silenced one, not the ids a gap skipped)."""
        self._observers.append(callback)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # -- lifecycle (any thread) ----------------------------------------------------------------------------
    def start(self) -> "StreamServer":
        """Serve in a background thread with its own event loop; returns once the port is bound."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="exchange-streams", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise BtcstreamError(f"the replay exchange's WebSocket server could not start on {self.host}:{self.port}: "
                                 f"{failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        """Close every connection (1001, as a server going away), stop the loop and join its thread."""
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=self.close_timeout_s + 10)
        except Exception:  # a stuck close must not keep the exchange from stopping
            log.exception("WebSocket server did not close cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def inject(self, fault: StreamFault) -> list[dict[str, Any]]:
        """Apply `fault` (see `faults.StreamFault`); returns what was done to which open connection."""
        return self._on_loop(self._inject, fault)

    def clear_faults(self) -> None:
        """Forget pending faults, end silences and cancel gaps still to come."""
        self._on_loop(self._clear)

    def state(self) -> dict[str, Any]:
        """Connections, messages sent per symbol and kind, ids sent, faults (JSON-able)."""
        if self._thread is not None and self._loop is not None and self._loop.is_running():
            return self._on_loop(self._snapshot)
        return self._snapshot()

    def _on_loop(self, function: Callable[..., T], *args: Any) -> T:
        if self._loop is None or not self._loop.is_running():
            raise BtcstreamError("the replay exchange's WebSocket server is not running")

        async def call() -> T:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=CONTROL_TIMEOUT_S)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(self._open())
        except BaseException as error:  # reported by start() in the caller's thread
            failure.append(error)
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.close()

    async def _open(self) -> Server:
        server = await serve(self._handle, self.host, self.port, process_request=self._process_request,
                             compression=None,  # Binance sends uncompressed frames; deflate would cost CPU per frame
                             ping_interval=None, ping_timeout=None,  # our own keepalive: a silence fault pauses it
                             close_timeout=self.close_timeout_s, server_header="btcstream-exchange")
        self.port = server.sockets[0].getsockname()[1]
        now_ms = self.market.clock.now_ms()
        for symbol in self.market.symbols:
            self._cursor[(symbol, "bookTicker")] = self.tape.last_update_id(symbol, now_ms)
            self._cursor[(symbol, "aggTrade")] = self.tape.last_trade_id(symbol, now_ms)
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        return server

    async def _shutdown(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
        for client in self._clients.values():
            if client.silenced_until is not None:
                client.ws.transport.resume_reading()
        assert self._server is not None
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=self.close_timeout_s + 2)
        except asyncio.TimeoutError:
            for client in list(self._clients.values()):
                client.ws.transport.abort()
        for client in list(self._clients.values()):
            self._forget(client, "stopped")

    # -- connections ---------------------------------------------------------------------------------------
    def _parse_path(self, raw: str) -> tuple[bool, list[str]] | None:
        """(combined, stream names) of a request path, or None when it is not a stream path."""
        parsed = urlparse(raw)
        path = parsed.path.rstrip("/")
        if path == "/ws" or path.startswith("/ws/"):
            return False, [name for name in path[len("/ws/"):].split("/") if name]
        if path == "/stream":
            joined = "/".join(parse_qs(parsed.query).get("streams", []))
            return True, [name for name in joined.split("/") if name]
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parsed = self._parse_path(request.path)
        if parsed is None:
            return connection.respond(HTTPStatus.NOT_FOUND, '{"code":-1,"msg":"Not found: use /ws/<stream> or /stream?streams=<a>/<b>"}')
        names = parsed[1]
        if any(name not in self._streams for name in names):
            return connection.respond(HTTPStatus.BAD_REQUEST, json.dumps({"code": 2, "msg": INVALID_STREAM}))
        if len(set(names)) > self.max_streams:
            return connection.respond(HTTPStatus.BAD_REQUEST, json.dumps(
                {"code": 2, "msg": f"Invalid request: at most {self.max_streams} streams per connection"}))
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parsed = self._parse_path(ws.request.path)
        assert parsed is not None  # _process_request refused anything else
        loop = asyncio.get_running_loop()
        client = _Client(id=self._next_id, ws=ws, path=ws.request.path, combined=parsed[0],
                         connected_ms=self.market.clock.now_ms(), next_ping_at=loop.time() + self.ping_interval_s)
        self._next_id += 1
        self._opened += 1
        self._clients[client.id] = client
        for name in dict.fromkeys(parsed[1]):
            self._subscribe(client, name)
        self._apply_pending(client)
        try:
            async for message in ws:
                self._events["incoming"] += 1
                if client.closing:
                    continue
                if not self._admit(client, loop.time()):
                    self._close(client, POLICY_VIOLATION, "Too many requests", "too_many_messages")
                    continue
                reply = self._answer(client, message)
                self._events["errors" if reply.startswith('{"error"') else "replies"] += 1
                await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self._forget(client, "client")

    def _forget(self, client: _Client, default_reason: str) -> None:
        if self._clients.pop(client.id, None) is None:
            return
        self._unsubscribe_all(client)
        self._closed[client.close_reason or default_reason] += 1

    def _subscribe(self, client: _Client, name: str) -> None:
        client.streams[name] = None
        if not client.closing:
            self._subscribers[name].add(client)

    def _unsubscribe_all(self, client: _Client) -> None:
        for name in client.streams:
            self._subscribers[name].discard(client)

    def _admit(self, client: _Client, now: float) -> bool:
        """Count an incoming message; False when the connection went over its messages per second."""
        client.incoming.append(now)
        while client.incoming and now - client.incoming[0] >= 1.0:
            client.incoming.popleft()
        return len(client.incoming) <= self.max_incoming_per_second

    def _answer(self, client: _Client, message: str | bytes) -> str:
        """The reply to one control message (Binance's results and error codes)."""
        try:
            request = json.loads(message)
        except ValueError as error:
            return _error(3, f"Invalid JSON: {error}", None)
        if not isinstance(request, dict):
            return _error(2, "Invalid request: expected a JSON object", None)
        request_id = request.get("id")
        if isinstance(request_id, bool) or not (request_id is None or isinstance(request_id, int)
                                                or (isinstance(request_id, str) and len(request_id) <= 36)):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        method = request.get("method")
        if method not in METHODS:
            return _error(2, f"Invalid request: unknown variant {method}, expected one of {', '.join(METHODS)}", request_id)
        params = request.get("params", [])
        if not isinstance(params, list):
            return _error(2, "Invalid request: params must be an array", request_id)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(name, str) and name in self._streams for name in params):
                return _error(2, INVALID_STREAM, request_id)
            if method == "SUBSCRIBE":
                if len(set(client.streams) | set(params)) > self.max_streams:
                    return _error(2, f"Invalid request: at most {self.max_streams} streams per connection", request_id)
                for name in params:
                    self._subscribe(client, name)
            else:
                for name in params:
                    client.streams.pop(name, None)
                    self._subscribers[name].discard(client)
            return _result(None, request_id)
        if method == "LIST_SUBSCRIPTIONS":
            return _result(list(client.streams), request_id)
        if not params or not isinstance(params[0], str):
            return _error(2, "Invalid request: property name must be a string", request_id)
        if params[0] != "combined":
            return _error(0, "Unknown property", request_id)
        if method == "GET_PROPERTY":
            return _result(client.combined, request_id)
        if len(params) < 2 or not isinstance(params[1], bool):
            return _error(1, "Invalid value type: expected Boolean", request_id)
        client.combined = params[1]
        return _result(None, request_id)

    def _close(self, client: _Client, code: int, text: str, reason: str) -> None:
        """Close with a close frame (the handshake is given close_timeout_s, then TCP is dropped)."""
        if client.closing:
            return
        client.closing, client.close_reason = True, reason
        self._unsubscribe_all(client)
        self._spawn(client.ws.close(code, text))

    def _drop(self, client: _Client, reset: bool, reason: str) -> None:
        """End the TCP connection without a close frame: a reset (RST), or an orderly FIN after pending data."""
        if client.closing:
            return
        client.closing, client.close_reason = True, reason
        self._unsubscribe_all(client)
        transport = client.ws.transport
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.resume_reading()
            transport.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ping(self, client: _Client) -> None:
        try:
            waiter = await client.ws.ping()
        except ConnectionClosed:
            return
        client.pings.append((asyncio.get_running_loop().time(), waiter))

    # -- the pump -----------------------------------------------------------------------------------------
    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self._tick(started)
            except Exception:  # a bug in one tick must not end the streams; logged once per 1000 failures
                self._events["pump_failures"] += 1
                if self._events["pump_failures"] % 1000 == 1:
                    log.exception("WebSocket pump tick failed (%d times so far)", self._events["pump_failures"])
            await asyncio.sleep(max(0.0, self.tick_s - (loop.time() - started)))

    def _tick(self, now: float) -> None:
        now_ms = self.market.clock.now_ms()
        for client in list(self._clients.values()):
            if not client.closing:
                self._housekeep(client, now, now_ms)
        for symbol in self.market.symbols:
            self._emit_sequence(symbol, "bookTicker", self.tape.last_update_id(symbol, now_ms),
                                lambda n, s=symbol: payloads.book_ticker_event(self.tape.book_update(s, n)))
            self._emit_sequence(symbol, "aggTrade", self.tape.last_trade_id(symbol, now_ms),
                                lambda n, s=symbol: payloads.agg_trade_event(self.tape.trade(s, n), now_ms))
            self._emit_ticker(symbol, now, now_ms)
        for client in list(self._clients.values()):
            if not client.closing and client.ws.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                log.warning("dropping WebSocket connection %d: it reads slower than the streams it asked for", client.id)
                self._drop(client, reset=True, reason="slow_consumer")

    def _housekeep(self, client: _Client, now: float, now_ms: int) -> None:
        """Silence ending, the close after serverShutdown, the 24 h cut, pings and the pong timeout."""
        if client.silenced_until is not None:
            if now < client.silenced_until:
                return
            self._end_silence(client, now)
        if client.close_at is not None and now >= client.close_at:
            self._close(client, GOING_AWAY, "server shutdown", "server_shutdown")
            return
        if self.max_connection_age_ms is not None and now_ms - client.connected_ms >= self.max_connection_age_ms:
            self._close(client, GOING_AWAY, "24 hour connection limit", "cut_24h")
            return
        while client.pings and client.pings[0][1].done():
            client.pings.popleft()
        if client.pings and now - client.pings[0][0] > self.pong_timeout_s:
            self._close(client, INTERNAL_ERROR, "pong timeout", "pong_timeout")
            return
        if now >= client.next_ping_at:
            client.next_ping_at = now + self.ping_interval_s
            self._spawn(self._ping(client))

    def _emit_sequence(self, symbol: str, kind: str, last_id: int, build: Callable[[int], str]) -> None:
        """Send ids after the stream's cursor up to `last_id` (at most MAX_FRAMES_PER_TICK) to its subscribers."""
        key = (symbol, kind)
        subscribers = self._subscribers[self._names[key]]
        if not any(client.silenced_until is None for client in subscribers):
            self._cursor[key] = max(self._cursor[key], last_id)  # nobody listening: nothing to send
            return
        first = self._cursor[key] + 1
        last = min(last_id, self._cursor[key] + MAX_FRAMES_PER_TICK)
        if last < first:
            return
        self._cursor[key] = last
        emitted = self._emitted.setdefault(key, [first, last])
        emitted[1] = last
        self._deliver(symbol, kind, [(n, build(n).encode()) for n in range(first, last + 1)])

    def _emit_ticker(self, symbol: str, now: float, now_ms: int) -> None:
        name = self._names[(symbol, "ticker")]
        if not self._subscribers[name]:
            self._ticker_due[symbol] = now  # the first event goes out on the tick after a subscription
            return
        due = self._ticker_due.get(symbol, now)
        if now < due:
            return
        self._ticker_due[symbol] = due + self.ticker_interval_s if due + self.ticker_interval_s > now else now + self.ticker_interval_s
        self._deliver(symbol, "ticker", [(-1, payloads.ticker_24h_event(self.market, symbol, now_ms).encode())])

    def _deliver(self, symbol: str, kind: str, frames: list[tuple[int, bytes]]) -> None:
        """Write `frames` of one stream to its subscribers: grouped by raw/combined, one-by-one where a gap applies."""
        name = self._names[(symbol, kind)]
        prefix = self._prefix[name]
        raw_group: list[_Client] = []
        combined_group: list[_Client] = []
        skipping: list[_Client] = []
        written: list[tuple[int, bytes]] = []  # the frames written to at least one connection
        for client in self._subscribers[name]:
            if client.silenced_until is not None:
                continue
            if client.skips.get((kind, symbol)):
                skipping.append(client)
            else:
                (combined_group if client.combined else raw_group).append(client)
        for group, wrap in ((raw_group, False), (combined_group, True)):
            if group:
                sockets = [client.ws for client in group]
                for _, frame in frames:
                    broadcast(sockets, prefix + frame + b"}" if wrap else frame, text=True)
                for client in group:
                    client.sent += len(frames)
                self._sent[(symbol, kind)] += len(frames) * len(group)
                written = frames
        for client in skipping:
            count = client.skips[(kind, symbol)]
            skipped, rest = frames[:count], frames[count:]
            client.skips[(kind, symbol)] = count - len(skipped)
            record = client.gap_records.get((kind, symbol))
            if record is not None:
                kept = record["skipped_ids"]
                kept.extend(n for n, _ in skipped[:max(0, SKIPPED_IDS_KEPT - len(kept))])
                record["skipped"] += len(skipped)
            for _, frame in rest:
                broadcast([client.ws], prefix + frame + b"}" if client.combined else frame, text=True)
            client.sent += len(rest)
            self._sent[(symbol, kind)] += len(rest)
            if len(rest) > len(written):
                written = rest  # a later slice of the same frames: the longest covers the others
        for observer in self._observers:
            observer(symbol, kind, [n for n, _ in written])

    def _send_extra(self, client: _Client, frame: bytes, event: str) -> None:
        """A frame outside the streams (serverShutdown, malformed frames)."""
        broadcast([client.ws], frame, text=True)
        self._events[event] += 1

    # -- faults -------------------------------------------------------------------------------------------
    def _inject(self, fault: StreamFault) -> list[dict[str, Any]]:
        if fault.symbol is not None and fault.symbol not in self.market.symbols:
            raise ValueError(f"no symbol {fault.symbol} on this exchange ({', '.join(self.market.symbols)})")
        if fault.target == "next":
            self._pending.append([fault, fault.connections or 1])
            return []
        targets = sorted((c for c in self._clients.values() if not c.closing), key=lambda c: c.id)
        if fault.connections is not None:
            targets = targets[:fault.connections]
        return [copy.deepcopy(self._apply(client, fault)) for client in targets]

    def _apply_pending(self, client: _Client) -> None:
        for entry in list(self._pending):
            fault, remaining = entry
            if client.closing:
                break
            self._apply(client, fault)
            entry[1] = remaining - 1
            if entry[1] <= 0:
                self._pending.remove(entry)

    def _apply(self, client: _Client, fault: StreamFault) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        now_ms = self.market.clock.now_ms()
        record: dict[str, Any] = {"kind": fault.kind, "connection": client.id, "at_ms": now_ms}
        kind = fault.kind
        if kind == "abrupt_close":
            self._drop(client, reset=True, reason=kind)
        elif kind == "close_1006":
            self._drop(client, reset=False, reason=kind)
        elif kind == "cut_24h":
            self._close(client, GOING_AWAY, "24 hour connection limit", kind)
        elif kind == "silence":
            client.silenced_until = math.inf if fault.duration_s is None else loop.time() + fault.duration_s
            client.pings.clear()
            client.ws.transport.pause_reading()  # nothing read, so the client's pings go unanswered too
            record["duration_s"] = fault.duration_s
        elif kind == "server_shutdown":
            self._send_extra(client, f'{{"e":"serverShutdown","E":{now_ms}}}'.encode(), "serverShutdown")
            client.close_at = loop.time() + fault.delay_s
            record["delay_s"] = fault.delay_s
        elif kind == "malformed":
            variants = MALFORMED_VARIANTS if fault.variant == "mixed" else (fault.variant,)
            for index in range(fault.frames):
                self._send_extra(client, self._malformed_frame(client, variants[index % len(variants)], now_ms), "malformed")
            record.update(frames=fault.frames, variant=fault.variant)
        else:  # update_id_gap / trade_id_gap
            stream_kind = "bookTicker" if kind == "update_id_gap" else "aggTrade"
            symbols = [fault.symbol] if fault.symbol else self.market.symbols
            record.update(symbols=symbols, skip=fault.skip, skipped=0, skipped_ids=[])
            for symbol in symbols:
                client.skips[(stream_kind, symbol)] = client.skips.get((stream_kind, symbol), 0) + fault.skip
                client.gap_records[(stream_kind, symbol)] = record
        self._applied.append(record)
        return record

    def _malformed_frame(self, client: _Client, variant: str, now_ms: int) -> bytes:
        """A frame a careful client must count and skip: bad JSON, wrong types, or a message cut short."""
        name = next(iter(client.streams), None) or self._names[(self.market.symbols[0], "bookTicker")]
        symbol, kind = self._streams[name]
        if variant == "invalid_json":
            body = f'{{"e":"{kind}","s":"{symbol}",,"u":}}'.encode()
        elif variant == "wrong_types":
            wrong: dict[str, Any] = {
                "bookTicker": {"u": "not-a-number", "s": 42, "b": None, "B": [], "a": {}, "A": True},
                "aggTrade": {"e": "aggTrade", "E": "soon", "s": None, "a": "x", "p": 1.5, "q": None, "f": [], "l": {},
                             "T": "later", "m": "yes", "M": 1},
            }.get(kind, {"e": "24hrTicker", "E": "x", "s": None, "c": [], "b": {}, "a": None, "v": True})
            body = json.dumps(wrong, separators=(",", ":")).encode()
        else:  # truncated: the current message of the stream, cut in the middle
            if kind == "aggTrade":
                last = max(0, self.tape.last_trade_id(symbol, now_ms))
                body = payloads.agg_trade_event(self.tape.trade(symbol, last), now_ms).encode()
            else:
                last = max(0, self.tape.last_update_id(symbol, now_ms))
                body = payloads.book_ticker_event(self.tape.book_update(symbol, last)).encode()
            full = self._prefix[name] + body + b"}" if client.combined else body
            return full[:len(full) // 2]
        return self._prefix[name] + body + b"}" if client.combined else body

    def _end_silence(self, client: _Client, now: float) -> None:
        client.silenced_until = None
        client.pings.clear()
        client.next_ping_at = now + self.ping_interval_s
        client.ws.transport.resume_reading()

    def _clear(self) -> None:
        self._pending.clear()
        now = asyncio.get_running_loop().time()
        for client in self._clients.values():
            client.skips.clear()
            if client.silenced_until is not None:
                self._end_silence(client, now)

    # -- state --------------------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        sent: dict[str, dict[str, int]] = {s: {kind: 0 for kind in STREAM_KINDS} for s in self.market.symbols}
        for (symbol, kind), count in self._sent.items():
            sent[symbol][kind] = count
        ids: dict[str, dict[str, int | None]] = {}
        now_ms = self.market.clock.now_ms()
        for symbol in self.market.symbols:
            books, trades = self._emitted.get((symbol, "bookTicker")), self._emitted.get((symbol, "aggTrade"))
            ids[symbol] = {"first_update_id": books[0] if books else None, "last_update_id": books[1] if books else None,
                           "first_trade_id": trades[0] if trades else None, "last_trade_id": trades[1] if trades else None,
                           # the newest trade that has happened by now: GET /api/v3/aggTrades may serve it to a client
                           # filling a gap before any stream has sent it
                           "newest_trade_id": self.tape.last_trade_id(symbol, now_ms)}
        open_connections = [{"id": c.id, "path": c.path, "combined": c.combined, "streams": list(c.streams),
                             "connected_ms": c.connected_ms, "sent": c.sent, "silenced": c.silenced_until is not None,
                             "closing": c.closing} for c in sorted(self._clients.values(), key=lambda c: c.id)]
        return {
            "url": self.url,
            "quotes_per_second": self.tape.quotes_per_second, "trades_per_second": self.tape.trades_per_second,
            "ping_interval_s": self.ping_interval_s, "pong_timeout_s": self.pong_timeout_s,
            "max_connection_age_ms": self.max_connection_age_ms,
            "connections": {"open": open_connections, "opened": self._opened, "closed": dict(self._closed)},
            "sent": sent, "ids": ids, "events": dict(self._events),
            "faults": {"pending": [{**fault.to_dict(), "remaining": remaining} for fault, remaining in self._pending],
                       "applied": copy.deepcopy(list(self._applied))},
        }


def _result(result: Any, request_id: Any) -> str:
    return json.dumps({"result": result, "id": request_id}, separators=(",", ":"))


def _error(code: int, message: str, request_id: Any) -> str:
    return json.dumps({"error": {"code": code, "msg": message}, "id": request_id}, separators=(",", ":"))
