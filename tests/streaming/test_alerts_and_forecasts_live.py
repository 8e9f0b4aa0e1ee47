"""The running job, end to end: an injected spread blow-out raises exactly one alert (table, topic, user
command), and the forecasts table holds one forecast per hour across a restart of the job."""

from __future__ import annotations

import json
import math
import random
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaConsumer, TopicPartition

from btcstream.clients.kafka import kafka_python_options
from btcstream.ingest import tick
from btcstream.settings import Settings
from helpers.stream_job import StreamJob, drained, produce, read_table

pytestmark = pytest.mark.integration

START = datetime(2025, 2, 14, 8, tzinfo=timezone.utc)
PER_MINUTE = 4  # quotes per minute: a bar's spread is their mean, its volatility their mid range
BLOW_OUT = START + timedelta(hours=3, minutes=30)  # one minute of a 40 bps spread (~0.1 bps otherwise)


def quotes(first_minute: int, last_minute: int, seed: int) -> list[tick.Tick]:
    """BTCUSDT quotes of minutes [first, last) after START: a quiet random walk; the blow-out minute's spread wide."""
    rng = random.Random(seed)
    mid = 97_000.0 * math.exp(first_minute * 1e-6)
    ticks = []
    for minute in range(first_minute, last_minute):
        for index in range(PER_MINUTE):
            mid *= math.exp(rng.gauss(0, 0.0002))
            moment = START + timedelta(minutes=minute, seconds=index * 60 / PER_MINUTE + rng.uniform(0.1, 10))
            wide = START + timedelta(minutes=minute) == BLOW_OUT
            spread = mid * 40e-4 if wide else rng.uniform(0.5, 1.5)
            stamp = tick.iso_utc(moment.replace(microsecond=moment.microsecond // 1000 * 1000))
            ticks.append(tick.Tick("BTCUSDT", stamp, stamp, mid - spread / 2, mid + spread / 2, 1.0, 1.0,
                                   volume_24h=15_000.0, high_24h=mid * 1.01, low_24h=mid * 0.99))
    return ticks


def topic_records(settings: Settings, topic: str) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list[dict] = []
        while any(consumer.position(p) < ends[p] for p in parts):
            for batch in consumer.poll(timeout_ms=2000).values():
                records.extend(json.loads(r.value) for r in batch)
        return records
    finally:
        consumer.close()


def test_a_spread_blow_out_raises_one_alert_and_each_hour_is_forecast_once_across_a_restart(
        test_settings: Settings, tmp_path: Path) -> None:
    delivered = tmp_path / "delivered.jsonl"
    settings = test_settings.replace(
        spark_master="local[2]", trigger_interval_s=1.0, forecast_models="ewma", alert_threshold=6.0,
        alert_command=f"cat >> {shlex.quote(str(delivered))}; echo >> {shlex.quote(str(delivered))}")
    job = StreamJob(settings, tmp_path / "stream.log")

    def forecast_hours() -> list[datetime]:
        table = read_table(settings, "forecasts")
        return [] if table.empty else sorted(pd.to_datetime(table.for_hour, utc=True))

    # Job 1: to 3:45. Hours 0, 1 and 2 become final (10 minutes of lateness): hours 2 and 3 are
    # forecast; the blow-out at 3:30 raises the alert.
    produce(settings, quotes(0, 225, seed=1))
    job.start()
    try:
        job.wait_until(lambda: drained(settings)() and len(forecast_hours()) == 2
                       and not read_table(settings, "alerts").empty, "the alert and the first forecasts", timeout=600)
    finally:
        job.stop()
    assert forecast_hours() == [START + timedelta(hours=2), START + timedelta(hours=3)]

    # Job 2 catches up on 27 minutes sent while it was down (to 4:12: hour 3 final, hour 4 forecast)
    # without forecasting hours 2 and 3 again, and rebuilds its alert window (the blow-out is in it
    # again) without delivering that alert twice.
    produce(settings, quotes(225, 252, seed=2))
    job.start()
    try:
        job.wait_until(lambda: drained(settings)() and len(forecast_hours()) >= 3, "the catch-up", timeout=600)
    finally:
        job.stop()

    alerts = read_table(settings, "alerts")
    assert len(alerts) == 1, alerts
    alert = alerts.iloc[0]
    assert (alert.symbol, alert.metric) == ("BTCUSDT", "spread_bps")
    assert pd.to_datetime(alerts.time, utc=True).tolist() == [BLOW_OUT]
    assert alert.z > 6.0 and alert.value == pytest.approx(40.0, rel=0.01) and alert.baseline < 1.0
    sent = topic_records(settings, settings.alerts_topic)
    assert [(r["symbol"], r["metric"], r["time"]) for r in sent] == [("BTCUSDT", "spread_bps", BLOW_OUT.isoformat())]
    lines = [json.loads(line) for line in delivered.read_text().splitlines() if line.strip()]
    assert [(r["metric"], r["time"]) for r in lines] == [("spread_bps", BLOW_OUT.isoformat())]

    forecasts = read_table(settings, "forecasts")
    forecasts["for_hour"] = pd.to_datetime(forecasts.for_hour, utc=True)
    assert not forecasts.duplicated(["symbol", "model", "for_hour"]).any()
    assert sorted(forecasts.for_hour) == [START + timedelta(hours=h) for h in (2, 3, 4)]
    hourly = read_table(settings, "hourly_metrics")
    hourly["window_start"] = pd.to_datetime(hourly.window_start, utc=True)
    final = hourly[hourly.is_final].set_index("window_start").realized_volatility
    for row in forecasts.itertuples():
        if row.for_hour in final.index:
            assert row.realized == pytest.approx(final[row.for_hour], rel=1e-12)
        else:
            assert pd.isna(row.realized)
    assert forecasts.set_index("for_hour").realized[[START + timedelta(hours=2), START + timedelta(hours=3)]].notna().all()
