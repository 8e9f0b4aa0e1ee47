"""The local exchange: history loading, synthetic paths true to the real bars, clock, windows, control, process."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from btcstream.exchange import build_market, spawn_exchange
from btcstream.errors import HistoryError
from btcstream.exchange.history import default_history_path, load_history
from btcstream.exchange.market import DAY_MS, ReplayMarket, SimulatedClock
from helpers.replay_exchange import two_symbol_exchange, write_eth_history


@pytest.fixture(scope="module")
def btc():
    return load_history(default_history_path(), "BTCUSDT")


@pytest.fixture(scope="module")
def market(btc):
    return ReplayMarket({"BTCUSDT": btc}, SimulatedClock(btc.start_ms + DAY_MS, speed=1.0))


def test_shipped_history_is_the_real_btcusdt_hourly_file(btc):
    assert len(btc) == 15_631 and btc.bar_ms == 3_600_000 and btc.tick_size == pytest.approx(0.01)
    assert btc.start_ms == 1_598_918_400_000  # 2020-09-01T00:00Z
    assert (np.diff(btc.open_ms) > btc.bar_ms).sum() == 9  # the 9 real outages


def test_binance_dump_without_header_and_microsecond_times_loads(tmp_path, btc):
    dump = tmp_path / "BTCUSDT-1h-2025-01.csv"
    dump.write_text("1735689600000000,93576.00,94509.42,93489.03,94401.14,755.99,1735693199999999,71020395.7,112808,402.8,37843013.5,0\n"
                    "1735693200000000,94401.13,94536.11,94184.69,94290.00,409.34,1735696799999999,38627087.2,86431,196.6,18555364.6,0\n")
    history = load_history(dump, "BTCUSDT")
    assert list(history.open_ms) == [1_735_689_600_000, 1_735_693_200_000] and history.close[1] == 94290.0


def test_inconsistent_bars_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("open_time,open,high,low,close,volume,close_time,quote_volume,count\n"
                   "1598918400000,100,99,98,99,1,1598921999999,100,3\n")
    with pytest.raises(HistoryError, match="low <= open/close <= high"):
        load_history(bad, "BTCUSDT")


def test_paths_pass_through_open_and_close_and_stay_within_high_and_low(market, btc):
    for index in range(0, len(btc), 397):
        path = market._path("BTCUSDT", index).price
        assert path[0] == btc.open[index] and path[-1] == btc.close[index]
        assert path.max() == btc.high[index] and path.min() == btc.low[index]
        for second in range(0, 3600, 61):
            quote = market.quote("BTCUSDT", int(btc.open_ms[index]) + second * 1000)
            assert btc.low[index] <= quote.bid_price < quote.ask_price <= btc.high[index]
            assert quote.bid_qty > 0 and quote.ask_qty > 0


def test_the_same_instant_always_shows_the_same_book(btc):
    first = ReplayMarket({"BTCUSDT": btc}, SimulatedClock(btc.start_ms))
    second = ReplayMarket({"BTCUSDT": btc}, SimulatedClock(btc.start_ms))
    moment = btc.start_ms + 5 * DAY_MS + 1234
    assert first.quote("BTCUSDT", moment) == second.quote("BTCUSDT", moment)


def test_24h_window_on_hour_boundaries_equals_the_real_bars(market, btc):
    end = int(btc.open_ms[100])
    stats = market.window("BTCUSDT", end - DAY_MS, end)
    bars = slice(76, 100)
    assert stats.open == btc.open[76] and stats.close == btc.close[99]
    assert stats.high == btc.high[bars].max() and stats.low == btc.low[bars].min()
    assert stats.volume == pytest.approx(btc.volume[bars].sum()) and stats.trades == btc.trades[bars].sum()


def test_gaps_hold_the_last_price(market, btc):
    gap = int(np.argmax(np.diff(btc.open_ms) > btc.bar_ms))
    inside = int(btc.open_ms[gap]) + btc.bar_ms + 60_000
    assert market.price_at("BTCUSDT", inside) == btc.close[gap]


def test_simulated_clock_speed_and_continuity():
    clock = SimulatedClock(1_000_000, speed=3600)
    time.sleep(0.1)
    elapsed = clock.now_ms() - 1_000_000
    assert 300_000 <= elapsed <= 500_000  # ~0.1 s * 3600
    before = clock.now_ms()
    clock.set_speed(1.0)
    after = clock.now_ms()
    assert 0 <= after - before < 20_000
    assert clock.wall_seconds(3_600_000) == 3600.0


def test_several_symbols_and_no_future_klines(tmp_path):
    with two_symbol_exchange(tmp_path, speed=3600.0) as server:
        now = server.market.clock.now_ms()
        books = requests.get(server.binance_url + "/api/v3/ticker/bookTicker", timeout=5).json()
        assert [b["symbol"] for b in books] == ["BTCUSDT", "ETHUSDT"]
        assert float(books[1]["bidPrice"]) < float(books[0]["bidPrice"]) / 10
        rows = requests.get(server.binance_url + "/api/v3/klines",
                            params={"symbol": "ETHUSDT", "interval": "1h", "startTime": now - 3 * 3_600_000,
                                    "endTime": now + 10 * 3_600_000}, timeout=5).json()
        assert 3 <= len(rows) <= 4 and rows[-1][0] <= server.market.clock.now_ms()
        bad = requests.get(server.binance_url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "7m"}, timeout=5)
        assert bad.status_code == 400 and bad.json()["code"] == -1120


def test_control_endpoints_inject_faults_and_change_speed(tmp_path):
    with two_symbol_exchange(tmp_path, speed=1.0) as server:
        control = server.binance_url + "/_control"
        assert requests.post(control + "/faults", json={"kind": "500", "api": "binance", "count": 1}, timeout=5).ok
        assert requests.get(server.binance_url + "/api/v3/time", timeout=5).status_code == 500
        assert requests.get(server.binance_url + "/api/v3/time", timeout=5).status_code == 200
        assert requests.post(control + "/faults", json={"kind": "nonsense"}, timeout=5).status_code == 400
        state = requests.post(control + "/clock", json={"speed": 600}, timeout=5).json()
        assert state["speed"] == 600 and state["requests"]["binance /api/v3/time"] == 2


def test_exchange_runs_as_a_child_process(tmp_path):
    eth = write_eth_history(tmp_path)
    with spawn_exchange({"BTCUSDT": default_history_path(), "ETHUSDT": eth}, speed=3600) as child:
        first = requests.get(child.binance_url + "/api/v3/time", timeout=5).json()["serverTime"]
        time.sleep(0.2)
        second = requests.get(child.binance_url + "/api/v3/time", timeout=5).json()["serverTime"]
        assert 300_000 <= second - first <= 2_000_000  # about 0.2 s * 3600
        coins = requests.get(child.coingecko_url + "/coins/markets", params={"vs_currency": "usd", "ids": "bitcoin,ethereum"},
                             timeout=5).json()
        assert {c["id"] for c in coins} == {"bitcoin", "ethereum"}
    assert child.process.returncode == 0


def test_build_market_refuses_a_naive_start():
    from datetime import datetime

    with pytest.raises(Exception, match="time zone"):
        build_market(start=datetime(2021, 1, 1))
