"""Contract tests of the CoinGecko client: the local exchange's /coins/markets, the API key, faults."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from btcstream.errors import BadResponse, RateLimited
from btcstream.exchange import Fault
from btcstream.ingest.sources.binance import BinanceClient
from btcstream.ingest.sources.coingecko import API_KEY_HEADER, CoinGeckoClient
from btcstream.symbols import coin_id_for_symbol
from btcstream.ingest.sources.http import HostCooldowns, JsonHttpClient
from helpers.replay_exchange import two_symbol_exchange

# A real answer's shape, from the CoinGecko v3 reference (market-apis.md).
RECORDED_MARKETS = [{
    "id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "image": "https://assets.coingecko.com/coins/images/1/large/bitcoin.png",
    "current_price": 97017, "market_cap": 1923087506901, "market_cap_rank": 1, "fully_diluted_valuation": 2037298221200,
    "total_volume": 30381193367, "high_24h": 97231, "low_24h": 95410, "price_change_24h": 887.8,
    "price_change_percentage_24h": 0.92345, "market_cap_change_24h": 17543213812,
    "market_cap_change_percentage_24h": 0.92063, "circulating_supply": 19822356, "total_supply": 19822356,
    "max_supply": 21000000, "ath": 108786, "ath_change_percentage": -10.81, "ath_date": "2025-01-20T09:11:54.494Z",
    "atl": 67.81, "atl_change_percentage": 143002.6, "atl_date": "2013-07-06T00:00:00.000Z", "roi": None,
    "last_updated": "2025-02-14T10:58:30.120Z"}]
NUMBER_KEYS = ["current_price", "market_cap", "total_volume", "high_24h", "low_24h", "price_change_24h",
               "price_change_percentage_24h"]


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    server = two_symbol_exchange(tmp_path_factory.mktemp("history"), speed=60.0, coingecko_calls_per_minute=1_000_000)
    yield server
    server.stop()


@pytest.fixture
def client(exchange) -> CoinGeckoClient:
    exchange.faults.clear()
    return CoinGeckoClient(http=JsonHttpClient(exchange.coingecko_url, cooldowns=HostCooldowns(), sleep=lambda s: None))


class _Recorder(BaseHTTPRequestHandler):
    """Answers the recorded payload and remembers the request (to check the key header)."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append((self.path, dict(self.headers)))
        data = json.dumps(RECORDED_MARKETS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v3"
    server.shutdown()
    server.server_close()


def test_raw_contract_numbers_are_json_numbers(exchange):
    answer = requests.get(exchange.coingecko_url + "/coins/markets", params={"vs_currency": "usd", "ids": "bitcoin"}, timeout=5)
    assert answer.status_code == 200 and "X-MBX-USED-WEIGHT-1M" not in answer.headers
    [coin] = answer.json()
    assert set(RECORDED_MARKETS[0]) == set(coin)
    for key in NUMBER_KEYS:
        assert isinstance(coin[key], (int, float)) and not isinstance(coin[key], bool), key
    assert coin["last_updated"].endswith("Z") and len(coin["last_updated"]) == len("2025-02-14T10:58:30.120Z")


def test_markets_parse_with_coingeckos_own_timestamp(exchange, client):
    markets = client.markets(["bitcoin", "ethereum", "dogecoin"])
    assert set(markets) == {"bitcoin", "ethereum"}  # no dogecoin history on this exchange: absent, not invented
    btc = markets["bitcoin"]
    assert btc.last_updated.tzinfo == timezone.utc
    assert btc.last_updated.timestamp() * 1000 <= exchange.market.clock.now_ms()
    assert btc.market_cap == pytest.approx(btc.current_price * 18_478_000, rel=0.05)
    assert btc.low_24h <= btc.current_price <= btc.high_24h
    assert markets["ethereum"].market_cap is None  # unknown supply: null, as CoinGecko may send


def test_recorded_payload_parses_exactly_and_the_key_travels_only_in_the_header(recorder, caplog):
    caplog.set_level(logging.DEBUG)
    client = CoinGeckoClient(recorder, api_key="CG-secret-key-123")
    markets = client.markets(["bitcoin"])
    btc = markets["bitcoin"]
    assert (btc.current_price, btc.market_cap, btc.total_volume) == (97017.0, 1923087506901.0, 30381193367.0)
    assert (btc.high_24h, btc.low_24h, btc.price_change_24h, btc.price_change_percentage_24h) == (97231.0, 95410.0, 887.8, 0.92345)
    assert btc.last_updated == datetime(2025, 2, 14, 10, 58, 30, 120000, tzinfo=timezone.utc)
    path, headers = _Recorder.seen[-1]
    assert headers.get(API_KEY_HEADER) == "CG-secret-key-123"
    assert "secret" not in path and "vs_currency=usd" in path and "ids=bitcoin" in path
    assert "CG-secret-key-123" not in caplog.text and "CG-secret-key-123" not in repr(client)


def test_null_fields_become_none(exchange, client):
    exchange.inject(Fault("null_field", api="coingecko", field="market_cap"))
    assert client.markets(["bitcoin"])["bitcoin"].market_cap is None
    exchange.inject(Fault("missing_field", api="coingecko", field="last_updated"))
    assert client.markets(["bitcoin"])["bitcoin"].last_updated is None


def test_429_bans_only_the_coingecko_host(exchange, client):
    exchange.inject(Fault("429", api="coingecko", retry_after_s=30))
    with pytest.raises(RateLimited) as caught:
        client.markets(["bitcoin"])
    assert caught.value.retry_after_s == 30
    with pytest.raises(RateLimited):
        client.markets(["bitcoin"])  # refused without calling
    binance = BinanceClient(http=JsonHttpClient(exchange.binance_url, cooldowns=client.http.cooldowns))
    assert binance.server_time().tzinfo is not None  # another host: unaffected
    exchange._limits["coingecko"].limited_until = 0.0


def test_free_tier_rate_limit_is_enforced_by_the_local_server(tmp_path):
    with two_symbol_exchange(tmp_path, speed=1.0, coingecko_calls_per_minute=2) as server:
        client = CoinGeckoClient(http=JsonHttpClient(server.coingecko_url, cooldowns=HostCooldowns()))
        client.markets(["bitcoin"])
        client.markets(["bitcoin"])
        with pytest.raises(RateLimited):
            client.markets(["bitcoin"])


def test_cdn_html_page_is_a_bad_response(exchange, client):
    exchange.inject(Fault("html", api="coingecko"))
    with pytest.raises(BadResponse, match="not JSON"):
        client.markets(["bitcoin"])


def test_coin_ids_from_exchange_symbols():
    assert coin_id_for_symbol("BTCUSDT") == "bitcoin" and coin_id_for_symbol("ethusdc") == "ethereum"
    assert coin_id_for_symbol("ZZZUSDT") is None and coin_id_for_symbol("USDT") is None
