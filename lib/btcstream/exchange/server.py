"""The local exchange: Binance and CoinGecko endpoints over HTTP, answered from a `ReplayMarket`.

Two listeners, like two hosts: the Binance one (`/api/v3/time`, `/api/v3/ticker/bookTicker`,
`/api/v3/ticker/24hr`, `/api/v3/klines`, `/api/v3/aggTrades`) and the CoinGecko one
(`/api/v3/coins/markets`), so rate limits and bans are per host as in production. A third listener
serves Binance's WebSocket market streams (`streams`, `ws_url`); `/api/v3/aggTrades` answers from the
same tape (`tape`) as the `@aggTrade` streams, so a client fills a stream's trade-id gap by id. Binance request weight is counted per simulated
minute and reported in `X-MBX-USED-WEIGHT-1M`; going over the limit gives 429 + Retry-After, and
calling again before Retry-After has passed gives a 418 ban, as Binance does. CoinGecko allows
`coingecko_calls_per_minute` calls per simulated minute. Retry-After is in wall-clock seconds.

Both listeners also answer `/_control/...` (not part of either API): `GET /_control/state`,
`POST /_control/faults` (a JSON `Fault`), `DELETE /_control/faults`, `POST /_control/clock` (`{"speed": x}`),
`POST /_control/ws-faults` (a JSON `StreamFault`; answers `{"applied": [..], "pending": [..]}`),
`GET /_control/ws-faults`, `DELETE /_control/ws-faults` (pending faults dropped, silences ended).
Built on the standard library's ThreadingHTTPServer. Not for: anything but rehearsal and tests.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from btcstream.exchange import payloads
from btcstream.exchange.faults import Fault, FaultPlan, StreamFault
from btcstream.errors import UnknownSymbol
from btcstream.exchange.market import DAY_MS, ReplayMarket
from btcstream.exchange.streams import PING_INTERVAL_S, PONG_TIMEOUT_S, TICK_S, StreamServer
from btcstream.exchange.tape import Tape
from btcstream.infra import addresses
from btcstream.settings import Settings

log = logging.getLogger(__name__)

BINANCE_WEIGHT_LIMIT_1M = 6000
COINGECKO_CALLS_PER_MINUTE = 30
BAN_SECONDS = 120.0  # Binance's shortest automatic IP ban
MINUTE_MS = 60_000
KLINES_DEFAULT_LIMIT, KLINES_MAX_LIMIT = 500, 1000
AGG_TRADES_DEFAULT_LIMIT, AGG_TRADES_MAX_LIMIT = 500, 1000
AGG_TRADES_MAX_WINDOW_MS = 3_600_000  # startTime and endTime together: less than one hour apart
WEIGHTS = {"/api/v3/time": 1, "/api/v3/klines": 2, "/api/v3/aggTrades": 4}
WS_QUOTES_PER_SECOND = 10.0  # bookTicker updates per symbol per wall second (at the clock's starting speed)
WS_TRADES_PER_SECOND = 5.0  # aggregate trades per symbol per wall second
JSON_TYPE = "application/json;charset=UTF-8"
SHUTDOWN_POLL_S = 0.05  # how often a listener checks for stop(): 0.5 s (the default) made every stop take ~1 s

BINANCE_ERRORS = {
    429: {"code": -1003, "msg": "Too much request weight used; current limit is 6000 request weight per 1 MINUTE. "
                                "Please use WebSocket Streams for live updates to avoid polling the API."},
    500: {"code": -1000, "msg": "An unknown error occurred while processing the request."},
    503: {"code": -1008, "msg": "Server is currently overloaded with other requests. Please try again in a few minutes."},
    451: {"code": 0, "msg": "Service unavailable from a restricted location according to 'b. Eligibility' in "
                            "https://www.binance.com/en/terms. Please contact customer service if you believe you "
                            "received this message in error."},
    403: {"code": -1, "msg": "Forbidden: request blocked by the web application firewall."},
}
COINGECKO_429 = {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit. Please visit "
                            "https://www.coingecko.com/en/api/pricing to subscribe to our API plans for higher rate limits."}}
HTML_ERROR_PAGE = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>"
                   "<p>The CDN could not reach the origin server.</p></body></html>")


@dataclass
class _Reply:
    status: int
    body: Any  # JSON-able, or str for an HTML page
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _HostLimits:
    """One host's rate-limit state: usage per simulated minute and wall-clock bans."""

    usage_minute: int = -1
    usage: int = 0
    limited_until: float = 0.0  # monotonic: a 429's Retry-After; calling sooner escalates to 418
    banned_until: float = 0.0  # monotonic: a 418 ban


