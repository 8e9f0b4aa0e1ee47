"""Fuzz tests of every parser on the ingest side: REST answers, WebSocket frames, the Kafka records.

Property: whatever arrives (random and truncated JSON, NaN/Infinity, numbers beyond a double, wrong
types, 1 MB strings, invalid UTF-8, empty input, nesting deeper than the decoder), a parser either
returns a typed record whose numbers are finite, or refuses it the documented way: None (the caller
counts a skip), `BadResponse` (a REST answer), a `malformed` count (a WebSocket frame) or
`ValueError` (`Tick.from_json`/`Trade.from_json`). Nothing else escapes, and every record that gets
through can be written to Kafka (`to_json` refuses NaN/Infinity).
"""

from __future__ import annotations

import json
import math
import queue
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from btcstream.errors import BadResponse
from btcstream.ingest.clock import ExchangeClock
from btcstream.ingest.quote_ticks import quote_tick
from btcstream.ingest.sources.binance import (AggTrade, BinanceClient, BookTicker, Kline, Ticker24h, parse_agg_trade,
                                              parse_book_ticker, parse_kline, parse_server_time, parse_ticker_24h)
from btcstream.ingest.sources.binance_ws import StreamConnection, _Link
from btcstream.ingest.sources.coingecko import CoinGeckoClient, CoinMarket, parse_coin_market
from btcstream.ingest.sources.fields import as_float, as_utc_from_iso, as_utc_from_ms
from btcstream.ingest.sources.http import JsonHttpClient
from btcstream.ingest.tick import Tick
from btcstream.ingest.trade import Trade
from btcstream.ingest.ws_feed import WebSocketFeed
from btcstream.settings import Settings
from helpers.bad_input import DEEP_NESTING, HUGE_INTEGER, INVALID_UTF8, NASTY_VALUES, ONE_MB_STRING, encode, mutated

# No example database: the tests write nothing into the working tree. No deadline: a 1 MB string
# takes longer than hypothesis's default 200 ms on a busy machine, and that is not a failure.
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SYMBOL = "BTCUSDT"
NOW = datetime(2025, 2, 14, 10, 58, 31, tzinfo=timezone.utc)

# Valid raw payloads, as the exchanges document them (docstrings of the parsers).
AGG_TRADE = {"a": 26129, "p": "16500.01", "q": "0.010", "f": 100, "l": 105, "T": 1672515782136, "m": True, "M": True}
BOOK_TICKER = {"symbol": SYMBOL, "bidPrice": "97017.57000000", "bidQty": "0.10025000",
               "askPrice": "97017.58000000", "askQty": "7.11458000"}
TICKER_24H = {"symbol": SYMBOL, "priceChange": "887.80000000", "priceChangePercent": "0.923",
              "lastPrice": "97017.57000000", "openPrice": "96129.77000000", "highPrice": "97231.00000000",
              "lowPrice": "95410.00000000", "volume": "18012.30000000", "quoteVolume": "1738221467.31000000",
              "openTime": 1739444316000, "closeTime": 1739530716000, "count": 76}
KLINE = [1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
         1499644799999, "2434.19055334", 308, "1756.87402397", "28.46694368", "0"]
COIN_MARKET = {"id": "bitcoin", "symbol": "btc", "current_price": 97017, "market_cap": 1923087506901,
               "total_volume": 30381193367, "high_24h": 97231, "low_24h": 95410, "price_change_24h": 887.8,
               "price_change_percentage_24h": 0.92345, "last_updated": "2025-02-14T10:58:30.120Z"}
WS_BOOK = {"u": 400900217, "s": SYMBOL, "b": "97017.57000000", "B": "0.10025000", "a": "97017.58000000",
           "A": "7.11458000"}
WS_TRADE = {"e": "aggTrade", "E": 1672515782136, "s": SYMBOL, **AGG_TRADE}
WS_TICKER = {"e": "24hrTicker", "E": 1739530716000, "s": SYMBOL, "p": "887.80", "P": "0.923", "c": "97017.57",
             "o": "96129.77", "h": "97231.00", "l": "95410.00", "v": "18012.3", "q": "1738221467.31",
             "O": 1739444316000, "C": 1739530716000}
WS_STREAMS = {"bookTicker": WS_BOOK, "aggTrade": WS_TRADE, "ticker": WS_TICKER}
TICK = Tick(SYMBOL, "2025-02-14T10:58:31.204000+00:00", "2025-02-14T10:58:31.251000+00:00", 97017.57, 97017.58,
            0.10025, 7.11458, volume_24h=18012.3, feed="websocket", update_id=400900217,
            received_at="2025-02-14T10:58:31.212000+00:00")
