"""A scripted WebSocket server for the feed's connection tests: every connection runs a script the test writes.

    async def script(conn: ScriptedConnection) -> None:
        await conn.send_stream("btcusdt@aggTrade", agg_trade("BTCUSDT", 1))
        await conn.drop()  # the TCP connection ends without a close frame: the client sees 1006

    with ScriptedStreamServer(script) as server:
        ...  # point the feed at server.url

It can send chosen frames (well formed or not), stay silent, close abruptly (no close frame, or a
reset), close with a code, announce `serverShutdown`, ping and wait for the pong, and refuse
handshakes. `MarketTape` gives every connection the same live sequence of update and trade ids,
as an exchange does, so a test can check what a client saw across reconnects. The server runs on
`websockets.asyncio.server` in a thread with its own event loop, so the code under test may run
its own loop (or none) in the test's thread.
"""

from __future__ import annotations

import asyncio
import http
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

SERVER_START_TIMEOUT_S = 10.0


def book_ticker(symbol: str, update_id: int, bid: float = 100.0, ask: float = 100.5) -> dict[str, Any]:
    """A bookTicker payload as Binance sends it (prices and quantities as strings)."""
    return {"u": update_id, "s": symbol.upper(), "b": f"{bid:.8f}", "B": "1.50000000", "a": f"{ask:.8f}",
            "A": "2.25000000"}


def agg_trade(symbol: str, trade_id: int, time_ms: int | None = None, price: float = 100.25,
              qty: float = 0.5, buyer_is_maker: bool = False) -> dict[str, Any]:
    """An aggTrade payload as Binance sends it."""
    moment = int(time.time() * 1000) if time_ms is None else time_ms
    return {"e": "aggTrade", "E": moment + 1, "s": symbol.upper(), "a": trade_id, "p": f"{price:.8f}",
            "q": f"{qty:.8f}", "f": trade_id * 2, "l": trade_id * 2 + 1, "T": moment, "m": buyer_is_maker, "M": True}


def ticker_24h(symbol: str, event_ms: int | None = None, volume: float = 1234.5) -> dict[str, Any]:
    """A 24hrTicker payload as Binance sends it."""
    moment = int(time.time() * 1000) if event_ms is None else event_ms
    return {"e": "24hrTicker", "E": moment, "s": symbol.upper(), "p": "1.50", "P": "1.5", "w": "100.1",
            "x": "99.0", "c": "100.5", "Q": "0.1", "b": "100.0", "B": "1.5", "a": "100.5", "A": "2.25", "o": "99.0",
            "h": "101.0", "l": "98.0", "v": f"{volume}", "q": f"{volume * 100}", "O": moment - 86_400_000,
            "C": moment, "F": 1, "L": 100, "n": 100}


@dataclass
class ScriptedConnection:
    """One client connection as the script sees it."""

    ws: ServerConnection
    index: int  # 0 for the first connection of the server
    path: str  # the request path with its query
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    sent: int = 0

    @property
    def streams(self) -> list[str]:
        """The streams of a combined-stream request (`/stream?streams=a/b`)."""
        values = parse_qs(urlparse(self.path).query).get("streams", [""])
        return [name for name in values[0].split("/") if name]

    @property
    def open(self) -> bool:
        return self.closed_at is None

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)
        self.sent += 1

    async def send_json(self, payload: Any) -> None:
        await self.send_raw(json.dumps(payload))

    async def send_stream(self, stream: str, data: dict[str, Any]) -> None:
        """A combined-stream message `{"stream": ..., "data": ...}`."""
        await self.send_json({"stream": stream, "data": data})

    async def server_shutdown(self) -> None:
        await self.send_json({"e": "serverShutdown", "E": int(time.time() * 1000)})

    async def ping(self, timeout_s: float = 2.0) -> float | None:
        """Ping the client; the round trip in seconds, or None when no pong came within `timeout_s`."""
        started = time.monotonic()
        waiter = await self.ws.ping()
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None
        return time.monotonic() - started

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    async def drop(self) -> None:
        """End the TCP connection without a close frame (the client sees code 1006)."""
        self.ws.transport.close()

    async def abort(self) -> None:
        """Reset the TCP connection."""
        self.ws.transport.abort()

    async def go_silent(self) -> None:
        """Stop sending and reading (a half-open connection), until the client gives up on it."""
        self.ws.transport.pause_reading()
        await self.ws.wait_closed()

    async def wait_closed(self) -> None:
        await self.ws.wait_closed()


class MarketTape:
    """Ids that advance with wall time, the same for every connection: id(t) = first + floor(rate * (t - t0))."""

    def __init__(self, rate_per_s: float, first_id: int = 1000) -> None:
        self.rate_per_s = rate_per_s
        self.first_id = first_id
        self.started = time.monotonic()

    def current(self) -> int:
        return self.first_id + int(self.rate_per_s * (time.monotonic() - self.started))

    async def stream(self, conn: ScriptedConnection, symbol: str, until: Callable[[], bool],
                     step_s: float = 0.005, after: int | None = None) -> int:
        """Send every new id (as bookTicker u and aggTrade a) from the moment of the call (or from `after` + 1)
        until `until()`; returns the last id sent."""
        last = self.current() if after is None else after
        while not until() and conn.open:
            now = self.current()
            for update in range(last + 1, now + 1):
                await conn.send_stream(f"{symbol.lower()}@bookTicker", book_ticker(symbol, update))
                await conn.send_stream(f"{symbol.lower()}@aggTrade", agg_trade(symbol, update))
            last = now
            await asyncio.sleep(step_s)
        return last


