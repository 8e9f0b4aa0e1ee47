"""The replay exchange's WebSocket streams and aggTrades: Binance's shapes, continuous ids, REST = stream, faults.

Every test runs its own exchange on ephemeral loopback ports and talks to it with the `websockets`
client, as the producer does; no Kafka, HDFS or Spark.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from btcstream.errors import BtcstreamError
from btcstream.exchange import StreamFault, build_market, replay_exchange, spawn_exchange, start_exchange
from btcstream.exchange.market import DAY_MS
from btcstream.exchange.payloads import book_ticker_event
from btcstream.exchange.server import ExchangeServer
from btcstream.exchange.streams import StreamServer
from btcstream.exchange.tape import Tape
from btcstream.settings import load_settings
from helpers.replay_exchange import symbol_histories, two_symbol_exchange

T = TypeVar("T")
TEST_TIMEOUT_S = 30.0
NUMBER = re.compile(r"\d+\.\d{8}")
BOOK_KEYS = ["u", "s", "b", "B", "a", "A"]
AGG_TRADE_KEYS = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]
TICKER_KEYS = ["e", "E", "s", "p", "P", "w", "x", "c", "Q", "b", "B", "a", "A", "o", "h", "l", "v", "q", "O", "C",
               "F", "L", "n"]
REST_TRADE_KEYS = ["a", "p", "q", "f", "l", "T", "m", "M"]


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, TEST_TIMEOUT_S)

    return asyncio.run(bounded())


@pytest.fixture
def exchange(tmp_path) -> Iterator[ExchangeServer]:
    """BTCUSDT + ETHUSDT at an hour per second: 50 book updates and 20 trades per symbol per second."""
    with two_symbol_exchange(tmp_path, speed=3600.0, ws_quotes_per_second=50, ws_trades_per_second=20) as server:
        yield server


class PingCountingConnection(ClientConnection):
    """A client connection that counts the server's pings (the library answers them itself)."""

    pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


@dataclass
class Session:
    """One client connection read in the background: every frame with its arrival time, and how it ended."""

    ws: ClientConnection
    frames: list[tuple[float, str]] = field(default_factory=list)
    closed: ConnectionClosed | None = None
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, **options: Any) -> "Session":
        session = cls(await connect(url, ping_interval=None, **options))
        session.reader = asyncio.get_running_loop().create_task(session._read())
        return session

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.frames.append((time.monotonic(), message if isinstance(message, str) else message.decode()))
        except ConnectionClosed as closed:
            self.closed = closed
            return
        self.closed = self.ws.protocol.close_exc  # 1000/1001 end `async for` quietly

    async def ended(self, timeout_s: float = 5.0) -> ConnectionClosed:
        assert self.reader is not None
        await asyncio.wait_for(asyncio.shield(self.reader), timeout_s)
        assert self.closed is not None
        return self.closed

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(text) for _, text in self.frames]

    async def request(self, payload: dict[str, Any], timeout_s: float = 3.0) -> dict[str, Any]:
        """Send a control message and return the reply carrying its id."""
        seen = len(self.frames)
        await self.ws.send(json.dumps(payload))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _, text in self.frames[seen:]:
                message = json.loads(text)
                if "id" in message and message["id"] == payload.get("id"):
                    return message
            await asyncio.sleep(0.01)
        raise AssertionError(f"no reply to {payload}")

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


def data_of(message: dict[str, Any]) -> dict[str, Any]:
    return message["data"] if "stream" in message else message


def ids_of(messages: list[dict[str, Any]], key: str) -> list[int]:
    return [data_of(m)[key] for m in messages if key in data_of(m) and data_of(m).get("e") in (None, "aggTrade")]


def wait_for_state(server: ExchangeServer, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 3.0) -> bool:
    """True once `condition(state["ws"])` holds (the server notices a closed connection a moment after the client)."""
    deadline = time.monotonic() + timeout_s
    while not condition(server.state()["ws"]):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def consecutive(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids)))


