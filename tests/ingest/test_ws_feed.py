"""The WebSocket feed: frames -> quote ticks and trades, conflation (counts add up), the bounded buffer
(overflow counted), malformed payloads skipped, a whole run with its status document; and, against the
replay exchange's WebSocket server, every trade id it sent arriving in Kafka exactly once."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from btcstream.ingest.clock import ExchangeClock
from btcstream.ingest.feed_status import FeedCounters, feed_status_path, read_feed_status, write_feed_status
from btcstream.ingest.sources.binance import parse_agg_trade
from btcstream.ingest.sources.binance_ws import BookTickerEvent
from btcstream.ingest.sources.coingecko import CoinMarket
from btcstream.ingest.tick import Tick
from btcstream.ingest.trade import Trade
from btcstream.ingest.ws_feed import FeedOptions, PendingQuote, QuoteConflator, WebSocketFeed, run_websocket_feed
from btcstream.settings import Settings
from helpers.ws_script_server import (FakeBinanceRest, FakeCoinGecko, MarketTape, MemoryPublisher,
                                      ScriptedConnection, ScriptedStreamServer, agg_trade, book_ticker, ticker_24h)

SYMBOL = "BTCUSDT"
EXCHANGE_START = datetime(2021, 5, 19, 12, 0, tzinfo=timezone.utc)


class ManualTime:
    """A monotonic clock and a `call_later` that the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, int, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((self.now + delay, len(self.timers), callback))

    def advance_to(self, moment: float) -> None:
        while True:
            due = sorted(t for t in self.timers if t[0] <= moment)
            if not due:
                break
            self.timers.remove(due[0])
            self.now = max(self.now, due[0][0])
            due[0][2]()
        self.now = moment


def exchange_clock(time_source: ManualTime | None = None) -> ExchangeClock:
    """An exchange clock at EXCHANGE_START when the local monotonic clock reads 100.0, rate 1."""
    monotonic = time_source.monotonic if time_source else time.monotonic
    base = monotonic()
    clock = ExchangeClock(lambda: EXCHANGE_START + timedelta(seconds=monotonic() - base), monotonic=monotonic,
                          sleep=lambda seconds: None)
    clock.sync()
    return clock


def make_feed(buffer_size: int = 1000, max_hz: float = 10.0, symbols: tuple[str, ...] = (SYMBOL,),
              time_source: ManualTime | None = None) -> WebSocketFeed:
    settings = Settings(symbols=symbols, ws_max_quotes_hz=max_hz, ws_buffer_size=buffer_size)
    source = time_source or ManualTime()
    return WebSocketFeed(settings, exchange_clock(source), queue.Queue(maxsize=buffer_size), schedule=source.call_later,
                         monotonic=source.monotonic)


def drain(feed: WebSocketFeed) -> list[Any]:
    records = []
    while not feed.buffer.empty():
        records.append(feed.buffer.get_nowait())
    return records


def assert_quote_counts_add_up(feed: WebSocketFeed) -> None:
    counts = feed.counters.counts_document(feed.conflator.held)
    assert counts["received"]["quote"] == (counts["sent"]["quote"] + counts["conflated"]
                                           + counts["overflowed"]["quote"] + counts["held"])


# -- conflation ---------------------------------------------------------------------------------------------

def conflator_with_log(max_hz: float, clock: ManualTime) -> tuple[QuoteConflator, list[tuple[float, int]], FeedCounters]:
    sent: list[tuple[float, int]] = []
    counters = FeedCounters()
    conflator = QuoteConflator(max_hz, lambda symbol, quote: sent.append((clock.now, quote.event.update_id)),
                               clock.call_later, counters, clock.monotonic)
    return conflator, sent, counters


def book(update_id: int, clock: ManualTime) -> PendingQuote:
    return PendingQuote(BookTickerEvent(SYMBOL, update_id, 1.0, 1.0, 2.0, 1.0), clock.now, time.time())