Script = Callable[[ScriptedConnection], Awaitable[None]]


class ScriptedStreamServer:
    """A WebSocket server on 127.0.0.1 running `script` for each connection (see the module docstring).

    `refuse(index)` (optional) is asked before each handshake (0-based attempt number): True
    answers HTTP `refuse_status` (503 by default) instead. After the script returns, the connection stays open until the
    client closes it or the server stops.
    """

    def __init__(self, script: Script, refuse: Callable[[int], bool] | None = None, refuse_status: int = 503) -> None:
        self.script = script
        self.refuse = refuse
        self.refuse_status = refuse_status
        self.connections: list[ScriptedConnection] = []
        self.handshakes = 0  # attempts, refused ones included
        self.handshake_times: list[float] = []
        self.errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ws-script-server", daemon=True)
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> "ScriptedStreamServer":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(SERVER_START_TIMEOUT_S)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            async def shut() -> None:
                assert self._server is not None
                self._server.close()
                await self._server.wait_closed()
            try:
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            except TimeoutError:
                pass
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "ScriptedStreamServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run(self, coroutine: Awaitable[Any], timeout_s: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. `server.run(conn.ping())`)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)  # type: ignore[arg-type]

    async def _serve(self) -> Server:
        return await serve(self._handle, "127.0.0.1", 0, ping_interval=None, process_request=self._process_request,
                           close_timeout=1)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        attempt = self.handshakes
        self.handshakes += 1
        self.handshake_times.append(time.monotonic())
        if self.refuse is not None and self.refuse(attempt):
            status = http.HTTPStatus(self.refuse_status)
            return Response(status.value, status.phrase, Headers(), b"refused\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        conn = ScriptedConnection(ws, len(self.connections), ws.request.path if ws.request else "")
        self.connections.append(conn)
        try:
            await self.script(conn)
            await ws.wait_closed()
        except Exception as error:  # noqa: BLE001 - a closed connection ends a script; other errors are kept
            if not ws.state.name == "CLOSED":
                self.errors.append(error)
        finally:
            conn.closed_at = time.monotonic()


# -- stand-ins for the feed's REST and Kafka sides ------------------------------------------------------------

class FakeBinanceRest:
    """Stands in for `BinanceClient` in feed tests: the local clock as the exchange's, aggTrades from `trades`.

    `trades` maps symbol -> {trade id: AggTrade}; `errors` are raised, first to last, by the next
    aggTrades calls; `weights` (optional) are the X-MBX-USED-WEIGHT-1M values of successive answers.
    """

    def __init__(self, trades: dict[str, dict[int, Any]] | None = None, weights: list[int] | None = None) -> None:
        self.trades = trades if trades is not None else {}
        self.weights = list(weights or [])
        self.errors: list[BaseException] = []
        self.calls: list[tuple[str, int, int, float]] = []  # symbol, fromId, limit, monotonic time
        self.used_weight_1m: int | None = None

    def server_time(self) -> Any:
        from datetime import datetime, timezone
        return datetime.now(timezone.utc)

    def agg_trades(self, symbol: str, from_id: int, limit: int = 1000) -> list[Any]:
        self.calls.append((symbol, from_id, limit, time.monotonic()))
        if self.errors:
            raise self.errors.pop(0)
        self.used_weight_1m = self.weights.pop(0) if self.weights else (self.used_weight_1m or 0) + 4
        book = self.trades.get(symbol, {})
        return [book[i] for i in sorted(i for i in book if i >= from_id)[:limit]]

    def close(self) -> None:
        pass


class FakeCoinGecko:
    """Stands in for `CoinGeckoClient`: answers `markets` from a fixed dict."""

    def __init__(self, markets: dict[str, Any] | None = None) -> None:
        self.answer = markets or {}
        self.calls = 0

    def markets(self, coin_ids: Any) -> dict[str, Any]:
        self.calls += 1
        return dict(self.answer)

    def close(self) -> None:
        pass


class MemoryPublisher:
    """Stands in for the Kafka publisher: keeps records in memory; `gate` (if given) blocks `publish` until set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        from btcstream.ingest.publisher import DeliveryCounts
        self.counts = DeliveryCounts()
        self.records: list[Any] = []
        self.gate = gate

    @property
    def pending(self) -> int:
        return 0

    def connect(self) -> bool:
        return True

    def publish(self, record: Any) -> None:
        if self.gate is not None:
            self.gate.wait()
        with self.counts.lock:
            self.records.append(record)
            self.counts.sent += 1

    def drain(self) -> None:
        pass

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass
