"""Contract tests of the Binance client against the local exchange: exact fields, types, and every fault."""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta, timezone
from urllib.parse import quote

import pytest
import requests

from btcstream.errors import AccessDenied, BadResponse, RateLimited, SourceUnavailable
from btcstream.exchange import Fault
from btcstream.ingest.sources.binance import BinanceClient
from btcstream.ingest.sources.http import BACKOFF_CAP_S, HostCooldowns, JsonHttpClient, backoff_delay, parse_retry_after
from helpers.replay_exchange import two_symbol_exchange

BOOK_KEYS = ["symbol", "bidPrice", "bidQty", "askPrice", "askQty"]
TICKER_KEYS = ["symbol", "priceChange", "priceChangePercent", "weightedAvgPrice", "prevClosePrice", "lastPrice",
               "lastQty", "bidPrice", "bidQty", "askPrice", "askQty", "openPrice", "highPrice", "lowPrice", "volume",
               "quoteVolume", "openTime", "closeTime", "firstId", "lastId", "count"]
INT_KEYS = {"openTime", "closeTime", "firstId", "lastId", "count"}


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    server = two_symbol_exchange(tmp_path_factory.mktemp("history"), speed=60.0, weight_limit=1_000_000)
    yield server
    server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(exchange, sleeps) -> BinanceClient:
    exchange.faults.clear()
    http = JsonHttpClient(exchange.binance_url, read_timeout_s=0.5, cooldowns=HostCooldowns(), sleep=sleeps.append,
                          jitter=random.Random(7))
    return BinanceClient(http=http)


def raw(exchange, path: str) -> requests.Response:
    return requests.get(exchange.binance_url + path, timeout=5)


def test_server_time_is_the_exchange_clock_in_aware_utc(exchange, client):
    moment = client.server_time()
    assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
    assert abs(moment.timestamp() * 1000 - exchange.market.clock.now_ms()) < 60_000 * 2  # 2 s of wall time at speed 60


def test_book_ticker_raw_contract_is_strings_with_eight_decimals(exchange):
    symbols = quote(json.dumps(["BTCUSDT", "ETHUSDT"], separators=(",", ":")))
    answer = raw(exchange, f"/api/v3/ticker/bookTicker?symbols={symbols}")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert [item["symbol"] for item in body] == ["BTCUSDT", "ETHUSDT"]
    for item in body:
        assert list(item) == BOOK_KEYS
        for key in BOOK_KEYS[1:]:
            assert isinstance(item[key], str) and len(item[key].split(".")[1]) == 8
    single = raw(exchange, "/api/v3/ticker/bookTicker?symbol=BTCUSDT").json()
    assert isinstance(single, dict) and single["symbol"] == "BTCUSDT"


def test_book_tickers_parse_to_floats_inside_the_real_bar(exchange, client):
    books = client.book_tickers(["BTCUSDT", "ETHUSDT"])
    assert set(books) == {"BTCUSDT", "ETHUSDT"}
    for symbol, book in books.items():
        assert all(isinstance(v, float) for v in (book.bid_price, book.ask_price, book.bid_qty, book.ask_qty))
        assert book.bid_price < book.ask_price and book.bid_qty > 0 and book.ask_qty > 0
        history = exchange.market.history(symbol)
        index = int(history.open_ms.searchsorted(exchange.market.clock.now_ms(), side="right")) - 1
        lows, highs = history.low[index - 1:index + 1], history.high[index - 1:index + 1]
        assert lows.min() <= book.bid_price and book.ask_price <= highs.max()