def test_fast_books_are_conflated_to_the_rate_and_the_latest_book_wins():
    clock = ManualTime()
    conflator, sent, counters = conflator_with_log(10.0, clock)
    latest_offered: dict[int, int] = {}  # index in `sent` -> the newest book offered before that send
    newest = None
    for step in range(100):  # a book every 10 ms for 1 s, against a limit of 10 per second
        before = len(sent)
        clock.advance_to(100.0 + step * 0.010)  # a waiting book may go out here, before this step's book
        latest_offered.update({index: newest for index in range(before, len(sent))})
        newest = 1000 + step
        before = len(sent)
        conflator.offer(SYMBOL, book(newest, clock))
        latest_offered.update({index: newest for index in range(before, len(sent))})
    before = len(sent)
    clock.advance_to(101.5)
    latest_offered.update({index: newest for index in range(before, len(sent))})
    assert conflator.held == 0 and sent[-1][1] == 1099  # the last book is never lost
    assert [update_id for _, update_id in sent] == [latest_offered[i] for i in range(len(sent))]  # latest wins
    times = [moment for moment, _ in sent]
    assert all(b - a >= 0.05 - 1e-9 for a, b in zip(times, times[1:]))  # at least half an interval apart
    assert all(b - a == pytest.approx(0.1) for a, b in zip(times[1:], times[2:]))  # then one per interval
    assert max(sum(1 for t in times if start <= t < start + 1.0) for start in times) <= 11
    assert counters.conflated == 100 - len(sent) > 80


def test_books_arriving_at_about_the_limit_are_not_held_back():
    clock = ManualTime()
    conflator, sent, counters = conflator_with_log(10.0, clock)
    jitter = [0.0, 0.02, -0.02, 0.01, -0.02, 0.02, -0.01, 0.02, -0.02, 0.0]
    for step, offset in enumerate(jitter):  # 10 per second, each up to 20 ms early or late
        clock.advance_to(100.0 + step * 0.1 + offset)
        conflator.offer(SYMBOL, book(step, clock))
        assert conflator.held == 0
    assert [u for _, u in sent] == list(range(10)) and counters.conflated == 0


def test_a_waiting_book_goes_out_at_its_slot_even_if_no_other_comes():
    clock = ManualTime()
    conflator, sent, _ = conflator_with_log(4.0, clock)  # slots every 250 ms, up to 125 ms early
    conflator.offer(SYMBOL, book(1, clock))
    clock.advance_to(100.05)
    conflator.offer(SYMBOL, book(2, clock))
    clock.advance_to(100.10)
    conflator.offer(SYMBOL, book(3, clock))
    assert sent == [(100.0, 1)] and conflator.held == 1
    clock.advance_to(101.0)
    assert sent == [(100.0, 1), (100.125, 3)] and conflator.held == 0


def test_conflation_counts_add_up_in_the_feed_at_every_step():
    clock = ManualTime()
    feed = make_feed(max_hz=10.0, symbols=(SYMBOL, "ETHUSDT"), time_source=clock)
    for step in range(100):  # BTCUSDT: a book every 10 ms; ETHUSDT: one every 300 ms
        clock.advance_to(100.0 + step * 0.010)
        feed.on_message("btcusdt@bookTicker", book_ticker(SYMBOL, 1000 + step), clock.now, time.time())
        if step % 30 == 0:
            feed.on_message("ethusdt@bookTicker", book_ticker("ETHUSDT", 50 + step), clock.now, time.time())
        assert_quote_counts_add_up(feed)
    clock.advance_to(101.5)
    records = drain(feed)
    assert [r.update_id for r in records if r.symbol == "ETHUSDT"] == [50, 80, 110, 140]  # slow: none conflated
    counts = feed.counters.counts_document(feed.conflator.held)
    assert counts["received"]["quote"] == 104 and counts["held"] == 0
    assert counts["sent"]["quote"] == len(records) and counts["conflated"] == 104 - len(records) > 80
    assert_quote_counts_add_up(feed)


