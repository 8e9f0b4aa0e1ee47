"""The job's kept hourly partials: batch after batch (out of order, duplicates, a replay, a restart that
loads them back from the tables) their rows equal an independent pandas recomputation of everything
stored, and a batch adds only what it inserted."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from btcstream.ingest.tick import iso_utc
from btcstream.names import HOURLY_COLUMNS
from btcstream.streaming.delta_batches import DeltaBatchWriter
from btcstream.streaming.hour_partials import HourlyPartials
from helpers.hourly import assert_hourly_equal, independent_hourly
from helpers.ticks import TICKS_START, mixed_frame, random_ticks

pytestmark = pytest.mark.spark


def random_trades(count: int, seed: int = 5) -> list[dict]:
    """Aggregate trades of two symbols over the ticks' three hours, shuffled."""
    rng = random.Random(seed)
    trades = []
    for symbol, base in (("BTCUSDT", 97_000.0), ("ETHUSDT", 2_700.0)):
        for trade_id in range(1, count + 1):
            qty = rng.uniform(0.001, 2.0)
            price = base * (1 + rng.gauss(0, 0.002))
            trades.append(dict(symbol=symbol, trade_id=trade_id, price=price, qty=qty, quote_qty=price * qty,
                               trade_time=iso_utc(TICKS_START + timedelta(seconds=rng.uniform(0, 3 * 3600))),
                               buyer_is_maker=rng.random() < 0.5, first_trade_id=trade_id, last_trade_id=trade_id))
    rng.shuffle(trades)
    return trades


def test_kept_partials_equal_a_recomputation_across_batches_replays_and_a_restart(spark, tmp_path: Path) -> None:
    from btcstream.ingest.trade import Trade

    ticks, trades = random_ticks(150), random_trades(120)
    rng = random.Random(3)
    quotes = [("ticks", t.to_json()) for t in ticks]
    deals = [("trades", Trade(**t).to_json()) for t in trades]
    records = quotes + deals + rng.sample(quotes, 20) + rng.sample(deals, 20)  # producer retries: duplicates
    rng.shuffle(records)
    batches = [records[i::4] for i in range(4)]
    raw_url, trades_url = f"file://{tmp_path}/raw_data", f"file://{tmp_path}/trades"
    writer = DeltaBatchWriter(raw_url, f"file://{tmp_path}/quarantine", "test-partials", trades_url=trades_url,
                              trades_topic="trades", partials=True)
    kept = HourlyPartials()
    sent_ticks, sent_trades = [], []
    for batch_id, batch in enumerate(batches):
        counts = writer(mixed_frame(spark, batch), batch_id)
        assert counts.partials is not None
        assert (counts.partials.quote_count, counts.partials.trade_count) == (counts.inserted, counts.trades_inserted)
        kept.update(spark, raw_url, trades_url, counts.hours, counts.partials)
        sent_ticks += [t for t in ticks if ("ticks", t.to_json()) in batch]
        sent_trades += [t for t in trades if ("trades", Trade(**t).to_json()) in batch]
        assert_rows_equal(kept.rows(kept.hours), sent_ticks, sent_trades)

    # A replayed batch inserts nothing and brings no partials: nothing is added twice.
    replay = writer(mixed_frame(spark, batches[1]), 1)
    assert (replay.inserted, replay.trades_inserted, replay.partials.quote_count) == (0, 0, 0)
    kept.update(spark, raw_url, trades_url, replay.hours, replay.partials)
    assert_rows_equal(kept.rows(kept.hours), sent_ticks, sent_trades)

    # A restarted job holds nothing: its first batch loads the hours it touches from the tables.
    restarted = HourlyPartials()
    late = [("ticks", t.to_json()) for t in random_ticks(5, seed=99)]  # new ticks in the same hours
    counts = writer(mixed_frame(spark, late), 4)
    restarted.update(spark, raw_url, trades_url, counts.hours, counts.partials)
    late_ticks = random_ticks(5, seed=99)
    assert_rows_equal(restarted.rows(counts.hours), sent_ticks + late_ticks, sent_trades, only=counts.hours)

    # Forgotten hours are read back when touched again (a late tick after the hour was dropped).
    kept.forget_before(TICKS_START + timedelta(hours=3, minutes=1))  # every hour ended before it
    assert not kept.hours
    kept.update(spark, raw_url, trades_url, counts.hours, counts.partials)
    assert_rows_equal(kept.rows(counts.hours), sent_ticks + late_ticks, sent_trades, only=counts.hours)


def assert_rows_equal(rows: list[dict], ticks: list, trades: list[dict], only=None) -> None:
    """The kept rows equal pandas' recomputation from the (unique) ticks and trades sent so far."""
    unique_ticks = list({(t.symbol, t.event_time): t for t in ticks}.values())
    unique_trades = pd.DataFrame(list({(t["symbol"], t["trade_id"]): t for t in trades}.values()))
    unique_trades["trade_time"] = pd.to_datetime(unique_trades.trade_time, utc=True, format="ISO8601")
    want = independent_hourly(unique_ticks, unique_trades)
    if only is not None:
        keys = {(symbol, pd.Timestamp(start)) for symbol, start in only}
        want = want[[(s, w) in keys for s, w in zip(want.symbol, want.window_start)]].reset_index(drop=True)
    got = pd.DataFrame(rows, columns=list(HOURLY_COLUMNS))
    for column in ("window_start", "window_end"):
        got[column] = pd.to_datetime(got[column], utc=True).dt.tz_localize(None)
    assert_hourly_equal(got, want)