class ExchangeServer:
    """Serves a ReplayMarket on `host`'s ports (loopback by default): Binance REST, CoinGecko, Binance WebSocket streams.

    Use as a context manager or start()/stop(). Stream options: `ws_quotes_per_second` and
    `ws_trades_per_second` (per symbol, wall clock, at the clock's speed when the server is built; see
    `tape`), `ws_ping_interval_s`, `ws_pong_timeout_s`, `ws_max_connection_age_ms` (simulated; None: no
    cut), `ws_tick_s`, `ws_ticker_interval_s`.
    """

    def __init__(self, market: ReplayMarket, host: str = "127.0.0.1", binance_port: int = 0, coingecko_port: int = 0,
                 weight_limit: int = BINANCE_WEIGHT_LIMIT_1M, coingecko_calls_per_minute: int = COINGECKO_CALLS_PER_MINUTE,
                 ban_seconds: float = BAN_SECONDS, ws_port: int = 0, ws_quotes_per_second: float = WS_QUOTES_PER_SECOND,
                 ws_trades_per_second: float = WS_TRADES_PER_SECOND, ws_ping_interval_s: float = PING_INTERVAL_S,
                 ws_pong_timeout_s: float = PONG_TIMEOUT_S, ws_max_connection_age_ms: int | None = DAY_MS,
                 ws_tick_s: float = TICK_S, ws_ticker_interval_s: float = 1.0) -> None:
        self.market = market
        self.tape = Tape(market, ws_quotes_per_second, ws_trades_per_second)
        self.streams = StreamServer(market, self.tape, host, ws_port, ping_interval_s=ws_ping_interval_s,
                                    pong_timeout_s=ws_pong_timeout_s, max_connection_age_ms=ws_max_connection_age_ms,
                                    tick_s=ws_tick_s, ticker_interval_s=ws_ticker_interval_s)
        self.faults = FaultPlan()
        self.weight_limit = weight_limit
        self.coingecko_calls_per_minute = coingecko_calls_per_minute
        self.ban_seconds = ban_seconds
        self.requests: Counter[str] = Counter()  # "binance /api/v3/time" -> count
        self.calls_during_ban = 0  # requests that arrived before a Retry-After had passed
        self._limits = {"binance": _HostLimits(), "coingecko": _HostLimits()}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._servers = {api: ThreadingHTTPServer((host, port), _handler_for(self, api))
                         for api, port in (("binance", binance_port), ("coingecko", coingecko_port))}
        for server in self._servers.values():
            server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    def _url_host(self, host: str) -> str:
        """Where this machine reaches a listener on `host` (loopback for 0.0.0.0 / ::)."""
        return addresses.url_host(addresses.connect_host(host))

    @property
    def binance_url(self) -> str:
        host, port = self._servers["binance"].server_address[:2]
        return f"http://{self._url_host(host)}:{port}"

    @property
    def coingecko_url(self) -> str:
        host, port = self._servers["coingecko"].server_address[:2]
        return f"http://{self._url_host(host)}:{port}/api/v3"

    @property
    def ws_url(self) -> str:
        """The WebSocket streams' base URL, e.g. `ws://127.0.0.1:8082` (bound once started)."""
        return f"ws://{self._url_host(self.streams.host)}:{self.streams.port}"

    def start(self) -> "ExchangeServer":
        """Serve in background threads (a no-op when already serving)."""
        if self._threads:
            return self
        self.streams.start()
        for api, server in self._servers.items():
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S},
                                      name=f"exchange-{api}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("local exchange replaying %s at speed %g: Binance %s, streams %s, CoinGecko %s", ",".join(self.market.symbols),
                 self.market.clock.speed, self.binance_url, self.ws_url, self.coingecko_url)
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases handlers held by a `timeout` fault
        self.streams.stop()
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "ExchangeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settings_for(self, settings: Settings) -> Settings:
        """Settings pointing the Binance (REST and WebSocket) and CoinGecko clients at this exchange."""
        return settings.replace(binance_url=self.binance_url, binance_ws_url=self.ws_url, coingecko_url=self.coingecko_url)

    def inject(self, fault: Fault) -> None:
        """Add a fault rule for the HTTP endpoints (see `faults`)."""
        self.faults.add(fault)

    def inject_ws_fault(self, fault: StreamFault) -> list[dict[str, Any]]:
        """Apply a WebSocket fault (see `faults.StreamFault`); returns what was done to which open connection."""
        return self.streams.inject(fault)

    def clear_ws_faults(self) -> None:
        """Drop pending WebSocket faults, end silences, cancel gaps still to come."""
        self.streams.clear_faults()

    def state(self) -> dict[str, Any]:
        """Clock, requests, HTTP faults, and the WebSocket streams' state under `ws` (see `StreamServer.state`)."""
        return {"now_ms": self.market.clock.now_ms(), "speed": self.market.clock.speed, "symbols": self.market.symbols,
                "requests": dict(self.requests), "calls_during_ban": self.calls_during_ban,
                "faults": [f.to_dict() for f in self.faults.active()], "ws": self.streams.state()}

    # -- request handling --------------------------------------------------------------------------------
    def handle(self, api: str, method: str, raw_path: str, body: bytes) -> _Reply:
        parsed = urlparse(raw_path)
        path, query = parsed.path, {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if path.startswith("/_control/"):
            return self._control(method, path, body)
        with self._lock:
            self.requests[f"{api} {path}"] += 1
        if method != "GET":
            return self._error(api, 405, {"code": -1, "msg": f"{method} not allowed"})
        route = self._route(api, path)
        if route is None:
            return self._error(api, 404, {"code": -1, "msg": f"no endpoint {path}"})
        weight = self._weight(path, query)
        refused = self._admit(api, weight)
        if refused is not None:
            return refused
        fault = self.faults.take(api, path)
        if fault is not None and fault.kind not in ("null_field", "missing_field", "timeout"):
            return self._fault_reply(api, fault)
        if fault is not None and fault.kind == "timeout":
            self._stopping.wait(fault.delay_s)
        try:
            reply = route(query)
        except UnknownSymbol:
            reply = _Reply(400, {"code": -1121, "msg": "Invalid symbol."})
        except _BadParameter as error:
            reply = _Reply(400, {"code": error.code, "msg": str(error)})
        if fault is not None and fault.kind in ("null_field", "missing_field"):
            _alter_field(reply.body, fault.field or "", remove=fault.kind == "missing_field")
        return self._with_weight(api, reply)

    def _route(self, api: str, path: str) -> Callable[[dict[str, str]], _Reply] | None:
        if api == "binance":
            return {"/api/v3/time": self._time, "/api/v3/ticker/bookTicker": self._book_ticker,
                    "/api/v3/ticker/24hr": self._ticker_24h, "/api/v3/klines": self._klines,
                    "/api/v3/aggTrades": self._agg_trades}.get(path)
        return {"/api/v3/coins/markets": self._coins_markets}.get(path)

    def _weight(self, path: str, query: dict[str, str]) -> int:
        if path in WEIGHTS:
            return WEIGHTS[path]
        if path == "/api/v3/ticker/bookTicker":
            return 2 if "symbol" in query else 4
        if path == "/api/v3/ticker/24hr":
            if "symbol" in query:
                return 2
            count = len(_symbols_param(query)) if "symbols" in query else 10_000
            return 2 if count <= 20 else 40 if count <= 100 else 80
        return 1

    def _admit(self, api: str, weight: int) -> _Reply | None:
        """Bans first, then usage per simulated minute; None when the request may proceed."""
        now = time.monotonic()
        minute = self.market.clock.now_ms() // MINUTE_MS
        with self._lock:
            limits = self._limits[api]
            if api == "binance" and limits.banned_until > now:
                self.calls_during_ban += 1
                return self._ban_reply(limits, now)
            if limits.limited_until > now:
                self.calls_during_ban += 1
                if api == "binance":  # ignoring a 429 gets the IP banned
                    limits.banned_until = now + self.ban_seconds
                    return self._ban_reply(limits, now)
                return self._limit_reply(api, limits.limited_until - now)
            if limits.usage_minute != minute:
                limits.usage_minute, limits.usage = minute, 0
            limits.usage += weight if api == "binance" else 1
            allowed = self.weight_limit if api == "binance" else self.coingecko_calls_per_minute
            if allowed and limits.usage > allowed:
                next_minute_ms = (minute + 1) * MINUTE_MS - self.market.clock.now_ms()
                wait = max(1.0, math.ceil(self.market.clock.wall_seconds(next_minute_ms)))
                limits.limited_until = now + wait
                return self._limit_reply(api, wait)
        return None

    def _fault_reply(self, api: str, fault: Fault) -> _Reply:
        now = time.monotonic()
        if fault.kind in ("429", "418"):
            with self._lock:
                limits = self._limits[api]
                if fault.kind == "429":
                    limits.limited_until = now + fault.retry_after_s
                    return self._limit_reply(api, fault.retry_after_s)
                limits.banned_until = now + fault.retry_after_s
                return self._ban_reply(limits, now)
        if fault.kind == "html":
            return _Reply(fault.status, HTML_ERROR_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        status = int(fault.kind)
        body = BINANCE_ERRORS[status] if api == "binance" else {"status": {"error_code": status, "error_message": "injected fault"}}
        return self._error(api, status, body)

    def _limit_reply(self, api: str, wait_s: float) -> _Reply:
        body = BINANCE_ERRORS[429] if api == "binance" else COINGECKO_429
        return self._with_weight(api, _Reply(429, body, {"Retry-After": _seconds(wait_s)}))

    def _ban_reply(self, limits: _HostLimits, now: float) -> _Reply:
        until_ms = int((time.time() + limits.banned_until - now) * 1000)
        body = {"code": -1003, "msg": f"Way too much request weight used; IP banned until {until_ms}. "
                                      "Please use WebSocket Streams for live updates to avoid bans."}
        return self._with_weight("binance", _Reply(418, body, {"Retry-After": _seconds(limits.banned_until - now)}))

    def _error(self, api: str, status: int, body: Any) -> _Reply:
        return self._with_weight(api, _Reply(status, body))

    def _with_weight(self, api: str, reply: _Reply) -> _Reply:
        if api == "binance":
            reply.headers["X-MBX-USED-WEIGHT-1M"] = str(self._limits["binance"].usage)
        return reply

    # -- endpoints -----------------------------------------------------------------------------------------
    def _time(self, query: dict[str, str]) -> _Reply:
        return _Reply(200, {"serverTime": self.market.clock.now_ms()})

    def _book_ticker(self, query: dict[str, str]) -> _Reply:
        now = self.market.clock.now_ms()
        if "symbol" in query:
            return _Reply(200, payloads.book_ticker(self.market, _one_symbol(self.market, query["symbol"]), now))
        symbols = _symbols_param(query) if "symbols" in query else self.market.symbols
        return _Reply(200, [payloads.book_ticker(self.market, _one_symbol(self.market, s), now) for s in symbols])

    def _ticker_24h(self, query: dict[str, str]) -> _Reply:
        now = self.market.clock.now_ms()
        mini = query.get("type", "FULL").upper() == "MINI"
        if "symbol" in query:
            return _Reply(200, payloads.ticker_24h(self.market, _one_symbol(self.market, query["symbol"]), now, mini))
        symbols = _symbols_param(query) if "symbols" in query else self.market.symbols
        return _Reply(200, [payloads.ticker_24h(self.market, _one_symbol(self.market, s), now, mini) for s in symbols])

    def _klines(self, query: dict[str, str]) -> _Reply:
        if "symbol" not in query or "interval" not in query:
            missing = "symbol" if "symbol" not in query else "interval"
            raise _BadParameter(-1102, f"Mandatory parameter '{missing}' was not sent, was empty/null, or malformed.")
        interval = query["interval"]
        if interval not in payloads.KLINE_INTERVAL_MS:
            raise _BadParameter(-1120, "Invalid interval.")
        limit = _int_param(query, "limit", KLINES_DEFAULT_LIMIT)
        if not 1 <= limit <= KLINES_MAX_LIMIT:
            raise _BadParameter(-1100, "Illegal characters found in parameter 'limit'; legal range is '1'-'1000'.")
        symbol = _one_symbol(self.market, query["symbol"])
        rows = payloads.klines(self.market, symbol, interval, self.market.clock.now_ms(),
                               _int_param(query, "startTime", None), _int_param(query, "endTime", None), limit)
        return _Reply(200, rows)

    def _agg_trades(self, query: dict[str, str]) -> _Reply:
        """Aggregate trades from the tape that have happened by now: by `fromId`, by time window, or the newest."""
        if "symbol" not in query:
            raise _BadParameter(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        symbol = _one_symbol(self.market, query["symbol"])
        limit = _int_param(query, "limit", AGG_TRADES_DEFAULT_LIMIT)
        if not 1 <= limit <= AGG_TRADES_MAX_LIMIT:  # type: ignore[operator]
            raise _BadParameter(-1100, "Illegal characters found in parameter 'limit'; legal range is '1'-'1000'.")
        from_id, start, end = (_int_param(query, name, None) for name in ("fromId", "startTime", "endTime"))
        if from_id is not None and from_id < 0:
            raise _BadParameter(-1100, "Illegal characters found in parameter 'fromId'; legal range is '0'-'9223372036854775807'.")
        if start is not None and end is not None and end - start >= AGG_TRADES_MAX_WINDOW_MS:
            raise _BadParameter(-1127, "More than 1 hours between startTime and endTime.")
        tape, now = self.tape, self.market.clock.now_ms()
        newest = tape.last_trade_id(symbol, now if end is None else min(now, end))
        if from_id is not None:
            first = max(from_id, tape.first_trade_id_at_or_after(symbol, start) if start is not None else 0)
        elif start is not None:
            first = tape.first_trade_id_at_or_after(symbol, start)
        else:
            first = newest - limit + 1  # the newest `limit` trades (up to endTime when given)
        last = min(newest, max(first, 0) + limit - 1)  # type: ignore[operator]
        return _Reply(200, [payloads.agg_trade_rest(trade) for trade in tape.trades(symbol, first, last)])

    def _coins_markets(self, query: dict[str, str]) -> _Reply:
        if query.get("vs_currency", "").lower() != "usd":
            return _Reply(400, {"error": "invalid vs_currency (this local exchange serves usd only)"})
        ids = [i.strip().lower() for i in query.get("ids", "").split(",") if i.strip()]
        per_page = _int_param(query, "per_page", 100) or 100
        page = _int_param(query, "page", 1) or 1
        answer = payloads.coins_markets(self.market, ids, self.market.clock.now_ms())
        return _Reply(200, answer[(page - 1) * per_page: page * per_page])

    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        try:
            if path == "/_control/state" and method == "GET":
                return _Reply(200, self.state())
            if path == "/_control/faults" and method == "POST":
                self.inject(Fault(**json.loads(body or b"{}")))
                return _Reply(200, {"faults": [f.to_dict() for f in self.faults.active()]})
            if path == "/_control/faults" and method == "DELETE":
                self.faults.clear()
                return _Reply(200, {"faults": []})
            if path == "/_control/clock" and method == "POST":
                self.market.clock.set_speed(float(json.loads(body)["speed"]))
                return _Reply(200, self.state())
            if path == "/_control/ws-faults" and method == "POST":
                applied = self.inject_ws_fault(StreamFault(**json.loads(body or b"{}")))
                return _Reply(200, {"applied": applied, "pending": self.streams.state()["faults"]["pending"]})
            if path == "/_control/ws-faults" and method == "GET":
                return _Reply(200, self.streams.state()["faults"])
            if path == "/_control/ws-faults" and method == "DELETE":
                self.clear_ws_faults()
                return _Reply(200, self.streams.state()["faults"])
        except (ValueError, TypeError, KeyError) as error:
            return _Reply(400, {"error": str(error)})
        return _Reply(404, {"error": f"no control endpoint {method} {path}"})


class _BadParameter(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _one_symbol(market: ReplayMarket, raw: str) -> str:
    symbol = raw.strip().upper()
    market.history(symbol)  # raises UnknownSymbol
    return symbol


def _symbols_param(query: dict[str, str]) -> list[str]:
    try:
        symbols = json.loads(query["symbols"])
    except ValueError:
        raise _BadParameter(-1100, "Illegal characters found in parameter 'symbols'.") from None
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise _BadParameter(-1100, "Illegal characters found in parameter 'symbols'.")
    return symbols


def _int_param(query: dict[str, str], name: str, default: int | None) -> int | None:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise _BadParameter(-1100, f"Illegal characters found in parameter '{name}'.") from None


def _alter_field(body: Any, name: str, remove: bool) -> None:
    for item in body if isinstance(body, list) else [body]:
        if isinstance(item, dict) and name in item:
            if remove:
                del item[name]
            else:
                item[name] = None


def _seconds(value: float) -> str:
    """Retry-After as whole seconds, rounded up (a client waiting that long is never early)."""
    return str(max(0, math.ceil(value - 1e-9)))


def _handler_for(server: ExchangeServer, api: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "btcstream-exchange"

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per answer
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_DELETE(self) -> None:
            self._answer("DELETE")

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                reply = server.handle(api, method, self.path, body)
            except Exception:  # a bug in the fake exchange must show, not hang the client
                log.exception("local exchange failed on %s %s", method, self.path)
                reply = _Reply(500, {"code": -1000, "msg": "internal error in the local exchange"})
            if isinstance(reply.body, str):
                data = reply.body.encode()
                reply.headers.setdefault("Content-Type", "text/html; charset=utf-8")
            else:
                data = json.dumps(reply.body, separators=(",", ":")).encode()
                reply.headers.setdefault("Content-Type", JSON_TYPE)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. it timed out during a `timeout` fault)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", api, format % args)

    return Handler