# -- records --------------------------------------------------------------------------------------------------

def test_quote_and_trade_records_carry_the_feed_fields_and_merge_24h_statistics_and_coingecko():
    clock = ManualTime()
    feed = make_feed(time_source=clock)
    feed.markets["bitcoin"] = CoinMarket(coin_id="bitcoin", current_price=100.2, market_cap=1.9e12,
                                         total_volume=3.0e10, high_24h=None, low_24h=None, price_change_24h=None,
                                         price_change_percentage_24h=None,
                                         last_updated=EXCHANGE_START - timedelta(seconds=20))
    received_wall = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc).timestamp()
    feed.on_message("btcusdt@ticker", ticker_24h(SYMBOL, event_ms=1_621_425_599_000, volume=18012.3),
                    clock.now, received_wall)
    clock.advance_to(100.5)
    feed.on_message("btcusdt@bookTicker", book_ticker(SYMBOL, 400900217, bid=97017.57, ask=97017.58), clock.now,
                    received_wall)
    feed.on_message("btcusdt@aggTrade", agg_trade(SYMBOL, 26129, time_ms=1_621_425_600_000, price=97017.58,
                                                  qty=0.25, buyer_is_maker=True), clock.now, received_wall)
    tick, trade = drain(feed)
    assert isinstance(tick, Tick) and tick.schema_version == 2 and tick.feed == "websocket"
    assert (tick.update_id, tick.bid_price, tick.ask_price, tick.bid_qty, tick.ask_qty) == (
        400900217, 97017.57, 97017.58, 1.5, 2.25)
    assert tick.received_at == "2026-01-02T03:04:05.678000+00:00"
    assert tick.event_time == (EXCHANGE_START + timedelta(seconds=0.5)).isoformat()  # receive time, exchange clock
    assert (tick.volume_24h, tick.high_24h, tick.low_24h, tick.price_change_percentage_24h) == (18012.3, 101.0, 98.0, 1.5)
    assert tick.trade_timestamp == "2021-05-19T11:59:59+00:00"  # the 24 h window's close time
    assert (tick.market_cap, tick.coingecko_total_volume) == (1.9e12, 3.0e10)
    assert Tick.from_json(tick.to_json()) == tick
    assert isinstance(trade, Trade) and trade == Trade(
        symbol=SYMBOL, trade_id=26129, price=97017.58, qty=0.25, quote_qty=97017.58 * 0.25,
        trade_time="2021-05-19T12:00:00+00:00", buyer_is_maker=True, first_trade_id=52258, last_trade_id=52259,
        event_time="2021-05-19T12:00:00.001000+00:00", received_at="2026-01-02T03:04:05.678000+00:00",
        feed="websocket")


def test_malformed_payloads_and_unknown_streams_are_counted_and_skipped():
    feed = make_feed()
    now, wall = time.monotonic(), time.time()
    good_book, good_trade = book_ticker(SYMBOL, 10), agg_trade(SYMBOL, 5)
    bad = [("btcusdt@bookTicker", {**good_book, "b": 97017.57}),  # a number where Binance sends a string
           ("btcusdt@bookTicker", {k: v for k, v in good_book.items() if k != "u"}),
           ("btcusdt@bookTicker", {**good_book, "u": "10"}),
           ("btcusdt@bookTicker", {**good_book, "s": "ETHUSDT"}),  # not the stream's symbol
           ("btcusdt@aggTrade", {k: v for k, v in good_trade.items() if k != "p"}),
           ("btcusdt@aggTrade", {**good_trade, "m": "true"}),
           ("btcusdt@aggTrade", {**good_trade, "a": 5.0}),
           ("btcusdt@ticker", {**ticker_24h(SYMBOL), "E": None}),
           ("ethusdt@bookTicker", book_ticker("ETHUSDT", 1)),  # a symbol this feed does not stream
           ("btcusdt@depth", {"lastUpdateId": 1})]
    for stream, data in bad:
        feed.on_message(stream, data, now, wall)
    feed.on_malformed("not_json")
    assert dict(feed.counters.malformed) == {"bad_book_ticker": 4, "bad_agg_trade": 3, "bad_ticker": 1,
                                             "unknown_stream": 2, "not_json": 1}
    assert feed.counters.received == {} and drain(feed) == []
    feed.on_message("btcusdt@bookTicker", good_book, now, wall)
    feed.on_message("btcusdt@aggTrade", good_trade, now, wall)
    assert [type(r).__name__ for r in drain(feed)] == ["Tick", "Trade"]