async def collect(url: str, seconds: float) -> list[dict[str, Any]]:
    session = await Session.open(url)
    await asyncio.sleep(seconds)
    await session.close()
    return session.messages()


# -- shapes and ids -------------------------------------------------------------------------------------------
def test_raw_book_ticker_stream_has_binance_shape_string_prices_and_continuous_update_ids(exchange):
    messages = run(collect(exchange.ws_url + "/ws/btcusdt@bookTicker", 0.6))
    assert len(messages) >= 15
    for message in messages:
        assert list(message) == BOOK_KEYS and message["s"] == "BTCUSDT" and isinstance(message["u"], int)
        assert all(NUMBER.fullmatch(message[k]) for k in "bBaA"), message
        assert float(message["b"]) < float(message["a"]) and float(message["B"]) > 0 and float(message["A"]) > 0
    ids = [m["u"] for m in messages]
    assert consecutive(ids)
    assert messages[3] == json.loads(book_ticker_event(exchange.tape.book_update("BTCUSDT", ids[3])))


def test_combined_stream_wraps_aggtrade_bookticker_and_ticker_messages(exchange):
    streams = ["btcusdt@aggTrade", "ethusdt@bookTicker", "ethusdt@ticker"]
    messages = run(collect(exchange.ws_url + "/stream?streams=" + "/".join(streams), 1.3))
    assert all(list(m) == ["stream", "data"] for m in messages)
    by_stream = {name: [m["data"] for m in messages if m["stream"] == name] for name in streams}
    trades, books, tickers = by_stream["btcusdt@aggTrade"], by_stream["ethusdt@bookTicker"], by_stream["ethusdt@ticker"]
    assert len(trades) >= 10 and len(books) >= 30 and len(tickers) >= 1
    for trade in trades:
        assert list(trade) == AGG_TRADE_KEYS and trade["e"] == "aggTrade" and trade["s"] == "BTCUSDT"
        assert NUMBER.fullmatch(trade["p"]) and NUMBER.fullmatch(trade["q"]) and float(trade["q"]) > 0
        assert trade["T"] <= trade["E"] and trade["M"] is True and isinstance(trade["m"], bool)
        assert trade["f"] <= trade["l"]
    assert consecutive([t["a"] for t in trades])
    assert all(b["f"] == a["l"] + 1 for a, b in zip(trades, trades[1:]))  # fills are contiguous too
    assert consecutive([b["u"] for b in books]) and {b["s"] for b in books} == {"ETHUSDT"}
    for ticker in tickers:
        assert list(ticker) == TICKER_KEYS and ticker["e"] == "24hrTicker" and ticker["s"] == "ETHUSDT"
        assert ticker["C"] - ticker["O"] == DAY_MS and ticker["C"] == ticker["E"]
        assert float(ticker["l"]) <= float(ticker["c"]) <= float(ticker["h"])
        assert all(isinstance(ticker[k], str) for k in "pPwxcQbBaAohlvq") and isinstance(ticker["n"], int)


def test_the_tape_is_a_pure_function_of_seed_symbol_and_id(tmp_path):
    first, second = (Tape(build_market(seed=7, speed=3600), 50, 20) for _ in range(2))
    other = Tape(build_market(seed=8, speed=3600), 50, 20)
    ids = range(250, 262)  # across a block boundary of the seeded draws
    trades = first.trades("BTCUSDT", 250, 261)
    assert trades == second.trades("BTCUSDT", 250, 261) and trades != other.trades("BTCUSDT", 250, 261)
    assert [first.book_update("BTCUSDT", n) for n in ids] == [second.book_update("BTCUSDT", n) for n in ids]
    assert all(b.first_trade_id == a.last_trade_id + 1 for a, b in zip(trades, trades[1:]))
    assert all(b.time_ms - a.time_ms == 180_000 for a, b in zip(trades, trades[1:]))  # 3600 s/s over 20 trades/s
    lot = first.market.history("BTCUSDT").lot_size
    for trade in trades:
        quote = first.market.quote("BTCUSDT", trade.time_ms)
        level = (quote.bid_price, quote.bid_qty) if trade.buyer_is_maker else (quote.ask_price, quote.ask_qty)
        assert trade.price == level[0] and lot <= trade.qty <= level[1]
    assert {t.buyer_is_maker for t in trades} == {True, False}