def test_ticker_24h_raw_contract_and_parsed_values(exchange, client):
    answer = raw(exchange, "/api/v3/ticker/24hr?symbol=BTCUSDT")
    body = answer.json()
    assert list(body) == TICKER_KEYS
    for key, value in body.items():
        expected = int if key in INT_KEYS else str
        assert isinstance(value, expected), key
    assert body["closeTime"] - body["openTime"] == 86_400_000
    change = float(body["lastPrice"]) - float(body["openPrice"])
    assert float(body["priceChange"]) == pytest.approx(change, abs=1e-6)
    assert float(body["priceChangePercent"]) == pytest.approx(change / float(body["openPrice"]) * 100, abs=0.0006)
    assert body["lastId"] - body["firstId"] + 1 == body["count"]
    ticker = client.ticker_24h("BTCUSDT")
    assert ticker.symbol == "BTCUSDT" and ticker.close_time.tzinfo == timezone.utc
    assert ticker.low_price <= ticker.last_price <= ticker.high_price and ticker.volume > 0 and ticker.quote_volume > 0
    mini = raw(exchange, "/api/v3/ticker/24hr?symbol=BTCUSDT&type=MINI").json()
    assert "priceChange" not in mini and "lastPrice" in mini


def test_24h_tickers_of_several_symbols_in_one_request(exchange, client):
    calls = exchange.requests["binance /api/v3/ticker/24hr"]
    tickers = client.tickers_24h(["BTCUSDT", "ETHUSDT"])
    assert set(tickers) == {"BTCUSDT", "ETHUSDT"} and exchange.requests["binance /api/v3/ticker/24hr"] == calls + 1
    assert tickers["ETHUSDT"].last_price < tickers["BTCUSDT"].last_price / 10