def test_overlap_duplicates_are_dropped_and_counted():
    feed = make_feed()
    now, wall = time.monotonic(), time.time()
    for trade_id in (1, 2, 3, 2, 3, 4):
        feed.on_message("btcusdt@aggTrade", agg_trade(SYMBOL, trade_id), now, wall)
    feed.on_message("btcusdt@ticker", ticker_24h(SYMBOL, event_ms=1000), now, wall)
    feed.on_message("btcusdt@ticker", ticker_24h(SYMBOL, event_ms=1000), now, wall)
    assert [r.trade_id for r in drain(feed)] == [1, 2, 3, 4]
    assert feed.counters.duplicates == {"trade": 2, "ticker": 1}


# -- the bounded buffer ----------------------------------------------------------------------------------------

def test_a_full_buffer_counts_what_overflows_and_trades_that_overflowed_are_fetched_again():
    feed = make_feed(buffer_size=3)
    now, wall = time.monotonic(), time.time()
    for trade_id in range(1, 6):
        feed.on_message("btcusdt@aggTrade", agg_trade(SYMBOL, trade_id), now, wall)
    feed.on_message("btcusdt@bookTicker", book_ticker(SYMBOL, 7), now, wall)
    counts = feed.counters.counts_document(feed.conflator.held)
    assert counts["received"] == {"quote": 1, "ticker": 0, "trade": 5}
    assert counts["sent"]["trade"] == 3 and counts["overflowed"] == {"quote": 1, "trade": 2}
    assert_quote_counts_add_up(feed)
    assert feed.tracker.missing_trades == 2 and [g.kind for g in feed.tracker.gaps] == ["trade_overflow"]
    assert [r.trade_id for r in drain(feed)] == [1, 2, 3]
    rest_trades = {i: parse_agg_trade(agg_trade(SYMBOL, i), SYMBOL) for i in range(1, 6)}

    async def refill() -> None:
        for request in iter(feed.tracker.next_fill, None):
            for trade in feed.tracker.apply_fill(request, FakeBinanceRest({SYMBOL: rest_trades}).agg_trades(
                    request.symbol, request.from_id), time.time()):
                await feed.send_filled(trade)

    asyncio.run(refill())
    refilled = drain(feed)
    assert [(r.trade_id, r.feed) for r in refilled] == [(4, "rest"), (5, "rest")]
    assert refilled[0].event_time is None and feed.counters.sent["trade_rest"] == 2
    assert feed.tracker.gaps[0].filled


# -- a whole run -------------------------------------------------------------------------------------------------