# -- REST aggTrades ---------------------------------------------------------------------------------------------
def test_rest_agg_trades_from_id_returns_exactly_what_the_stream_sent(exchange):
    streamed = run(collect(exchange.ws_url + "/ws/btcusdt@aggTrade", 0.8))
    assert len(streamed) >= 10
    answer = requests.get(exchange.binance_url + "/api/v3/aggTrades",
                          params={"symbol": "BTCUSDT", "fromId": streamed[0]["a"], "limit": len(streamed)}, timeout=5)
    assert answer.status_code == 200 and "X-MBX-USED-WEIGHT-1M" in answer.headers
    rest = answer.json()
    assert all(list(trade) == REST_TRADE_KEYS for trade in rest)
    assert rest == [{k: trade[k] for k in REST_TRADE_KEYS} for trade in streamed]


def test_rest_agg_trades_parameters_weight_and_no_future_trades(tmp_path):
    start = datetime(2021, 1, 1, 0, 0, 1, tzinfo=timezone.utc)  # a fresh simulated minute: weights add up
    with start_exchange(speed=1.0, start=start, ws_trades_per_second=10) as server:
        url = server.binance_url + "/api/v3/aggTrades"
        newest = requests.get(url, params={"symbol": "BTCUSDT", "limit": 5}, timeout=5)
        assert newest.headers["X-MBX-USED-WEIGHT-1M"] == "4"
        trades = newest.json()
        assert len(trades) == 5 and [t["a"] for t in trades] == list(range(trades[0]["a"], trades[0]["a"] + 5))
        assert trades[-1]["T"] <= server.market.clock.now_ms()
        assert len(requests.get(url, params={"symbol": "BTCUSDT"}, timeout=5).json()) == 500  # default limit
        last = server.tape.last_trade_id("BTCUSDT", server.market.clock.now_ms())
        assert requests.get(url, params={"symbol": "BTCUSDT", "fromId": last + 1000}, timeout=5).json() == []
        from_start = requests.get(url, params={"symbol": "BTCUSDT", "startTime": trades[1]["T"], "limit": 2}, timeout=5).json()
        assert [t["a"] for t in from_start] == [trades[1]["a"], trades[2]["a"]]
        until_end = requests.get(url, params={"symbol": "BTCUSDT", "endTime": trades[2]["T"], "limit": 2}, timeout=5).json()
        assert [t["a"] for t in until_end] == [trades[1]["a"], trades[2]["a"]]
        errors = {"missing symbol": ({}, -1102), "bad symbol": ({"symbol": "NOPE"}, -1121),
                  "limit": ({"symbol": "BTCUSDT", "limit": 1001}, -1100),
                  "window": ({"symbol": "BTCUSDT", "startTime": 0, "endTime": 3_600_000}, -1127)}
        for params, code in errors.values():
            answer = requests.get(url, params=params, timeout=5)
            assert answer.status_code == 400 and answer.json()["code"] == code, params
        assert server.state()["requests"]["binance /api/v3/aggTrades"] == 5 + len(errors)