TRADE = Trade(SYMBOL, 26129, 16500.01, 0.01, 165.0001, "2023-01-01T00:23:02.136000+00:00", True, 100, 105,
              event_time="2023-01-01T00:23:02.136000+00:00", received_at="2023-01-01T00:23:02.140000+00:00")

# -- strategies ------------------------------------------------------------------------------------------

KEYS = st.sampled_from(("a", "p", "q", "s", "u", "E", "T", "symbol", "data", "stream", "id", "result", ""))
scalars = st.one_of(st.sampled_from(NASTY_VALUES), st.integers(), st.floats(), st.text(max_size=12), st.booleans())
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(KEYS | st.text(max_size=3), children, max_size=4), max_leaves=10)


def variants_of(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """`valid` with some fields replaced by anything and some removed; or any JSON value instead."""
    def build(changes: dict[str, Any], removed: set[str]) -> dict[str, Any]:
        return {key: value for key, value in {**valid, **changes}.items() if key not in removed}

    keys = st.sampled_from(sorted(valid))
    return st.one_of(st.builds(build, st.dictionaries(keys, json_values, max_size=4), st.sets(keys, max_size=3)),
                     json_values)


def list_variants(valid: list[Any]) -> st.SearchStrategy[Any]:
    """`valid` (a kline row) with some positions replaced, cut short, or any JSON value instead."""
    def build(changes: dict[int, Any], length: int) -> list[Any]:
        return [changes.get(i, value) for i, value in enumerate(valid)][:length]

    return st.one_of(st.builds(build, st.dictionaries(st.integers(0, len(valid) - 1), json_values, max_size=4),
                               st.integers(0, len(valid))), json_values)


def bodies(valid: Any) -> st.SearchStrategy[bytes]:
    """Bytes of a JSON document: `valid` mutated (`helpers.bad_input.mutated`), or random bytes."""
    return st.one_of(st.builds(mutated, st.just(valid), st.randoms(use_true_random=False)),
                     st.binary(max_size=300), st.builds(encode, json_values))


# -- checks of what a parser returns -------------------------------------------------------------------------

def finite_or_none(*numbers: float | None) -> bool:
    return all(number is None or (isinstance(number, float) and math.isfinite(number)) for number in numbers)


def aware_or_none(*moments: datetime | None) -> bool:
    return all(moment is None or moment.utcoffset() == timedelta(0) for moment in moments)


def check_agg_trade(trade: AggTrade) -> None:
    assert finite_or_none(trade.price, trade.qty) and None not in (trade.price, trade.qty)
    assert math.isfinite(trade.price * trade.qty)  # the record's quote_qty
    assert all(type(i) is int for i in (trade.trade_id, trade.first_trade_id, trade.last_trade_id))
    assert aware_or_none(trade.trade_time) and type(trade.buyer_is_maker) is bool


def check_book(book: BookTicker) -> None:
    assert isinstance(book.symbol, str) and finite_or_none(book.bid_price, book.bid_qty, book.ask_price, book.ask_qty)


def check_day(day: Ticker24h) -> None:
    assert isinstance(day.symbol, str) and aware_or_none(day.open_time, day.close_time)
    assert finite_or_none(day.price_change, day.price_change_percent, day.last_price, day.open_price, day.high_price,
                          day.low_price, day.volume, day.quote_volume)


def check_kline(kline: Kline) -> None:
    assert kline.open_time is not None and aware_or_none(kline.open_time, kline.close_time)
    assert finite_or_none(kline.open, kline.high, kline.low, kline.close, kline.volume, kline.quote_volume,
                          kline.taker_buy_volume, kline.taker_buy_quote_volume)
    assert kline.trades is None or type(kline.trades) is int


def check_market(market: CoinMarket) -> None:
    assert isinstance(market.coin_id, str) and aware_or_none(market.last_updated)
    assert finite_or_none(market.current_price, market.market_cap, market.total_volume, market.high_24h,
                          market.low_24h, market.price_change_24h, market.price_change_percentage_24h)


def assert_publishable(tick: Tick) -> None:
    """A tick built from parsed answers goes to Kafka: to_json must not raise, and reads back equal."""
    assert Tick.from_json(tick.to_json()) == tick


# -- the field coercions -----------------------------------------------------------------------------------------

@FUZZ
@given(value=json_values)
@example(value=HUGE_INTEGER).via("an integer beyond a float: float() raises OverflowError")
@example(value=1e308).via("epoch ms beyond time_t")
@example(value=-62135596800001).via("epoch ms before year 1")
@example(value="0001-01-01T00:00:00+01:00").via("before year 1 once in UTC")
@example(value="9999-12-31T23:59:59-01:00").via("after year 9999 once in UTC")
def test_field_coercions_give_a_finite_value_or_none(value: Any) -> None:
    assert finite_or_none(as_float(value))
    assert aware_or_none(as_utc_from_ms(value), as_utc_from_iso(value))


# -- REST parsers --------------------------------------------------------------------------------------------------

@FUZZ
@given(item=variants_of(AGG_TRADE))
@example(item={**AGG_TRADE, "p": "1e200", "q": "1e200"}).via("price * qty overflows: quote_qty would be Infinity")
@example(item={**AGG_TRADE, "T": HUGE_INTEGER}).via("trade time beyond any clock")
def test_agg_trade_parser_gives_a_whole_trade_or_none(item: Any) -> None:
    trade = parse_agg_trade(item, SYMBOL)
    if trade is not None:
        check_agg_trade(trade)


@FUZZ
@given(book=variants_of(BOOK_TICKER), day=variants_of(TICKER_24H), market=variants_of(COIN_MARKET))
@example(book=BOOK_TICKER, day={**TICKER_24H, "closeTime": 1e308}, market={**COIN_MARKET, "market_cap": HUGE_INTEGER})
def test_quote_parsers_give_finite_fields_and_a_publishable_tick(book: Any, day: Any, market: Any) -> None:
    parsed_book, parsed_day, parsed_market = parse_book_ticker(book), parse_ticker_24h(day), parse_coin_market(market)
    for parsed, check in ((parsed_book, check_book), (parsed_day, check_day), (parsed_market, check_market)):
        if parsed is not None:
            check(parsed)
    if parsed_book is not None:
        assert_publishable(quote_tick(SYMBOL, NOW, parsed_book, parsed_day, parsed_market, feed="rest"))


@FUZZ
@given(row=list_variants(KLINE))
@example(row=[1e308, *KLINE[1:]]).via("open time beyond time_t: no bar")
@example(row=[*KLINE[:8], HUGE_INTEGER]).via("trade count beyond a float")
def test_kline_parser_gives_a_bar_or_none(row: Any) -> None:
    kline = parse_kline(row)
    if kline is not None:
        check_kline(kline)


@FUZZ
@given(payload=variants_of({"serverTime": 1499827319559}))
@example(payload={"serverTime": 1e308})
def test_server_time_is_a_utc_time_or_bad_response(payload: Any) -> None:
    try:
        moment = parse_server_time(payload)
    except BadResponse:
        return
    assert aware_or_none(moment) and moment is not None


class FakeSession:
    """A `requests.Session` stand-in whose every GET answers HTTP 200 with `body`."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers: dict[str, str] = {}

    def get(self, url: str, params: Any = None, timeout: Any = None) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = self.body
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        response.url = url
        return response

    def close(self) -> None:
        pass


def http_answering(body: bytes) -> JsonHttpClient:
    client = JsonHttpClient("https://api.example.test", max_attempts=1, sleep=lambda seconds: None)
    client._session = FakeSession(body)  # type: ignore[assignment]
    return client


def rest_calls(body: bytes) -> list[tuple[Callable[[], Any], Callable[[Any], None]]]:
    """(call, check of its result) for every client method, each client answering `body`."""
    binance = BinanceClient(http=http_answering(body))
    coingecko = CoinGeckoClient(http=http_answering(body))

    def each(check: Callable[[Any], None]) -> Callable[[Any], None]:
        return lambda result: [check(item) for item in (result.values() if isinstance(result, dict) else result)]

    return [
        (binance.server_time, lambda moment: None if aware_or_none(moment) else pytest.fail(f"{moment!r}")),
        (lambda: binance.book_tickers([SYMBOL]), each(check_book)),
        (lambda: binance.tickers_24h([SYMBOL]), each(check_day)),
        (lambda: binance.ticker_24h(SYMBOL), check_day),
        (lambda: binance.kline_page(SYMBOL, "1m").klines, each(check_kline)),
        (lambda: binance.agg_trades(SYMBOL, 0), each(check_agg_trade)),
        (lambda: coingecko.markets(["bitcoin"]), each(check_market)),
    ]


@FUZZ
@given(body=st.one_of(bodies([BOOK_TICKER]), bodies([TICKER_24H]), bodies([KLINE, KLINE]), bodies([AGG_TRADE]),
                      bodies([COIN_MARKET]), bodies({"serverTime": 1499827319559})))
@example(body=DEEP_NESTING).via("deeper than the decoder: RecursionError, not a ValueError")
@example(body=b"1" * 5000).via("an integer of more digits than int() allows")
@example(body=b"[" + encode(BOOK_TICKER) + b"\xff]").via("invalid UTF-8")
@example(body=encode([{**BOOK_TICKER, "bidPrice": ONE_MB_STRING}]))
def test_rest_clients_return_records_or_raise_bad_response(body: bytes) -> None:
    for call, check in rest_calls(body):
        try:
            result = call()
        except BadResponse:
            continue
        check(result)


# -- WebSocket frames --------------------------------------------------------------------------------------------------

class CountingSink:
    """Passes every message to the feed and counts what the connection reported per frame."""

    def __init__(self, feed: WebSocketFeed) -> None:
        self.feed = feed
        self.calls: Counter[str] = Counter()

    def on_message(self, stream: str, data: dict[str, Any], received_monotonic: float, received_wall: float) -> None:
        self.calls["message"] += 1
        before = feed_total(self.feed)
        self.feed.on_message(stream, data, received_monotonic, received_wall)
        assert feed_total(self.feed) == before + 1, "the feed must count every message exactly once"

    def on_malformed(self, reason: str) -> None:
        self.calls["malformed"] += 1
        self.feed.on_malformed(reason)


def feed_total(feed: WebSocketFeed) -> int:
    """Messages the feed accounted for: received, duplicates, malformed (unknown streams included)."""
    counters = feed.counters
    return sum(counters.received.values()) + sum(counters.duplicates.values()) + sum(counters.malformed.values())


def make_feed() -> WebSocketFeed:
    local = [100.0]
    clock = ExchangeClock(lambda: NOW + timedelta(seconds=local[0] - 100.0), monotonic=lambda: local[0],
                          sleep=lambda seconds: None)
    clock.sync()
    return WebSocketFeed(Settings(symbols=(SYMBOL,)), clock, queue.Queue(maxsize=1000),
                         schedule=lambda delay, callback: None, monotonic=lambda: local[0])


def is_control_message(frame: bytes) -> bool:
    """A subscribe answer or a serverShutdown: handled by the connection, neither a message nor malformed."""
    try:
        payload = json.loads(frame)
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict):
        return False
    data = payload.get("data")
    if payload.get("e") == "serverShutdown" or (isinstance(data, dict) and data.get("e") == "serverShutdown"):
        return True
    return not (isinstance(payload.get("stream"), str) and isinstance(data, dict)) and "result" in payload \
        and "id" in payload


def frames() -> st.SearchStrategy[bytes]:
    """Combined-stream frames: a valid payload with bad fields, a mutated envelope, or random bytes."""
    kinds = st.sampled_from(sorted(WS_STREAMS))
    payload_variants = kinds.flatmap(
        lambda kind: st.builds(lambda data, kind=kind: encode({"stream": f"btcusdt@{kind}", "data": data}),
                               variants_of(WS_STREAMS[kind])))
    envelopes = kinds.flatmap(lambda kind: bodies({"stream": f"btcusdt@{kind}", "data": WS_STREAMS[kind]}))
    text_frames = st.builds(lambda data: data.decode("utf-8", "replace"), st.binary(max_size=200))
    return st.one_of(payload_variants, envelopes, text_frames.map(str.encode))


@FUZZ
@given(frame_list=st.lists(frames(), min_size=1, max_size=8), as_text=st.booleans())
@example(frame_list=[DEEP_NESTING], as_text=False).via("RecursionError from json.loads")
@example(frame_list=[encode({"stream": "btcusdt@aggTrade", "data": {**WS_TRADE, "p": "1e200", "q": "1e200"}})],
         as_text=True).via("quote_qty overflow: to_json would raise in the Kafka sender")
@example(frame_list=[encode({"stream": "btcusdt@bookTicker", "data": {**WS_BOOK, "b": "NaN"}}),
                     encode({"stream": "btcusdt@ticker", "data": {**WS_TICKER, "C": 1e308, "v": "Infinity"}}),
                     encode({"stream": "btcusdt@bookTicker", "data": {**WS_BOOK, "u": 400900218}})], as_text=False)
@example(frame_list=[b'{"stream":"btcusdt@bookTicker","data":' + encode(WS_BOOK)[:-1] + INVALID_UTF8[0] + b"}"],
         as_text=False)
def test_websocket_frames_become_one_message_or_one_malformed_count(frame_list: list[bytes], as_text: bool) -> None:
    feed = make_feed()
    sink = CountingSink(feed)
    connection = StreamConnection("wss://stream.example.test/stream?streams=btcusdt@bookTicker", sink)  # type: ignore[arg-type]
    link = _Link(SimpleNamespace(last_ping_at=0.0), number=1, opened_at=0.0)  # type: ignore[arg-type]
    connection._primary = link
    for frame in frame_list:
        before = sum(sink.calls.values())
        # websockets hands a text frame over as str (it was valid UTF-8), a binary frame as bytes.
        connection._on_frame(link, frame.decode("utf-8", "replace") if as_text else frame, time.monotonic(), time.time())
        assert sum(sink.calls.values()) - before == (0 if is_control_message(frame) else 1)
    feed.conflator.flush_all()
    while not feed.buffer.empty():  # every record that got through can be written to Kafka and read back
        record = feed.buffer.get_nowait()
        assert type(record).from_json(record.to_json()) == record
        numbers = [value for value in record.__dict__.values() if isinstance(value, float)]
        assert finite_or_none(*numbers)


# -- the Kafka records, read back ---------------------------------------------------------------------------------------

@FUZZ
@given(value=st.one_of(bodies(json.loads(TICK.to_json())), bodies(json.loads(TRADE.to_json())),
                       variants_of(json.loads(TICK.to_json())).map(encode),
                       variants_of(json.loads(TRADE.to_json())).map(encode)),
       as_text=st.booleans())
@example(value=TICK.to_json().replace(b"97017.57", b"NaN"), as_text=False)
@example(value=TRADE.to_json().replace(b"16500.01", b"1" + b"0" * 400), as_text=False)
@example(value=TICK.to_json()[:-1] + b"\xff}", as_text=False)
@example(value=DEEP_NESTING, as_text=True)
@example(value=b"", as_text=False)
def test_tick_and_trade_from_json_give_a_record_or_value_error(value: bytes, as_text: bool) -> None:
    source: bytes | str = value.decode("utf-8", "replace") if as_text else value
    for record_type in (Tick, Trade):
        try:
            record = record_type.from_json(source)
        except ValueError:
            continue
        assert record_type.from_json(record.to_json()) == record  # no NaN, no wrong type: it writes back


def test_a_record_written_by_to_json_reads_back_equal() -> None:
    assert Tick.from_json(TICK.to_json()) == TICK and Trade.from_json(TRADE.to_json()) == TRADE


@pytest.mark.parametrize("value, problem", [
    (b'{"symbol": 5}', "field symbol is int .*, expected str"),
    (TICK.to_json().replace(b'"bid_price":97017.57', b'"bid_price":"97017.57"'), "field bid_price is str .*, expected float"),
    (TICK.to_json().replace(b'"bid_price":97017.57', b'"bid_price":Infinity'), "Infinity is not a number"),
    (TICK.to_json().replace(b'"update_id":400900217', b'"update_id":true'), "field update_id is bool .*, expected int"),
    (TRADE.to_json().replace(b'"buyer_is_maker":true', b'"buyer_is_maker":1'), "field buyer_is_maker is int .*, expected bool"),
    (TRADE.to_json().replace(b'"price":16500.01', b'"price":1' + b"0" * 400), "field price is beyond a float"),
    (TRADE.to_json().replace(b'"trade_id":26129,', b""), "field trade_id is missing"),
    (b"[1]", "expected a JSON object"),
])
def test_from_json_names_what_is_wrong(value: bytes, problem: str) -> None:
    record_type = Trade if b"trade_id" in value or b"buyer_is_maker" in value else Tick
    with pytest.raises(ValueError, match=problem):
        record_type.from_json(value)


def test_the_bad_input_covers_every_kind_the_contract_names() -> None:
    """NaN/Infinity, huge numbers, wrong types, 1 MB strings, invalid UTF-8, empty and nested input."""
    rng = random.Random(3)
    samples = [mutated(AGG_TRADE, rng) for _ in range(500)]
    assert any(b"NaN" in s for s in samples) and any(b"Infinity" in s for s in samples)
    assert any(b"1" + b"0" * 400 in s for s in samples) and any(len(s) > 1 << 20 for s in samples)
    assert any(b"" == s for s in samples) and any(s.startswith(b"[[[[[") for s in samples)
    invalid = 0
    for s in samples:
        try:
            s.decode()
        except UnicodeDecodeError:
            invalid += 1
    assert invalid > 0
