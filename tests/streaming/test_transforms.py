"""Unit tests of the streaming job's pure parts on small static DataFrames.

Every formula is checked against an independent pandas/numpy computation on the same ticks.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from btcstream.ingest import tick
from btcstream.settings import Settings
from btcstream.clients.spark import spark_session
from btcstream.streaming import parse, transforms

START = datetime(2025, 2, 14, 9, 0, tzinfo=timezone.utc)
KAFKA_SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"


@pytest.fixture(scope="module")
def spark():
    return spark_session(Settings(spark_master="local[2]", storage_root="file:///tmp/btcstream-unit"),
                         "test_transforms", with_kafka=False)


def random_ticks(count: int, seed: int = 7) -> list[tick.Tick]:
    """Ticks of two symbols over three hours, in shuffled order, with a random walk of the mid."""
    rng = random.Random(seed)
    ticks = []
    for symbol, base in (("BTCUSDT", 97_000.0), ("ETHUSDT", 2_700.0)):
        mid = base
        for _ in range(count):
            mid *= math.exp(rng.gauss(0, 0.001))
            spread = rng.uniform(0.0, 2.0)
            moment = START + timedelta(seconds=rng.uniform(0, 3 * 3600))
            ticks.append(tick.Tick(
                symbol=symbol, event_time=tick.iso_utc(moment), timestamp=tick.iso_utc(moment + timedelta(seconds=1)),
                bid_price=mid - spread / 2, ask_price=mid + spread / 2,
                bid_qty=rng.uniform(0, 5), ask_qty=rng.uniform(0, 5),
                volume_24h=rng.uniform(1e4, 2e4), high_24h=base * 1.02, low_24h=base * 0.98,
            ))
    rng.shuffle(ticks)
    return ticks


def kafka_frame(spark, values: list[bytes]):
    now = datetime.now(timezone.utc)
    rows = [(b"k", value, "ticks", 0, offset, now) for offset, value in enumerate(values)]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def to_pandas_ticks(ticks: list[tick.Tick]) -> pd.DataFrame:
    frame = pd.DataFrame([t.__dict__ for t in ticks])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True, format="ISO8601")
    return frame


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
    }
    values = [good.to_json(), with_offset.to_json(), *bad]
    ticks, quarantine = parse.split(kafka_frame(spark, values))

    rows = sorted(ticks.collect(), key=lambda r: r.event_time)
    assert [r.symbol for r in rows] == ["BTCUSDT", "BTCUSDT"]  # symbols are normalised to upper case
    # Spark returns naive datetimes in the session time zone (UTC); the +02:00 offset is honoured.
    assert rows[0].event_time == datetime(2025, 2, 14, 10, 58, 31)
    assert rows[1].event_time == datetime(2025, 2, 14, 10, 58, 31, 204000)
    assert rows[1].bid_price == 97017.57 and rows[1].schema_version == 1
    assert list(ticks.columns) == list(tick.FIELD_NAMES)

    refused = {r.offset: r for r in quarantine.collect()}
    assert {offset: refused[offset].reason for offset in refused} == {
        offset: reason for offset, reason in enumerate([None, None, *bad.values()]) if reason}
    assert refused[2].value == "not json" and refused[2].topic == "ticks" and refused[2].partition == 0
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


def independent_hourly(ticks: list[tick.Tick]) -> pd.DataFrame:
    """Hourly metrics computed with pandas/numpy only (the reference for the Spark implementation)."""
    frame = to_pandas_ticks(ticks)
    frame["mid"] = (frame.bid_price + frame.ask_price) / 2
    frame["spread"] = frame.ask_price - frame.bid_price
    frame["spread_bps"] = frame.spread / frame.mid * 1e4
    frame["liquidity"] = frame.bid_price * frame.bid_qty + frame.ask_price * frame.ask_qty
    frame["window_start"] = frame.event_time.dt.floor("h")
    rows = []
    for (symbol, start), hour in frame.sort_values("event_time").groupby(["symbol", "window_start"]):
        returns = np.diff(np.log(hour.mid.to_numpy()))
        rows.append({
            "symbol": symbol, "window_start": start, "window_end": start + pd.Timedelta(hours=1),
            "avg_price": hour.mid.mean(), "avg_spread": hour.spread.mean(), "avg_spread_bps": hour.spread_bps.mean(),
            "total_liquidity": hour.liquidity.sum(), "avg_liquidity": hour.liquidity.mean(),
            "realized_volatility": math.sqrt(float(np.sum(returns ** 2))),
            "high_price": hour.mid.max(), "low_price": hour.mid.min(), "avg_volume_24h": hour.volume_24h.mean(),
            "tick_count": len(hour), "open_mid": hour.mid.iloc[0], "close_mid": hour.mid.iloc[-1],
        })
    return pd.DataFrame(rows).sort_values(["symbol", "window_start"]).reset_index(drop=True)


def assert_hourly_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Compare Spark's hourly rows (naive UTC timestamps) with the pandas reference."""
    got = got.sort_values(["symbol", "window_start"]).reset_index(drop=True)
    assert list(got.columns) == list(transforms.HOURLY_COLUMNS)
    assert len(got) == len(want)
    assert list(got.symbol) == list(want.symbol)
    for column in ("window_start", "window_end"):
        assert list(pd.to_datetime(got[column]).dt.tz_localize("UTC")) == list(want[column])
    assert list(got.tick_count) == list(want.tick_count)
    for column in transforms.HOURLY_COLUMNS[3:]:
        if column != "tick_count":
            np.testing.assert_allclose(got[column].astype(float), want[column].astype(float), rtol=1e-9,
                                       atol=1e-12, err_msg=column)


def test_hourly_metrics_match_independent_computation(spark):
    ticks = random_ticks(300)
    parsed, _ = parse.split(kafka_frame(spark, [t.to_json() for t in ticks]))
    got = transforms.hourly_metrics(transforms.enrich(parsed)).toPandas()
    want = independent_hourly(ticks)
    assert len(want) == 6  # two symbols x three hours
    assert (want.realized_volatility > 0).all()
    assert_hourly_equal(got, want)


def test_realized_volatility_of_known_path_and_single_tick(spark):
    # Mids 100 -> 110 -> 99 -> 99 in one hour, given out of order: RV = sqrt(ln(1.1)^2 + ln(0.9)^2 + 0).
    def at(minute: int, mid: float, symbol: str = "BTCUSDT") -> bytes:
        moment = tick.iso_utc(START + timedelta(minutes=minute))
        return tick.Tick(symbol, moment, moment, mid, mid, 1.0, 1.0).to_json()

    values = [at(30, 99.0), at(0, 100.0), at(45, 99.0), at(10, 110.0), at(5, 50.0, "ETHUSDT")]
    parsed, _ = parse.split(kafka_frame(spark, values))
    rows = {r.symbol: r for r in transforms.hourly_metrics(transforms.enrich(parsed)).collect()}
    assert rows["BTCUSDT"].realized_volatility == pytest.approx(math.sqrt(math.log(1.1) ** 2 + math.log(0.9) ** 2))
    assert (rows["BTCUSDT"].open_mid, rows["BTCUSDT"].close_mid) == (100.0, 99.0)
    assert rows["BTCUSDT"].tick_count == 4
    assert rows["ETHUSDT"].realized_volatility == 0.0 and rows["ETHUSDT"].tick_count == 1