# -- control messages and limits -----------------------------------------------------------------------------
def test_subscribe_unsubscribe_list_and_properties(exchange):
    async def go() -> None:
        session = await Session.open(exchange.ws_url + "/ws")
        reply = await session.request({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker", "ethusdt@aggTrade"], "id": 1})
        assert reply == {"result": None, "id": 1}
        await asyncio.sleep(0.4)
        data = [m for m in session.messages() if "id" not in m]
        assert {m["s"] for m in data if "u" in m} == {"BTCUSDT"} and {m["s"] for m in data if m.get("e") == "aggTrade"} == {"ETHUSDT"}
        assert all("stream" not in m for m in data)  # raw: not wrapped
        listed = await session.request({"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert listed == {"result": ["btcusdt@bookTicker", "ethusdt@aggTrade"], "id": 2}
        assert await session.request({"method": "UNSUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 3}) == {"result": None, "id": 3}
        after = len(session.frames)
        await asyncio.sleep(1.4)  # also lets the 5-messages-per-second window pass
        later = [json.loads(text) for _, text in session.frames[after:]]
        assert later and all(m.get("e") == "aggTrade" for m in later)
        assert await session.request({"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 4}) == \
            {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4}
        assert await session.request({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}) == {"result": None, "id": 5}
        assert await session.request({"method": "GET_PROPERTY", "params": ["combined"], "id": 6}) == {"result": True, "id": 6}
        after = len(session.frames)
        await asyncio.sleep(1.4)
        wrapped = [json.loads(text) for _, text in session.frames[after:]]
        assert wrapped and all(m.get("stream") == "ethusdt@aggTrade" for m in wrapped)
        assert (await session.request({"method": "NOPE", "id": 7}))["error"]["code"] == 2
        assert (await session.request({"method": "GET_PROPERTY", "params": ["colour"], "id": 8}))["error"] == {"code": 0, "msg": "Unknown property"}
        await session.ws.send("{not json")
        await asyncio.sleep(0.2)
        assert any(json.loads(text).get("error", {}).get("code") == 3 for _, text in session.frames)
        await session.close()

    run(go())


def test_unknown_streams_and_paths_are_refused_at_the_handshake(exchange):
    async def status_of(path: str) -> int:
        with pytest.raises(InvalidStatus) as refused:
            await connect(exchange.ws_url + path)
        return refused.value.response.status_code

    async def go() -> None:
        assert await status_of("/ws/btcusdt@depth") == 400
        assert await status_of("/ws/BTCUSDT@bookTicker") == 400  # symbols are lowercase in stream names
        assert await status_of("/stream?streams=btcusdt@bookTicker/dogeusdt@aggTrade") == 400
        assert await status_of("/api/v3/time") == 404

    run(go())


def test_more_than_five_incoming_messages_a_second_close_the_connection(exchange):
    async def go() -> tuple[Session, Session]:
        polite, greedy = await Session.open(exchange.ws_url + "/ws"), await Session.open(exchange.ws_url + "/ws")
        for n in range(5):
            await polite.ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": n}))
        await asyncio.sleep(1.5)  # the server counts by arrival: a wide margin for a busy machine
        for n in range(5):
            await polite.ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10 + n}))
        for n in range(6):
            await greedy.ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": n}))
        await greedy.ended()
        await asyncio.sleep(0.2)
        assert polite.closed is None
        await polite.close()
        return polite, greedy

    polite, greedy = run(go())
    assert len(polite.frames) == 10
    assert greedy.closed.rcvd.code == 1008 and greedy.closed.rcvd.reason == "Too many requests"
    assert len(greedy.frames) == 5
    assert wait_for_state(exchange, lambda ws: ws["connections"]["closed"].get("too_many_messages") == 1)


def test_at_most_max_streams_per_connection(tmp_path):
    market = build_market(speed=3600)
    streams = StreamServer(market, Tape(market, 10, 5), max_streams=2).start()
    try:
        async def go() -> None:
            with pytest.raises(InvalidStatus) as refused:
                await connect(streams.url + "/stream?streams=btcusdt@bookTicker/btcusdt@aggTrade/btcusdt@ticker")
            assert refused.value.response.status_code == 400
            session = await Session.open(streams.url + "/stream?streams=btcusdt@bookTicker/btcusdt@aggTrade")
            reply = await session.request({"method": "SUBSCRIBE", "params": ["btcusdt@ticker"], "id": 1})
            assert reply["error"]["code"] == 2 and "at most 2 streams" in reply["error"]["msg"]
            assert (await session.request({"method": "LIST_SUBSCRIPTIONS", "id": 2}))["result"] == \
                ["btcusdt@bookTicker", "btcusdt@aggTrade"]
            await session.close()

        run(go())
    finally:
        streams.stop()


# -- keepalive and the 24 h cut -----------------------------------------------------------------------------------
def test_server_pings_and_drops_a_connection_whose_pong_does_not_come(tmp_path):
    with two_symbol_exchange(tmp_path, ws_quotes_per_second=20, ws_trades_per_second=5,
                             ws_ping_interval_s=0.2, ws_pong_timeout_s=0.6) as server:
        async def go() -> tuple[Session, Session, int]:
            alive = await Session.open(server.ws_url + "/ws/btcusdt@bookTicker", create_connection=PingCountingConnection)
            deaf = await Session.open(server.ws_url + "/ws/btcusdt@bookTicker")
            deaf.ws.transport.pause_reading()  # reads nothing, so answers no ping
            await asyncio.sleep(1.6)
            deaf.ws.transport.resume_reading()
            await deaf.ended()
            assert alive.closed is None
            pings = alive.ws.pings  # type: ignore[attr-defined]
            await alive.close()
            return alive, deaf, pings

        alive, deaf, pings = run(go())
        assert pings >= 5  # one every 0.2 s
        assert deaf.closed.rcvd is not None and deaf.closed.rcvd.code == 1011 and deaf.closed.rcvd.reason == "pong timeout"
        assert wait_for_state(server, lambda ws: ws["connections"]["closed"] == {"pong_timeout": 1, "client": 1})


def test_a_connection_is_cut_after_24_hours_of_simulated_time(tmp_path):
    with two_symbol_exchange(tmp_path, speed=43_200.0, ws_quotes_per_second=20) as server:  # a day in 2 s
        async def go() -> tuple[float, int, int, ConnectionClosed]:
            opened_wall, opened_ms = time.monotonic(), server.market.clock.now_ms()
            session = await Session.open(server.ws_url + "/ws/btcusdt@bookTicker")
            closed = await session.ended(timeout_s=6)
            return time.monotonic() - opened_wall, opened_ms, server.market.clock.now_ms(), closed

        lasted_s, opened_ms, closed_ms, closed = run(go())
        assert 1.8 <= lasted_s <= 4.0 and closed_ms - opened_ms >= DAY_MS
        assert closed.rcvd.code == 1001 and closed.rcvd.reason == "24 hour connection limit"
        assert wait_for_state(server, lambda ws: ws["connections"]["closed"] == {"cut_24h": 1})


# -- faults ------------------------------------------------------------------------------------------------
def inject(server: ExchangeServer, **fault: Any) -> Awaitable[list[dict[str, Any]]]:
    return asyncio.to_thread(server.inject_ws_fault, StreamFault(**fault))


def test_abrupt_close_resets_the_tcp_connection_without_a_close_frame(exchange):
    async def go() -> tuple[list[dict[str, Any]], Session]:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.2)
        applied = await inject(exchange, kind="abrupt_close")
        await session.ended()
        return applied, session

    applied, session = run(go())
    assert [(a["kind"], a["connection"]) for a in applied] == [("abrupt_close", 1)]
    assert session.closed.rcvd is None and session.ws.close_code == 1006
    assert isinstance(session.closed.__cause__, ConnectionResetError)
    assert wait_for_state(exchange, lambda ws: ws["connections"]["closed"] == {"abrupt_close": 1})


def test_close_1006_ends_the_connection_without_a_close_frame(exchange):
    async def go() -> Session:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.2)
        await inject(exchange, kind="close_1006")
        await session.ended()
        return session

    session = run(go())
    assert session.closed.rcvd is None and session.ws.close_code == 1006
    assert isinstance(session.closed.__cause__, EOFError)  # an orderly end of stream, not a reset


def test_silence_stops_data_and_pongs_then_the_stream_resumes_with_a_gap(exchange):
    async def go() -> tuple[Session, bool, dict[str, Any]]:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.3)
        await inject(exchange, kind="silence", duration_s=1.0)
        waiter = await session.ws.ping()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), 0.6)
            answered_in_silence = True
        except asyncio.TimeoutError:
            answered_in_silence = False
        state = await asyncio.to_thread(exchange.state)
        await asyncio.wait_for(waiter, 2.0)  # answered once the silence is over
        await asyncio.sleep(0.4)
        await session.close()
        return session, answered_in_silence, state

    session, answered_in_silence, state = run(go())
    assert not answered_in_silence and state["ws"]["connections"]["open"][0]["silenced"] is True
    ids = [json.loads(text)["u"] for _, text in session.frames]
    jumps = [b - a for a, b in zip(ids, ids[1:]) if b != a + 1]
    assert len(jumps) == 1 and jumps[0] > 20  # about a second of updates never sent


