"""The whole WebSocket path into the Delta tables: the replay exchange's streams -> the producer's
WebSocket feed -> Kafka (quotes and trades topics) -> the streaming job -> raw_data, trades,
hourly_metrics, with the exchange closing, silencing and gapping connections at random (seeded).

Asserts what a user relies on: every aggregate trade id the exchange sent in the run is in the
trades table exactly once (gaps filled from REST), each quote is stored once per update id, and the
hourly rows' trade columns equal a recomputation from the trades table.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from btcstream.settings import Settings
from helpers.stream_job import StreamJob, read_table

pytestmark = pytest.mark.integration

RUN_S = 120.0  # two minutes of streaming under faults
FAULT_EVERY_S = (3.0, 6.0)  # a fault at a random moment in this range after the previous one


def random_faults(rng: random.Random):
    """The faults a live connection meets, one at a time (a silence outlasts the feed's watchdog)."""
    from btcstream.exchange import StreamFault

    return rng.choice([
        StreamFault("close_1006"), StreamFault("abrupt_close"), StreamFault("trade_id_gap", skip=rng.randint(5, 40)),
        StreamFault("malformed", frames=3), StreamFault("server_shutdown", delay_s=0.5),
        StreamFault("silence", duration_s=4.0), StreamFault("update_id_gap", skip=5),
    ])


def test_random_closes_lose_no_trade_and_store_each_once(test_settings: Settings, tmp_path: Path) -> None:
    from btcstream.ingest.ws_feed import FeedOptions, run_websocket_feed
    from helpers.replay_exchange import expected_trade_ids, two_symbol_exchange

    rng = random.Random(12)
    symbols = ("BTCUSDT", "ETHUSDT")
    settings = test_settings.replace(spark_master="local[2]", trigger_interval_s=1.0, symbols=symbols,
                                     state_dir=tmp_path / "state", ws_stale_after_s=2.0)
    job = StreamJob(settings, tmp_path / "stream.log")
    job.start()
    with two_symbol_exchange(tmp_path, speed=60.0, ws_quotes_per_second=20, ws_trades_per_second=10) as exchange:
        feed_settings = exchange.settings_for(settings)
        options = FeedOptions(status_interval_s=0.5, probe_delay_s=0.5, backoff_base_s=0.1, backoff_cap_s=1.0)
        stop = threading.Event()
        outcome: list[Any] = []
        producer = threading.Thread(target=lambda: outcome.append(run_websocket_feed(feed_settings, stop,
                                                                                     options=options)))
        producer.start()
        injected = []
        try:
            deadline = time.monotonic() + RUN_S
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(*FAULT_EVERY_S))
                fault = random_faults(rng)
                if exchange.inject_ws_fault(fault):
                    injected.append(fault.kind)
            exchange.market.clock.set_speed(1e-6)  # the market stands still: nothing new to stream
            time.sleep(3.0)  # the producer fills what it missed
        finally:
            stop.set()
            producer.join(120)
        emitted = exchange.state()["ws"]["ids"]
    document = outcome[0].document
    assert len(injected) >= 16 and document["gaps"]["missing_trade_ids"] == 0

    wanted = {symbol: emitted[symbol]["last_trade_id"] - emitted[symbol]["first_trade_id"] + 1 for symbol in symbols}
    sent_quotes = document["counts"]["sent"]["quote"]

    def stored() -> bool:
        """Every trade and quote in its table, and the batch that stored them has upserted its hours."""
        trades, raw = read_table(settings, "trades"), read_table(settings, "raw_data")
        hourly = read_table(settings, "hourly_metrics")
        return (len(trades) >= sum(wanted.values()) and len(raw) >= sent_quotes
                and not hourly.empty and int(hourly.trade_count.sum()) == len(trades))

    try:
        job.wait_until(stored, "the job to store every trade and quote", timeout=240)
        time.sleep(3.0)  # one more trigger: nothing more may arrive
        trades, raw, hourly = (read_table(settings, name) for name in ("trades", "raw_data", "hourly_metrics"))
    finally:
        job.stop()

    for symbol in symbols:
        ids = sorted(trades.loc[trades.symbol == symbol, "trade_id"])
        assert ids == expected_trade_ids(ids, emitted[symbol]), symbol
    assert (trades.feed == "rest").any()  # some came from GET /api/v3/aggTrades, filling gaps
    assert len(raw) == sent_quotes and not raw.duplicated(["symbol", "update_id"]).any()
    assert (raw.feed == "websocket").all()

    # The hourly trade columns equal a recomputation from the trades table.
    trades["window_start"] = trades.trade_time.dt.floor("h")
    trades["notional"] = trades.price * trades.qty
    want = trades.groupby(["symbol", "window_start"]).agg(trade_count=("trade_id", "size"), qty=("qty", "sum"),
                                                          notional=("notional", "sum"))
    got = hourly.assign(window_start=hourly.window_start.dt.tz_convert("UTC")
                        if hourly.window_start.dt.tz else hourly.window_start.dt.tz_localize("UTC"))
    got = got.set_index(["symbol", "window_start"]).loc[want.index]
    assert list(got.trade_count) == list(want.trade_count)
    np.testing.assert_allclose(got.vwap, want.notional / want.qty, rtol=1e-9)
