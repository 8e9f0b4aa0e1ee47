"""The WebSocket connection's behaviour, one test each, against a scripted local server (no Kafka, no network).

Pings answered while Kafka is stuck; jittered backoff that resets after a healthy connection; at most
N attempts per window; planned handover before the age limit and on serverShutdown without a gap or a
duplicate; the watchdog replacing a silent socket; the same streams requested after a reconnect;
close codes told apart; malformed frames counted and skipped.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from typing import Any, Callable

import pytest

from btcstream.errors import AccessDenied
from btcstream.ingest.feed_status import read_feed_status
from btcstream.ingest.gaps import ContinuityTracker
from btcstream.ingest.sources.binance import parse_agg_trade
from btcstream.ingest.sources.binance_ws import (AttemptLimiter, Backoff, StreamConnection, combined_stream_urls,
                                                 stream_names)
from btcstream.ingest.ws_feed import FeedOptions, run_websocket_feed
from btcstream.settings import Settings
from helpers.ws_script_server import (FakeBinanceRest, FakeCoinGecko, MarketTape, MemoryPublisher,
                                      ScriptedConnection, ScriptedStreamServer, agg_trade, book_ticker, ticker_24h)

SYMBOL = "BTCUSDT"


class TrackingSink:
    """A StreamSink that keeps trade ids once each (as the feed does) and records downs/ups and malformed frames."""

    def __init__(self) -> None:
        self.tracker = ContinuityTracker((SYMBOL,))
        self.trades: list[int] = []
        self.duplicates = 0
        self.streams: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.downs: list[str] = []
        self.ups = 0

    def on_message(self, stream: str, data: dict[str, Any], received_monotonic: float, received_wall: float) -> None:
        self.streams[stream] += 1
        if stream.endswith("@aggTrade"):
            if self.tracker.trade(SYMBOL, data["a"], received_wall):
                self.trades.append(data["a"])
            else:
                self.duplicates += 1
        elif stream.endswith("@bookTicker"):
            self.tracker.quote(SYMBOL, data["u"], received_wall)

    def on_malformed(self, reason: str) -> None:
        self.malformed[reason] += 1

    def on_down(self, connection: StreamConnection, reason: str, since_monotonic: float) -> None:
        self.downs.append(reason)
        self.tracker.connection_down(connection.symbols, time.time(), reason)

    def on_up(self, connection: StreamConnection, at_monotonic: float) -> None:
        self.ups += 1
        self.tracker.connection_up(connection.symbols, time.time())


def run_connection(server: ScriptedStreamServer, sink: TrackingSink, until: Callable[[StreamConnection], bool],
                   timeout_s: float = 10.0, **options: Any) -> StreamConnection:
    """Run a StreamConnection to the server until `until(connection)` (or the timeout), then stop it."""
    url, symbols = combined_stream_urls(server.url, [SYMBOL])[0]
    options.setdefault("backoff", Backoff(0.05, 0.5, random.Random(1)))
    connection = StreamConnection(url, sink, symbols=symbols, **options)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(connection.run(stop))
        deadline = time.monotonic() + timeout_s
        while not until(connection) and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    return connection


def assert_every_trade_once(sink: TrackingSink) -> None:
    assert sink.trades == list(range(sink.trades[0], sink.trades[-1] + 1))  # in order, no gap, no duplicate
    assert sink.tracker.gap_totals == Counter()


# -- pings ---------------------------------------------------------------------------------------------------

def test_pings_are_answered_while_the_kafka_sender_is_blocked(tmp_path):
    trades = 500
    pongs: list[float | None] = []

    async def script(conn: ScriptedConnection) -> None:
        for trade_id in range(1, trades + 1):
            await conn.send_stream("btcusdt@aggTrade", agg_trade(SYMBOL, trade_id))
        await asyncio.sleep(0.2)  # the burst is read (and mostly overflows) while Kafka is stuck
        pongs.append(await conn.ping(timeout_s=2.0))
        pongs.append(await conn.ping(timeout_s=2.0))

    gate = threading.Event()  # Kafka "blocks" until the test opens it
    publisher = MemoryPublisher(gate)
    rest = FakeBinanceRest({SYMBOL: {i: parse_agg_trade(agg_trade(SYMBOL, i), SYMBOL) for i in range(1, trades + 1)}})
    stop = threading.Event()
    with ScriptedStreamServer(script) as server:
        settings = Settings(symbols=(SYMBOL,), binance_ws_url=server.url, ws_buffer_size=50, state_dir=tmp_path)
        worker = threading.Thread(target=lambda: outcome.append(run_websocket_feed(
            settings, stop, options=FeedOptions(status_interval_s=0.2), publisher=publisher, binance=rest,
            coingecko=FakeCoinGecko())))
        outcome: list[Any] = []
        worker.start()
        deadline = time.monotonic() + 10
        while len(pongs) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(pongs) == 2 and all(p is not None and p < 1.0 for p in pongs), pongs
        assert not gate.is_set() and publisher.records == []  # the sender was stuck all along
        status = read_feed_status(settings)
        assert status is not None and status["counts"]["overflowed"]["trade"] > 0
        gate.set()
        while len({r.trade_id for r in publisher.records}) < trades and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        worker.join(20)
    document = outcome[0].document
    counts = document["counts"]
    assert counts["received"]["trade"] == trades == counts["sent"]["trade"] + counts["overflowed"]["trade"]
    assert counts["sent"]["trade_rest"] == counts["overflowed"]["trade"] > 0  # what overflowed came back from REST
    assert sorted(r.trade_id for r in publisher.records) == list(range(1, trades + 1))  # each exactly once
    assert set(document["gaps"]["total"]) == {"trade_overflow"} and document["gaps"]["missing_trade_ids"] == 0
    assert all(gap["filled"] for gap in document["gaps"]["recent"])
    assert document["connections"]["reconnects"] == {}


# -- backoff and the attempt limit ---------------------------------------------------------------------------

def test_backoff_grows_with_jitter_up_to_its_cap_and_resets():
    backoff = Backoff(base_s=1.0, cap_s=8.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert ceiling / 2 <= delay <= ceiling
    other = Backoff(base_s=1.0, cap_s=8.0, rng=random.Random(8))
    assert [other.next_delay() for _ in range(6)] != delays  # jittered: two clients do not retry in step
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_the_attempt_limiter_allows_300_per_5_minutes_in_any_sliding_window():
    now = [0.0]
    limiter = AttemptLimiter(300, 300.0, monotonic=lambda: now[0])
    for second in range(300):
        now[0] = float(second)
        assert limiter.wait_s() == 0
        limiter.record()
    now[0] = 299.5
    assert limiter.wait_s() == pytest.approx(0.5)  # the attempt at t=0 leaves the window at t=300
    now[0] = 300.0
    assert limiter.wait_s() == 0
    limiter.record()
    assert limiter.wait_s() == pytest.approx(1.0)  # sliding: the next slot frees at t=301
    assert limiter.in_window == 300


def test_refused_connections_are_retried_within_the_attempt_limit():
    with ScriptedStreamServer(lambda conn: asyncio.sleep(0), refuse=lambda attempt: True) as server:
        sink = TrackingSink()
        started = time.monotonic()
        connection = run_connection(server, sink, until=lambda connection: time.monotonic() - started > 2.5,
                                    backoff=Backoff(0.001, 0.002), limiter=AttemptLimiter(3, 1.0))
        times = list(server.handshake_times)
    assert connection.counters.failed_attempts == connection.counters.attempts == len(times) >= 6
    for index, moment in enumerate(times):  # never more than 3 attempts in any 1 s (seen from the server: 50 ms slack)
        assert sum(1 for other in times[index:] if other - moment < 0.95) <= 3


@pytest.mark.parametrize(("healthy_after_s", "fast"), [(0.2, True), (30.0, False)])
def test_the_backoff_resets_only_after_a_healthy_connection(healthy_after_s, fast):
    async def script(conn: ScriptedConnection) -> None:
        if conn.index == 0:
            await asyncio.sleep(0.5)
            await conn.drop()

    # three refusals first: the backoff stands at its 4th step (0.4-0.8 s with base 0.1) unless reset
    with ScriptedStreamServer(script, refuse=lambda attempt: attempt < 3) as server:
        sink = TrackingSink()
        run_connection(server, sink, until=lambda connection: len(server.connections) >= 2, timeout_s=5,
                       backoff=Backoff(0.1, 10.0, random.Random(3)), healthy_after_s=healthy_after_s)
        dropped, reconnected = server.connections[0].closed_at, server.handshake_times[-1]
    assert sink.downs == ["abnormal_closure"]
    waited = reconnected - dropped
    assert (waited < 0.3) if fast else (waited >= 0.35), waited


# -- planned reconnects --------------------------------------------------------------------------------------

def test_a_connection_is_handed_over_before_its_age_limit_without_gap_or_duplicate():
    tape = MarketTape(rate_per_s=400)

    async def script(conn: ScriptedConnection) -> None:
        await tape.stream(conn, SYMBOL, until=lambda: False)

    with ScriptedStreamServer(script) as server:
        sink = TrackingSink()
        # age on the exchange's clock: 1000 exchange s per local s, limit 300 exchange s = 0.3 local s
        connection = run_connection(server, sink, until=lambda connection: connection.counters.handovers >= 3,
                                    timeout_s=10,
                                    max_age_s=300.0, exchange_rate=lambda: 1000.0, stale_after_s=5.0)
        time.sleep(0.2)
        connections = list(server.connections)
    assert connection.counters.handovers >= 3
    assert connection.counters.reconnects == Counter({"max_age": connection.counters.handovers})
    for old, new in zip(connections, connections[1:]):
        assert new.opened_at < old.closed_at  # the next one opened first, then the old one closed
    assert sink.downs == [] and sink.ups == 0
    assert len(sink.trades) > 500
    assert_every_trade_once(sink)


def test_server_shutdown_opens_the_next_connection_before_the_old_one_closes():
    tape = MarketTape(rate_per_s=400)

    async def script(conn: ScriptedConnection) -> None:
        if conn.index == 0:
            last = await tape.stream(conn, SYMBOL, until=lambda: time.monotonic() - conn.opened_at > 0.3)
            await conn.server_shutdown()
            # keep streaming until the client has a second connection (or 3 s), then go away
            await tape.stream(conn, SYMBOL, after=last, until=lambda: len(server.connections) > 1 and
                              time.monotonic() - server.connections[1].opened_at > 0.2 or
                              time.monotonic() - conn.opened_at > 3.3)
            await conn.close(1001, "maintenance")
        else:
            await tape.stream(conn, SYMBOL, until=lambda: False)

    with ScriptedStreamServer(script) as server:
        sink = TrackingSink()
        connection = run_connection(server, sink, timeout_s=10, stale_after_s=5.0,
                                    until=lambda connection: len(server.connections) > 1 and server.connections[0].closed_at
                                    is not None and time.monotonic() - server.connections[0].closed_at > 0.3)
        first, second = server.connections[:2]
    assert connection.counters.reconnects == Counter({"server_shutdown": 1}) and connection.counters.handovers == 1
    assert second.opened_at < first.closed_at
    assert sink.downs == []
    assert_every_trade_once(sink)


# -- unplanned losses ------------------------------------------------------------------------------------------

def test_the_watchdog_replaces_a_silent_connection():
    tape = MarketTape(rate_per_s=200)
    silent_from: list[float] = []

    async def script(conn: ScriptedConnection) -> None:
        if conn.index == 0:
            await tape.stream(conn, SYMBOL, until=lambda: time.monotonic() - conn.opened_at > 0.3)
            silent_from.append(time.monotonic())
            await conn.go_silent()  # no frame, no ping, the socket stays open: a half-open connection
        else:
            await tape.stream(conn, SYMBOL, until=lambda: False)

    with ScriptedStreamServer(script) as server:
        sink = TrackingSink()
        connection = run_connection(server, sink, stale_after_s=0.5, timeout_s=10,
                                    until=lambda connection: len(server.connections) > 1 and
                                    time.monotonic() - server.connections[1].opened_at > 0.3)
        replaced_after = server.connections[1].opened_at - silent_from[0]
    assert 0.5 <= replaced_after < 2.0, replaced_after
    assert connection.counters.reconnects == Counter({"stale": 1}) and sink.downs == ["stale"] and sink.ups == 1
    downtime = [gap for gap in sink.tracker.gaps if gap.kind == "downtime"]
    assert len(downtime) == 1 and downtime[0].reason == "stale" and downtime[0].to_id > downtime[0].from_id
    assert sink.trades[-1] > downtime[0].to_id  # streaming again on the new connection


@pytest.mark.parametrize(("ending", "reason"), [("drop", "abnormal_closure"), ("abort", "abnormal_closure"),
                                                 ("close_1001", "closed"), ("close_1011", "error")])
def test_after_a_lost_connection_the_same_streams_are_requested_again(ending, reason):
    streams = stream_names([SYMBOL])
    payloads = {"btcusdt@bookTicker": lambda i: book_ticker(SYMBOL, i), "btcusdt@aggTrade": lambda i: agg_trade(SYMBOL, i),
                "btcusdt@ticker": lambda i: ticker_24h(SYMBOL, event_ms=1_700_000_000_000 + i)}

    async def script(conn: ScriptedConnection) -> None:
        for stream in conn.streams:
            await conn.send_stream(stream, payloads[stream](conn.index + 1))
        if conn.index == 0:
            await asyncio.sleep(0.1)
            if ending.startswith("close_"):
                await conn.close(int(ending.split("_")[1]))
            else:
                await getattr(conn, ending)()

    with ScriptedStreamServer(script) as server:
        sink = TrackingSink()
        run_connection(server, sink, until=lambda connection: sum(sink.streams.values()) >= 6)
        requested = [conn.streams for conn in server.connections]
    assert requested[:2] == [streams, streams]  # resubscribed: every stream of the first connection
    assert sink.streams == Counter({stream: 2 for stream in streams})
    assert sink.downs == [reason] and sink.ups == 1


def test_malformed_frames_are_counted_and_skipped_without_a_reconnect():
    async def script(conn: ScriptedConnection) -> None:
        await conn.send_stream("btcusdt@aggTrade", agg_trade(SYMBOL, 1))
        for frame in ['{"stream": "btcusdt@aggTrade", "data": {"a": 2,', "[1, 2]", '{"stream": 5, "data": {}}',
                      '{"data": {"a": 2}}', "null"]:
            await conn.send_raw(frame)
        await conn.send_json({"result": None, "id": 1})  # a SUBSCRIBE answer: not data, not malformed
        for trade_id in (2, 3):
            await conn.send_stream("btcusdt@aggTrade", agg_trade(SYMBOL, trade_id))

    with ScriptedStreamServer(script) as server:
        sink = TrackingSink()
        connection = run_connection(server, sink, until=lambda connection: len(sink.trades) >= 3)
    assert sink.malformed == Counter({"not_json": 1, "not_a_stream_message": 4})
    assert sink.trades == [1, 2, 3] and sink.downs == [] and connection.counters.attempts == 1


@pytest.mark.parametrize("status", [451, 403])
def test_a_restricted_location_stops_the_connection_with_the_cause(status):
    with ScriptedStreamServer(lambda conn: asyncio.sleep(0), refuse=lambda attempt: True, refuse_status=status) as server:
        with pytest.raises(AccessDenied, match=f"HTTP {status}"):
            run_connection(server, TrackingSink(), until=lambda connection: False, timeout_s=5)
        assert server.handshakes == 1  # not retried: retrying cannot fix it