def test_silence_until_cleared_through_the_control_endpoint(exchange):
    control = exchange.binance_url + "/_control/ws-faults"

    async def go() -> tuple[Session, list[dict[str, Any]], float]:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@aggTrade")  # 20 trades a second
        await asyncio.sleep(0.2)
        answer = (await asyncio.to_thread(requests.post, control, json={"kind": "silence"}, timeout=5)).json()
        await asyncio.sleep(0.8)
        await asyncio.to_thread(requests.delete, control, timeout=5)
        cleared_at = time.monotonic()
        await asyncio.sleep(0.5)
        await session.close()
        return session, answer["applied"], cleared_at

    session, applied, cleared_at = run(go())
    assert [(a["kind"], a["duration_s"]) for a in applied] == [("silence", None)]
    ids = [json.loads(text)["a"] for _, text in session.frames]
    jumps = [b - a for a, b in zip(ids, ids[1:]) if b != a + 1]
    assert len(jumps) == 1 and jumps[0] > 10  # 0.8 s of trades at 20/s never sent
    assert len([t for t, _ in session.frames if t > cleared_at]) >= 5
    assert exchange.state()["ws"]["faults"]["applied"][0]["kind"] == "silence"


def test_server_shutdown_event_then_close_while_data_keeps_flowing(exchange):
    async def go() -> tuple[Session, float, ConnectionClosed, float]:
        session = await Session.open(exchange.ws_url + "/stream?streams=btcusdt@bookTicker")
        await asyncio.sleep(0.2)
        await inject(exchange, kind="server_shutdown", delay_s=0.6)
        announced = time.monotonic()
        closed = await session.ended()
        return session, announced, closed, time.monotonic()

    session, announced, closed, ended = run(go())
    messages = session.messages()
    events = [i for i, m in enumerate(messages) if m.get("e") == "serverShutdown"]
    assert len(events) == 1 and isinstance(messages[events[0]]["E"], int)
    assert len(messages) - events[0] - 1 >= 10  # the stream goes on until the close
    assert closed.rcvd.code == 1001 and 0.5 <= ended - announced <= 2.0


