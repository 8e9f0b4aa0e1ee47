"""Unit tests of the streaming job's pure parts on small static DataFrames.

Every formula is checked against an independent pandas/numpy computation on the same ticks.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from btcstream.ingest import tick
from btcstream.streaming import parse, transforms
from helpers.hourly import assert_hourly_equal, independent_hourly
from helpers.ticks import TICKS_START, kafka_frame, random_ticks, to_pandas_ticks

pytestmark = pytest.mark.spark


def test_parse_accepts_valid_ticks_and_quarantines_each_kind_of_bad_record(spark):
    good = tick.Tick("BTCUSDT", "2025-02-14T10:58:31.204000+00:00", "2025-02-14T10:58:31.251000+00:00",
                     97017.57, 97017.58, 0.1, 7.1)
    with_offset = tick.Tick("btcusdt", "2025-02-14T12:58:31+02:00", "2025-02-14T12:58:32+02:00", 1.0, 1.0, 0.0, 1.0)

    def variant(**changes) -> bytes:
        return tick.Tick(**{**good.__dict__, **changes}).to_json()

    bad = {
        b"not json": parse.UNPARSEABLE,
        b"[1, 2]": parse.UNPARSEABLE,
        b'{"schema_version": 1, "symbol": "BTCUSDT", "bid_price": "abc"}': parse.UNPARSEABLE,
        variant(schema_version=99): parse.UNKNOWN_SCHEMA_VERSION,
        variant(symbol=""): parse.MISSING_SYMBOL,
        variant(event_time="yesterday"): parse.BAD_EVENT_TIME,
        variant(ask_price=None): parse.MISSING_PRICE,
        variant(bid_price=0.0): parse.BAD_PRICE,
        variant(bid_price=-5.0): parse.BAD_PRICE,
        b'{"schema_version":1,"symbol":"BTCUSDT","event_time":"2025-02-14T10:58:31+00:00","bid_price":NaN,"ask_price":2}':
            parse.BAD_PRICE,
        b'{"schema_version":1,"symbol":"BTCUSDT","event_time":"2025-02-14T10:58:31+00:00","bid_price":1,"ask_price":1e999}':
            parse.BAD_PRICE,
        variant(bid_qty=-1.0): parse.BAD_QUANTITY,
        variant(bid_price=2.0, ask_price=1.0): parse.CROSSED_BOOK,
        None: parse.UNPARSEABLE,  # a record without a value (a Kafka tombstone)
        b"\xff\xfe{": parse.UNPARSEABLE,  # not UTF-8 at all
    }
    values = [good.to_json(), with_offset.to_json(), *bad]
    ticks, quarantine = parse.split(kafka_frame(spark, values))

    rows = sorted(ticks.collect(), key=lambda r: r.event_time)
    assert [r.symbol for r in rows] == ["BTCUSDT", "BTCUSDT"]  # symbols are normalised to upper case
    # Spark returns naive datetimes in the session time zone (UTC); the +02:00 offset is honoured.
    assert rows[0].event_time == datetime(2025, 2, 14, 10, 58, 31)
    assert rows[1].event_time == datetime(2025, 2, 14, 10, 58, 31, 204000)
    assert rows[1].bid_price == 97017.57 and rows[1].schema_version == tick.SCHEMA_VERSION
    assert list(ticks.columns) == list(tick.FIELD_NAMES)

    refused = {r.offset: r for r in quarantine.collect()}
    assert {offset: refused[offset].reason for offset in refused} == {
        offset: reason for offset, reason in enumerate([None, None, *bad.values()]) if reason}
    assert refused[2].value == b"not json" and refused[2].topic == "ticks" and refused[2].partition == 0
    assert refused[2].value_preview == "not json"
    # The bytes as received, whatever they are; the preview replaces what is not UTF-8.
    invalid = refused[len(values) - 1]
    assert invalid.value == b"\xff\xfe{" and invalid.value_preview == "\ufffd\ufffd{"
    assert tuple(quarantine.columns) == parse.QUARANTINE_COLUMNS


def test_each_valid_tick_is_parsed_once_for_the_validity_filter_and_the_columns(spark):
    # Spark would otherwise push the filter below the parsing projection and parse every value
    # again inside it (SPARK-47672): twice the JSON work of the raw query.
    ticks, _ = parse.split(kafka_frame(spark, [random_ticks(1)[0].to_json()]))
    for frame in (ticks, transforms.enrich(ticks)):
        plan = frame._jdf.queryExecution().executedPlan().toString()
        assert plan.count("from_json(") == 1, plan


def test_enrich_matches_independent_formulas(spark):
    ticks = random_ticks(200)
    parsed, _ = parse.split(kafka_frame(spark, [t.to_json() for t in ticks]))
    got = transforms.enrich(parsed).toPandas().sort_values(["symbol", "event_time"]).reset_index(drop=True)

    want = to_pandas_ticks(ticks).sort_values(["symbol", "event_time"]).reset_index(drop=True)
    mid = (want.bid_price + want.ask_price) / 2
    np.testing.assert_allclose(got.mid_price, mid, rtol=1e-12)
    np.testing.assert_allclose(got.spread, want.ask_price - want.bid_price, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.spread_bps, (want.ask_price - want.bid_price) / mid * 1e4, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.top_of_book_liquidity,
                               want.bid_price * want.bid_qty + want.ask_price * want.ask_qty, rtol=1e-12)
    np.testing.assert_allclose(got.spread_percentage, (want.ask_price - want.bid_price) / mid * 100, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.range_24h_percentage, (want.high_24h - want.low_24h) / mid * 100, rtol=1e-12)
    assert list(got.date.astype(str)) == list(want.event_time.dt.strftime("%Y-%m-%d"))
    assert list(got.hour) == list(want.event_time.dt.hour)
    assert set(transforms.ENRICHED_COLUMNS) <= set(got.columns)


def test_hourly_metrics_match_independent_computation(spark):
    ticks = random_ticks(300)
    parsed, _ = parse.split(kafka_frame(spark, [t.to_json() for t in ticks]))
    got = transforms.hourly_rows(transforms.enrich(parsed), None).toPandas()
    want = independent_hourly(ticks)
    assert len(want) == 6  # two symbols x three hours
    assert (want.realized_volatility > 0).all()
    assert_hourly_equal(got, want)


def test_realized_volatility_of_known_path_and_single_tick(spark):
    # Mids 100 -> 110 -> 99 -> 99 in one hour, given out of order: RV = sqrt(ln(1.1)^2 + ln(0.9)^2 + 0).
    def at(minute: int, mid: float, symbol: str = "BTCUSDT") -> bytes:
        moment = tick.iso_utc(TICKS_START + timedelta(minutes=minute))
        return tick.Tick(symbol, moment, moment, mid, mid, 1.0, 1.0).to_json()

    values = [at(30, 99.0), at(0, 100.0), at(45, 99.0), at(10, 110.0), at(5, 50.0, "ETHUSDT")]
    parsed, _ = parse.split(kafka_frame(spark, values))
    rows = {r.symbol: r for r in transforms.hourly_metrics(transforms.enrich(parsed)).collect()}
    assert rows["BTCUSDT"].realized_volatility == pytest.approx(math.sqrt(math.log(1.1) ** 2 + math.log(0.9) ** 2))
    assert (rows["BTCUSDT"].open_mid, rows["BTCUSDT"].close_mid) == (100.0, 99.0)
    assert rows["BTCUSDT"].tick_count == 4
    assert rows["ETHUSDT"].realized_volatility == 0.0 and rows["ETHUSDT"].tick_count == 1


def at_minute(minute: float, mid: float, symbol: str = "BTCUSDT", update_id: int | None = None) -> bytes:
    moment = tick.iso_utc(TICKS_START + timedelta(minutes=minute))
    return tick.Tick(symbol, moment, moment, mid, mid, 1.0, 1.0, update_id=update_id).to_json()


def test_realized_volatility_samples_the_last_mid_of_each_grid_step(spark):
    # A bounce inside minute 0 (100 -> 130 -> 100) adds nothing: only each minute's last mid counts.
    values = [at_minute(0, 100.0), at_minute(0.3, 130.0), at_minute(0.6, 100.0), at_minute(1.2, 110.0),
              at_minute(2.5, 99.0)]
    parsed, _ = parse.split(kafka_frame(spark, values))
    enriched = transforms.enrich(parsed)
    row = transforms.hourly_metrics(enriched).collect()[0]
    assert row.realized_volatility == pytest.approx(math.sqrt(math.log(1.1) ** 2 + math.log(0.9) ** 2))
    assert (row.tick_count, row.high_price, row.open_mid, row.close_mid) == (5, 130.0, 100.0, 99.0)
    # On a 5-minute grid the whole path is one step: no return at all.
    assert transforms.hourly_metrics(enriched, grid_seconds=300).collect()[0].realized_volatility == 0.0


def test_quotes_sharing_a_millisecond_are_ordered_by_update_id(spark):
    values = [at_minute(0, 100.0, update_id=7), at_minute(0, 104.0, update_id=9), at_minute(0, 102.0, update_id=8),
              at_minute(1, 104.0, update_id=10)]
    parsed, _ = parse.split(kafka_frame(spark, values))
    row = transforms.hourly_metrics(transforms.enrich(parsed)).collect()[0]
    assert (row.open_mid, row.close_mid, row.realized_volatility) == (100.0, 104.0, 0.0)  # minute 0 ends at 104


def test_hourly_trade_metrics_by_hand(spark):
    start = TICKS_START.replace(tzinfo=None)
    trades = spark.createDataFrame(
        [("BTCUSDT", 100.0, 2.0, start + timedelta(minutes=1), False),  # a buy (the buyer took the ask)
         ("BTCUSDT", 103.0, 1.0, start + timedelta(minutes=2), True),  # a sell hitting the bid
         ("BTCUSDT", 90.0, 5.0, start + timedelta(hours=1), True)],
        "symbol string, price double, qty double, trade_time timestamp, buyer_is_maker boolean")
    rows = sorted(transforms.hourly_trade_metrics(trades).collect(), key=lambda r: r.window_start)
    first, second = rows
    assert first.vwap == pytest.approx((200.0 + 103.0) / 3.0) and first.trade_count == 2
    assert (first.buy_volume, first.sell_volume) == (2.0, 1.0)
    assert first.trade_imbalance == pytest.approx(1.0 / 3.0)
    assert (second.buy_volume, second.sell_volume, second.trade_imbalance) == (0.0, 5.0, -1.0)


def test_hourly_rows_join_quotes_and_trades_per_hour(spark):
    import pandas as pd

    ticks = random_ticks(120)
    parsed, _ = parse.split(kafka_frame(spark, [t.to_json() for t in ticks]))
    trades = pd.DataFrame({
        "symbol": ["BTCUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT"],
        "price": [97_000.0, 97_010.0, 2_700.0, 2_690.0],
        "qty": [0.5, 0.25, 3.0, 1.0],
        "trade_time": pd.to_datetime([TICKS_START + timedelta(minutes=m) for m in (5, 50, 70, 400)], utc=True),
        "buyer_is_maker": [False, True, True, False],
    })  # the last ETH trade falls in an hour without quotes
    frame = spark.createDataFrame(trades.assign(trade_time=trades.trade_time.dt.tz_localize(None)))
    got = transforms.hourly_rows(transforms.enrich(parsed), frame).toPandas()
    want = independent_hourly(ticks, trades)
    assert len(want) == 7 and want.trade_count.sum() == 4
    assert_hourly_equal(got, want)