def test_a_run_streams_quotes_and_trades_and_writes_its_status_document(tmp_path):
    tape = MarketTape(rate_per_s=300)

    async def script(conn: ScriptedConnection) -> None:
        await conn.send_stream("btcusdt@ticker", ticker_24h(SYMBOL))
        await tape.stream(conn, SYMBOL, until=lambda: False)

    publisher = MemoryPublisher()
    stop = threading.Event()
    outcome: list[Any] = []
    with ScriptedStreamServer(script) as server:
        settings = Settings(symbols=(SYMBOL,), binance_ws_url=server.url, state_dir=tmp_path, ws_max_quotes_hz=20.0,
                            topic="quotes-under-test")
        worker = threading.Thread(target=lambda: outcome.append(run_websocket_feed(
            settings, stop, options=FeedOptions(status_interval_s=0.2), publisher=publisher,
            binance=FakeBinanceRest(), coingecko=FakeCoinGecko())))
        worker.start()
        deadline = time.monotonic() + 10
        running = None
        while time.monotonic() < deadline and (running is None or running["counts"]["sent"]["trade"] < 200):
            time.sleep(0.1)
            running = read_feed_status(settings)
        stop.set()
        worker.join(20)
    assert running is not None and running["state"] == "running" and running["connections"]["open"] == 1
    final = read_feed_status(settings)
    assert final == outcome[0].document and final["state"] == "stopped"
    assert feed_status_path(settings) == tmp_path / "feed" / "quotes-under-test.json"
    counts = final["counts"]
    assert counts["held"] == 0 and counts["conflated"] > 0
    assert counts["received"]["quote"] == counts["sent"]["quote"] + counts["conflated"] + counts["overflowed"]["quote"]
    assert counts["received"]["trade"] == counts["sent"]["trade"] > 200
    ticks = [r for r in publisher.records if isinstance(r, Tick)]
    trades = [r for r in publisher.records if isinstance(r, Trade)]
    assert len(ticks) == counts["sent"]["quote"] and len(trades) == counts["sent"]["trade"]
    assert [t.trade_id for t in trades] == list(range(trades[0].trade_id, trades[-1].trade_id + 1))
    assert all(t.volume_24h == 1234.5 for t in ticks[1:])  # the 24 h statistics are merged in
    built = [datetime.fromisoformat(t.timestamp) for t in ticks]
    assert (built[-1] - built[0]) / (len(built) - 1) >= timedelta(seconds=1 / 20 * 0.9)  # at most 20 quotes/s
    assert final["kafka"] == {"acknowledged": len(publisher.records), "failed": 0, "resent": 0, "pending": 0}
    assert final["gaps"]["total"] == {} and final["last_message"][SYMBOL] >= running["written_at"][:19]


def test_the_status_document_is_replaced_atomically_and_read_back(tmp_path):
    settings = Settings(state_dir=tmp_path, topic="atomic-test")
    assert read_feed_status(settings) is None
    write_feed_status(settings, {"version": 1, "state": "running"})
    write_feed_status(settings, {"version": 1, "state": "stopped"})
    assert read_feed_status(settings) == {"version": 1, "state": "stopped"}
    assert [p.name for p in (tmp_path / "feed").iterdir()] == ["atomic-test.json"]  # no temporary file left
    feed_status_path(settings).write_text("{not json")
    assert read_feed_status(settings) is None


# -- against the replay exchange, into Kafka ------------------------------------------------------------------

def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record of `topic`, from the start (reads until a few seconds pass without a new record)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=3000)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = list(consumer)
            records += batch
            if records and not batch:
                break
    finally:
        consumer.close()
    return records