def test_injected_24h_cut_closes_now_with_1001(exchange):
    async def go() -> ConnectionClosed:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.2)
        await inject(exchange, kind="cut_24h")
        return await session.ended()

    closed = run(go())
    assert closed.rcvd.code == 1001 and closed.rcvd.reason == "24 hour connection limit"


def test_malformed_frames_arrive_beside_an_unbroken_stream(exchange):
    async def go() -> Session:
        session = await Session.open(exchange.ws_url + "/stream?streams=btcusdt@bookTicker")
        await asyncio.sleep(0.2)
        await inject(exchange, kind="malformed", frames=3)
        await asyncio.sleep(0.3)
        await session.close()
        return session

    session = run(go())
    good, bad = [], []
    for _, text in session.frames:
        try:
            data = json.loads(text)["data"]
            valid = isinstance(data["u"], int) and isinstance(data["s"], str) and float(data["b"]) > 0
        except (ValueError, KeyError, TypeError):
            valid = False
        (good if valid else bad).append(text)
    assert len(bad) == 3
    assert sum(1 for text in bad if _is_json(text)) == 1  # wrong types: valid JSON, useless content
    assert consecutive([json.loads(text)["data"]["u"] for text in good])
    assert exchange.state()["ws"]["events"]["malformed"] == 3


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_update_id_gap_skips_exactly_the_recorded_ids(exchange):
    async def go() -> Session:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.3)
        await inject(exchange, kind="update_id_gap", symbol="BTCUSDT", skip=5)
        await asyncio.sleep(0.4)
        await session.close()
        return session

    ids = [m["u"] for m in run(go()).messages()]
    missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
    assert len(missing) == 5 and missing == list(range(missing[0], missing[0] + 5))
    record = exchange.state()["ws"]["faults"]["applied"][0]
    assert record["kind"] == "update_id_gap" and record["skipped_ids"] == missing and record["skipped"] == 5


