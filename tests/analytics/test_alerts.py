"""Alert scoring: the bar metrics and the robust z-score against hand-computed values, one alert per excursion."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from btcstream.analytics.alerts import (MAD_TO_SIGMA, AlertScorer, MinuteBar, merge_bars, minute_bars, robust_z)

START = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_bar_metrics_against_hand_computed_values() -> None:
    # quotes (bid, ask): (99, 101) mid 100 spread 200 bps; (100, 101) mid 100.5 spread 99.50 bps
    bar = MinuteBar("BTCUSDT", START, quotes=2, spread_bps_sum=200.0 + 1 / 100.5 * 1e4, high_mid=100.5, low_mid=100.0,
                    trades=3, buy_qty=3.0, sell_qty=1.0)
    metrics = bar.metrics()
    assert metrics["spread_bps"] == pytest.approx((200.0 + 99.50248756) / 2)
    assert metrics["volatility_1m"] == pytest.approx(math.log(100.5 / 100.0) / math.sqrt(4 * math.log(2)))
    assert metrics["trade_imbalance"] == pytest.approx(0.5)  # (3 - 1) / (3 + 1)


def test_a_bar_without_enough_records_leaves_its_metrics_out() -> None:
    one_quote = MinuteBar("BTCUSDT", START, quotes=1, spread_bps_sum=2.0, high_mid=100.0, low_mid=100.0)
    assert set(one_quote.metrics()) == {"spread_bps"}  # volatility needs two quotes, imbalance a trade
    only_trades = MinuteBar("BTCUSDT", START, trades=2, buy_qty=0.0, sell_qty=2.0)
    assert only_trades.metrics() == {"trade_imbalance": -1.0}


def test_robust_z_against_hand_computed_values() -> None:
    window = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, |x - 3| = 2 1 0 1 97 -> MAD 1
    baseline, mad, z = robust_z(10.0, window, "spread_bps")
    assert (baseline, mad) == (3.0, 1.0)
    assert z == pytest.approx(7.0 / MAD_TO_SIGMA)
    # A window of identical values: the scale floor (5% of the baseline) instead of a division by zero.
    assert robust_z(2.2, np.full(10, 2.0), "spread_bps")[2] == pytest.approx(0.2 / 0.1)


def test_partials_merge_to_the_bar_of_all_their_records() -> None:
    quotes = pd.DataFrame({"symbol": ["BTCUSDT"] * 4,
                           "event_time": [START + timedelta(seconds=s) for s in (1, 20, 40, 70)],
                           "bid_price": [99.0, 100.0, 98.0, 100.0], "ask_price": [101.0, 101.0, 99.0, 100.2]})
    trades = pd.DataFrame({"symbol": ["BTCUSDT"] * 2, "trade_time": [START + timedelta(seconds=5)] * 2,
                           "qty": [1.0, 2.0], "buyer_is_maker": [True, False]})
    whole = minute_bars(quotes, trades)
    halves = minute_bars(quotes.iloc[:2], trades.iloc[:1]) + minute_bars(quotes.iloc[2:], trades.iloc[1:])
    merged = merge_bars(halves)
    assert [(b.symbol, b.minute) for b in whole] == sorted(merged)
    for bar in whole:
        other = merged[(bar.symbol, bar.minute)]
        assert other.metrics() == pytest.approx(bar.metrics())
        assert (other.quotes, other.trades) == (bar.quotes, bar.trades)
    assert whole[0].metrics()["trade_imbalance"] == pytest.approx((2.0 - 1.0) / 3.0)


def normal_bar(rng: random.Random, minute: int, spread_bps: float = 1.0) -> MinuteBar:
    """A quiet minute: spread around 1 bps, a small range, balanced trades."""
    noise = rng.gauss(0, 0.05)
    mid = 100.0 * math.exp(rng.gauss(0, 1e-4))
    return MinuteBar("BTCUSDT", START + timedelta(minutes=minute), quotes=10, spread_bps_sum=10 * (spread_bps + noise),
                     high_mid=mid * (1 + abs(rng.gauss(2e-4, 3e-5))), low_mid=mid, trades=8,
                     buy_qty=1.0 + rng.random() * 0.2, sell_qty=1.0 + rng.random() * 0.2)


def test_a_spread_blow_out_of_three_minutes_raises_exactly_one_alert() -> None:
    rng = random.Random(3)
    scorer = AlertScorer(timedelta(minutes=60), threshold=6.0)
    alerts = []
    for minute in range(120):
        spread = 40.0 if 90 <= minute < 93 else 1.0
        alerts.extend(scorer.score(normal_bar(rng, minute, spread)))
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.metric, alert.time, alert.symbol) == ("spread_bps", START + timedelta(minutes=90), "BTCUSDT")
    assert alert.value == pytest.approx(40.0, abs=0.5) and alert.baseline == pytest.approx(1.0, abs=0.1)
    assert alert.z > 6.0


def test_a_second_excursion_after_a_return_to_normal_raises_a_second_alert() -> None:
    rng = random.Random(4)
    scorer = AlertScorer(timedelta(minutes=60), threshold=6.0)
    alerts = [a for minute in range(150)
              for a in scorer.score(normal_bar(rng, minute, 40.0 if minute in (80, 81, 120) else 1.0))]
    assert [(a.metric, a.time) for a in alerts] == [("spread_bps", START + timedelta(minutes=80)),
                                                    ("spread_bps", START + timedelta(minutes=120))]


def test_no_alert_before_the_window_holds_enough_bars_and_bars_must_come_in_order() -> None:
    rng = random.Random(5)
    scorer = AlertScorer(timedelta(minutes=60), threshold=6.0)
    assert scorer.min_bars == 30
    first = [a for minute in range(29) for a in scorer.score(normal_bar(rng, minute, 40.0 if minute == 20 else 1.0))]
    assert first == []
    with pytest.raises(ValueError, match="in order"):
        scorer.score(normal_bar(rng, 10))