def test_hourly_klines_are_the_real_bars_and_never_from_the_future(exchange, client):
    history = exchange.market.history("BTCUSDT")
    start = history.open_ms[0]
    body = raw(exchange, f"/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={start}&limit=3").json()
    assert len(body) == 3
    for row, index in zip(body, range(3)):
        assert len(row) == 12 and isinstance(row[0], int) and isinstance(row[6], int) and isinstance(row[8], int)
        assert all(isinstance(row[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
        assert row[0] == history.open_ms[index] and row[6] == row[0] + 3_600_000 - 1
        assert [float(v) for v in row[1:5]] == [history.open[index], history.high[index], history.low[index], history.close[index]]
        assert row[8] == history.trades[index]
    latest = client.klines("BTCUSDT", "1h", limit=5)
    now = exchange.market.clock.now_ms()
    assert len(latest) == 5 and latest[-1].open_time.timestamp() * 1000 <= now
    assert [k.open_time for k in latest] == sorted(k.open_time for k in latest)


def test_minute_klines_add_up_to_the_hour(exchange, client):
    history = exchange.market.history("BTCUSDT")
    hour = history.open_ms[5]
    from btcstream.ingest.tick import utc_from_ms
    minutes = client.klines("BTCUSDT", "1m", start=utc_from_ms(hour), end=utc_from_ms(hour + 3_599_999), limit=60)
    assert len(minutes) == 60
    assert minutes[0].open == history.open[5]
    assert max(k.high for k in minutes) == history.high[5] and min(k.low for k in minutes) == history.low[5]
    assert sum(k.volume for k in minutes) == pytest.approx(history.volume[5], rel=1e-9)


def test_used_weight_header_counts_request_weight(exchange):
    first = int(raw(exchange, "/api/v3/time").headers["X-MBX-USED-WEIGHT-1M"])
    after_book = int(raw(exchange, "/api/v3/ticker/bookTicker").headers["X-MBX-USED-WEIGHT-1M"])
    # weights: time 1, bookTicker for all symbols 4 (unless the simulated minute rolled over in between)
    assert after_book == first + 4 or after_book == 4


def test_invalid_symbol_is_a_bad_response_with_binance_code(exchange, client):
    answer = raw(exchange, "/api/v3/ticker/24hr?symbol=NOPEUSDT")
    assert answer.status_code == 400 and answer.json() == {"code": -1121, "msg": "Invalid symbol."}
    with pytest.raises(BadResponse, match="-1121"):
        client.ticker_24h("NOPEUSDT")


def test_429_is_honoured_exactly_and_the_host_is_not_called_sooner(exchange, client):
    exchange.inject(Fault("429", api="binance", retry_after_s=1))
    before_ban = exchange.calls_during_ban
    with pytest.raises(RateLimited) as caught:
        client.server_time()
    assert caught.value.status == 429 and caught.value.retry_after_s == 1
    calls = sum(exchange.requests.values())
    with pytest.raises(RateLimited):
        client.book_tickers(["BTCUSDT"])  # refused locally: any path, same host
    assert sum(exchange.requests.values()) == calls
    time.sleep(1.05)
    assert client.server_time().tzinfo is not None
    assert exchange.calls_during_ban == before_ban


def test_ignoring_a_429_gets_a_418_ban_from_the_server(exchange):
    exchange.inject(Fault("429", api="binance", retry_after_s=5))
    assert raw(exchange, "/api/v3/time").status_code == 429
    banned = raw(exchange, "/api/v3/time")
    assert banned.status_code == 418 and int(banned.headers["Retry-After"]) >= 100
    assert "banned" in banned.json()["msg"]
    exchange._limits["binance"].limited_until = exchange._limits["binance"].banned_until = 0.0  # lift the ban


def test_418_is_a_rate_limit_with_its_retry_after(exchange, client):
    exchange.inject(Fault("418", api="binance", retry_after_s=1))
    with pytest.raises(RateLimited) as caught:
        client.server_time()
    assert caught.value.status == 418 and "banned" in str(caught.value)
    time.sleep(1.05)
    client.server_time()


def test_server_errors_are_retried_with_capped_jittered_backoff(exchange, client, sleeps):
    exchange.inject(Fault("500", api="binance", count=2))
    assert client.book_tickers(["BTCUSDT"])["BTCUSDT"].bid_price > 0
    assert len(sleeps) == 2 and 0.125 <= sleeps[0] <= 0.25 and 0.25 <= sleeps[1] <= 0.5


def test_persistent_server_errors_end_in_source_unavailable(exchange, client, sleeps):
    exchange.inject(Fault("503", api="binance", count=None))
    with pytest.raises(SourceUnavailable, match="503"):
        client.server_time()
    assert len(sleeps) == 3  # MAX_ATTEMPTS - 1 retries
    exchange.faults.clear()


def test_timeouts_are_retried(exchange, client, sleeps):
    exchange.inject(Fault("timeout", api="binance", delay_s=2.0))
    assert client.server_time().tzinfo is not None
    assert len(sleeps) == 1


def test_html_body_is_a_bad_response_not_a_crash(exchange, client):
    exchange.inject(Fault("html", api="binance"))
    with pytest.raises(BadResponse, match="not JSON"):
        client.book_tickers(["BTCUSDT"])


@pytest.mark.parametrize(("status", "cause"), [("451", "restricted location"), ("403", "firewall")])
def test_access_denied_names_the_cause(exchange, client, status, cause):
    exchange.inject(Fault(status, api="binance"))
    with pytest.raises(AccessDenied, match=cause) as caught:
        client.server_time()
    assert caught.value.status == int(status)


def test_null_or_missing_field_becomes_none_never_a_made_up_value(exchange, client):
    exchange.inject(Fault("null_field", api="binance", field="bidPrice"))
    book = client.book_tickers(["BTCUSDT"])["BTCUSDT"]
    assert book.bid_price is None and book.ask_price is not None
    exchange.inject(Fault("missing_field", api="binance", field="askQty"))
    assert client.book_tickers(["BTCUSDT"])["BTCUSDT"].ask_qty is None


def test_request_weight_limit_gives_429_with_retry_after(tmp_path):
    with two_symbol_exchange(tmp_path, speed=1.0, weight_limit=8) as server:
        http = JsonHttpClient(server.binance_url, cooldowns=HostCooldowns())
        binance = BinanceClient(http=http)
        binance.book_tickers(["BTCUSDT"])
        binance.book_tickers(["BTCUSDT"])
        with pytest.raises(RateLimited) as caught:
            binance.book_tickers(["BTCUSDT"])
        assert 1 <= caught.value.retry_after_s <= 60 and binance.used_weight_1m == 8


def test_backoff_is_capped_and_retry_after_accepts_http_dates():
    rng = random.Random(1)
    assert all(BACKOFF_CAP_S / 2 <= backoff_delay(n, rng) <= BACKOFF_CAP_S for n in range(6, 12))
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == pytest.approx(60.0)