def test_observers_see_exactly_the_ids_written_to_a_connection(exchange):
    seen: list[int] = []
    exchange.streams.observe(lambda symbol, kind, ids: seen.extend(ids) if (symbol, kind) == ("BTCUSDT", "bookTicker") else None)

    async def go() -> Session:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.3)
        await inject(exchange, kind="update_id_gap", symbol="BTCUSDT", skip=5)  # the only connection skips 5
        await asyncio.sleep(0.4)
        await session.close()
        return session

    received = [m["u"] for m in run(go()).messages()]
    assert seen[:len(received)] == received  # after the close nothing more reaches a connection
    assert not set(seen) & set(exchange.state()["ws"]["faults"]["applied"][0]["skipped_ids"])


def test_trade_id_gap_is_filled_from_rest_by_id(exchange):
    async def go() -> Session:
        session = await Session.open(exchange.ws_url + "/ws/btcusdt@aggTrade")
        await asyncio.sleep(0.3)
        await inject(exchange, kind="trade_id_gap", symbol="BTCUSDT", skip=3)
        await asyncio.sleep(0.5)
        await session.close()
        return session

    streamed = run(go()).messages()
    ids = [t["a"] for t in streamed]
    missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
    assert len(missing) == 3
    filled = requests.get(exchange.binance_url + "/api/v3/aggTrades",
                          params={"symbol": "BTCUSDT", "fromId": missing[0], "limit": 4}, timeout=5).json()
    assert [t["a"] for t in filled[:3]] == missing
    after = next(t for t in streamed if t["a"] == missing[-1] + 1)
    assert filled[3] == {k: after[k] for k in REST_TRADE_KEYS}
    assert filled[0]["f"] == next(t for t in streamed if t["a"] == missing[0] - 1)["l"] + 1


def test_a_fault_for_the_next_connection_spares_the_open_one(exchange):
    async def go() -> tuple[Session, Session, Session, list[dict[str, Any]]]:
        first = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await inject(exchange, kind="close_1006", target="next")
        pending = (await asyncio.to_thread(exchange.state))["ws"]["faults"]["pending"]
        second = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await second.ended()
        third = await Session.open(exchange.ws_url + "/ws/btcusdt@bookTicker")
        await asyncio.sleep(0.3)
        assert first.closed is None and third.closed is None
        await first.close()
        await third.close()
        return first, second, third, pending

    first, second, third, pending = run(go())
    assert [(p["kind"], p["remaining"]) for p in pending] == [("close_1006", 1)]
    assert second.ws.close_code == 1006 and len(first.frames) > 5 and len(third.frames) > 5
    state = exchange.state()["ws"]
    assert state["faults"]["pending"] == [] and [a["connection"] for a in state["faults"]["applied"]] == [2]


def test_bad_fault_requests_are_refused(exchange):
    control = exchange.binance_url + "/_control/ws-faults"
    for body in ({"kind": "explode"}, {"kind": "silence", "target": "everyone"},
                 {"kind": "update_id_gap", "symbol": "DOGEUSDT"}, {"kind": "malformed", "variant": "rude"}):
        assert requests.post(control, json=body, timeout=5).status_code == 400, body


