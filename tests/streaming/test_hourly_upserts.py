"""Live hourly rows on Delta: provisional while the hour is open, final after end + lateness, and a
late tick after finality revises that hour (revision 2) and nothing else; values always equal an
independent recomputation from the stored ticks."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from btcstream.ingest.tick import Tick, iso_utc
from btcstream.names import HOURLY_COLUMNS
from btcstream.streaming.delta_batches import DeltaBatchWriter
from btcstream.streaming.hourly_upserts import touched_hours, upsert_hours
from helpers.hourly import assert_hourly_equal, independent_hourly
from helpers.ticks import TICKS_START, kafka_frame, random_ticks

pytestmark = pytest.mark.spark

LATENESS = timedelta(minutes=10)


def store(spark, writer: DeltaBatchWriter, ticks: list[Tick], batch_id: int):
    """Write ticks as one micro-batch; the hours they touch."""
    frame = kafka_frame(spark, [t.to_json() for t in ticks])
    writer(frame, batch_id)
    from btcstream.streaming import parse, transforms

    return touched_hours(transforms.enrich(parse.valid_ticks(parse.classify(frame))))


def hourly(spark, url: str):
    return spark.read.format("delta").load(url).toPandas().sort_values(["symbol", "window_start"]).reset_index(drop=True)


def clock(ticks: list[Tick]) -> datetime:
    return max(datetime.fromisoformat(t.event_time) for t in ticks)


def test_hours_are_live_then_final_and_a_late_tick_revises_only_its_hour(spark, tmp_path: Path) -> None:
    ticks = random_ticks(200)  # two symbols, 09:00-12:00
    writer = DeltaBatchWriter(f"file://{tmp_path}/raw_data", f"file://{tmp_path}/quarantine", "test-hourly")
    hourly_url = f"file://{tmp_path}/hourly_metrics"

    touched = store(spark, writer, ticks, 0)
    counts = upsert_hours(spark, writer.raw_url, hourly_url, touched, clock(ticks), LATENESS)
    assert (counts.hours, counts.opened, counts.revised) == (6, 6, 0)
    rows = hourly(spark, hourly_url)
    assert_hourly_equal(rows[list(HOURLY_COLUMNS)], independent_hourly(ticks))
    final = dict(zip(rows.window_start.dt.hour, rows.is_final))
    assert final == {9: True, 10: True, 11: False}  # 11:00-12:00 is still within end + lateness of the clock
    assert set(rows.revision) == {1}

    # A tick for 09:xx long after that hour was final: stored, and the hour revised once.
    late = replace(ticks[0], symbol="BTCUSDT", event_time=iso_utc(TICKS_START + timedelta(minutes=30, microseconds=7)))
    before = rows.set_index(["symbol", "window_start"])
    counts = upsert_hours(spark, writer.raw_url, hourly_url, store(spark, writer, [late], 1), clock(ticks), LATENESS)
    assert (counts.hours, counts.updated, counts.revised, counts.opened) == (1, 1, 1, 0)
    after = hourly(spark, hourly_url).set_index(["symbol", "window_start"])
    nine = (("BTCUSDT", TICKS_START.replace(tzinfo=None)))
    assert after.loc[nine, "revision"] == 2 and after.loc[nine, "tick_count"] == before.loc[nine, "tick_count"] + 1
    others = after.drop(index=[nine])
    assert (others.revision == 1).all()
    assert (others.updated_at == before.drop(index=[nine]).updated_at).all()  # nothing else rewritten
    assert_hourly_equal(after.reset_index()[list(HOURLY_COLUMNS)], independent_hourly(ticks + [late]))

    # The same batch again (a replay): nothing changes.
    replay = upsert_hours(spark, writer.raw_url, hourly_url, store(spark, writer, [late], 1), clock(ticks), LATENESS)
    assert (replay.updated, replay.revised, replay.opened) == (0, 0, 0)

    # Event time moves on to 12:30: 11:00 becomes final without a tick of its own, 12:00 opens live.
    noon = replace(ticks[1], symbol="ETHUSDT", event_time=iso_utc(TICKS_START + timedelta(hours=3, minutes=30)))
    counts = upsert_hours(spark, writer.raw_url, hourly_url, store(spark, writer, [noon], 2), clock([noon]), LATENESS)
    assert (counts.opened, counts.finalised) == (1, 2)  # both symbols' 11:00 rows
    rows = hourly(spark, hourly_url)
    assert rows.loc[rows.window_start.dt.hour == 11, "is_final"].all()
    assert not rows.loc[rows.window_start.dt.hour == 12, "is_final"].any()