@pytest.mark.integration
def test_every_trade_id_the_replay_exchange_sent_reaches_kafka_exactly_once(test_settings, tmp_path):
    from btcstream.exchange import StreamFault
    from helpers.replay_exchange import expected_trade_ids, two_symbol_exchange

    symbols = ("BTCUSDT", "ETHUSDT")
    # (fault, seconds to let it play out): a silence needs the watchdog's 2 s before the next fault
    faults = [(StreamFault("trade_id_gap", skip=25), 1.5), (StreamFault("close_1006"), 1.5),
              (StreamFault("malformed", frames=4), 1.5), (StreamFault("server_shutdown", delay_s=0.5), 1.5),
              (StreamFault("silence", duration_s=5.0), 3.5), (StreamFault("abrupt_close"), 1.5),
              (StreamFault("update_id_gap", skip=7), 1.5), (StreamFault("cut_24h"), 1.5)]
    # an hour of exchange time per second: the exchange cuts connections at 6 simulated hours (6 s), the
    # producer hands over at 5 (its age limit is on the exchange's clock)
    with two_symbol_exchange(tmp_path, speed=3600.0, ws_quotes_per_second=100, ws_trades_per_second=50,
                             ws_max_connection_age_ms=6 * 3_600_000) as exchange:
        settings = exchange.settings_for(test_settings.replace(
            symbols=symbols, trades_topic=f"{test_settings.topic}-trades", state_dir=tmp_path / "state",
            ws_stale_after_s=2.0))
        options = FeedOptions(max_connection_age_s=5 * 3600.0, status_interval_s=0.5, probe_delay_s=0.5,
                              backoff_base_s=0.1, backoff_cap_s=1.0)
        stop = threading.Event()
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(run_websocket_feed(settings, stop, options=options)))
        worker.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and ((read_feed_status(settings) or {}).get("counts", {})
                                                  .get("sent", {}).get("trade", 0)) == 0:
                time.sleep(0.1)
            for fault, play_out_s in faults:
                assert exchange.inject_ws_fault(fault), fault  # it hit an open connection
                time.sleep(play_out_s)
            time.sleep(7.0)  # long enough for a planned handover before the exchange's cut
            exchange.market.clock.set_speed(1e-6)  # the market stands still: nothing new to stream
            time.sleep(3.0)  # the producer catches up (gap fills included)
        finally:
            stop.set()
            worker.join(120)
        emitted = exchange.state()["ws"]["ids"]
    document = outcome[0].document
    trades = [Trade.from_json(record.value) for record in read_topic(settings, settings.trades_topic)]
    for symbol in symbols:
        ids = sorted(t.trade_id for t in trades if t.symbol == symbol)
        expected = expected_trade_ids(ids, emitted[symbol])
        assert ids == expected, (symbol, len(ids), len(expected), sorted(set(expected) - set(ids))[:10])
    assert any(t.feed == "rest" for t in trades)  # the gaps were filled from GET /api/v3/aggTrades
    ticks = [Tick.from_json(record.value) for record in read_topic(settings, settings.topic)]
    assert len({(t.symbol, t.update_id) for t in ticks}) == len(ticks) > 100  # a quote once per update id
    assert {t.feed for t in ticks} == {"websocket"} and all(t.received_at for t in ticks)

    counts, kafka = document["counts"], document["kafka"]
    assert counts["received"]["quote"] == counts["sent"]["quote"] + counts["conflated"] + counts["overflowed"]["quote"]
    assert counts["received"]["trade"] == counts["sent"]["trade"] + counts["overflowed"]["trade"]
    assert kafka["acknowledged"] == len(trades) + len(ticks) and (kafka["failed"], kafka["pending"]) == (0, 0)
    assert sum(counts["malformed"].values()) >= 4
    reconnects = document["connections"]["reconnects"]
    assert {"abnormal_closure", "stale", "server_shutdown", "closed", "max_age"} <= set(reconnects), reconnects
    gaps = document["gaps"]
    assert gaps["missing_trade_ids"] == 0 and gaps["unfilled_trade_gaps"] == 0
    assert {"downtime", "trade_ids"} <= set(gaps["total"])
    assert all(gap["filled"] for gap in gaps["recent"] if gap["kind"] != "downtime")
    assert all(gap["duration_s"] is not None for gap in gaps["recent"] if gap["kind"] == "downtime")
    assert sum(jumps["ids_skipped"] for jumps in document["update_id_jumps"].values()) >= 7


def test_run_feed_dispatches_on_the_feed_and_refuses_polls_for_the_stream():
    from btcstream.ingest.producer import run_feed

    with pytest.raises(ValueError, match="rest feed only"):
        run_feed(Settings(), feed="websocket", max_polls=3)
    with pytest.raises(ValueError, match="feed must be one of"):
        run_feed(Settings(), feed="fix")