# -- counts, rate, process ---------------------------------------------------------------------------------------
def test_state_counts_every_message_sent_and_the_last_ids(exchange):
    async def go() -> list[dict[str, Any]]:
        session = await Session.open(exchange.ws_url + "/stream?streams=btcusdt@bookTicker/btcusdt@aggTrade")
        await asyncio.sleep(0.7)
        await session.request({"method": "UNSUBSCRIBE", "params": ["btcusdt@bookTicker", "btcusdt@aggTrade"], "id": 1})
        await session.close()
        return [m for m in session.messages() if "stream" in m]

    received = run(go())
    books = [m["data"]["u"] for m in received if m["stream"] == "btcusdt@bookTicker"]
    trades = [m["data"]["a"] for m in received if m["stream"] == "btcusdt@aggTrade"]
    assert wait_for_state(exchange, lambda ws: ws["connections"]["open"] == [])
    state = exchange.state()["ws"]
    assert state["sent"]["BTCUSDT"] == {"bookTicker": len(books), "aggTrade": len(trades), "ticker": 0}
    assert state["sent"]["ETHUSDT"] == {"bookTicker": 0, "aggTrade": 0, "ticker": 0}
    ids = state["ids"]["BTCUSDT"]
    assert {key: ids[key] for key in ("first_update_id", "last_update_id", "first_trade_id", "last_trade_id")} == {
        "first_update_id": books[0], "last_update_id": books[-1], "first_trade_id": trades[0], "last_trade_id": trades[-1]}
    assert ids["newest_trade_id"] >= trades[-1]
    assert state["ids"]["ETHUSDT"]["last_trade_id"] is None
    assert state["connections"] == {"open": [], "opened": 1, "closed": {"client": 1}}


def test_ten_symbols_stream_at_the_configured_two_thousand_messages_a_second(tmp_path):
    histories = symbol_histories(tmp_path, 10)
    with start_exchange(histories, speed=3600.0, ws_quotes_per_second=180, ws_trades_per_second=20) as server:
        names = [f"{s.lower()}@{kind}" for s in server.market.symbols for kind in ("bookTicker", "aggTrade")]

        async def go() -> list[tuple[float, str]]:
            session = await Session.open(server.ws_url + "/stream?streams=" + "/".join(names), max_queue=None)
            await asyncio.sleep(3.0)
            await session.close()
            return session.frames

        frames = run(go())
    arrived = [t for t, _ in frames]
    rate = (len(arrived) - 1) / (arrived[-1] - arrived[0])
    assert 1700 <= rate <= 2300, rate  # 2,000 configured; slack for a busy 2-core machine
    messages = [json.loads(text) for _, text in frames]
    for name in names:
        key = "u" if name.endswith("bookTicker") else "a"
        assert consecutive([m["data"][key] for m in messages if m["stream"] == name]), name


def test_settings_point_at_all_three_listeners(exchange):
    settings = exchange.settings_for(load_settings(env={}))
    assert settings.binance_ws_url == exchange.ws_url and exchange.ws_url.startswith("ws://127.0.0.1:")
    assert settings.binance_url == exchange.binance_url and settings.coingecko_url == exchange.coingecko_url


def test_replay_exchange_refuses_a_local_rest_url_with_a_live_websocket_url():
    settings = load_settings(env={}).replace(binance_url="http://127.0.0.1:8080")
    with pytest.raises(BtcstreamError, match="BTCSTREAM_BINANCE_WS_URL"):
        with replay_exchange(settings):
            pass
    rest = settings.replace(feed="rest")
    with replay_exchange(rest) as same:
        assert same is rest


def test_child_process_reports_its_websocket_url(tmp_path):
    with spawn_exchange(speed=3600, extra_args=["--ws-quotes-per-second", "40"]) as child:
        assert child.ws_url.startswith("ws://127.0.0.1:")
        assert child.settings_for(load_settings(env={})).binance_ws_url == child.ws_url
        messages = run(collect(child.ws_url + "/ws/btcusdt@bookTicker", 0.5))
        assert len(messages) >= 10 and consecutive([m["u"] for m in messages])
    assert child.process.returncode == 0
