"""Integration tests of the streaming job on the real local Kafka, HDFS and Delta Lake, run as `btcstream stream`.

The job runs in its own driver process (as in production, and because a SparkSession's jars are
fixed per process: another test may already hold one without the Kafka connector). Each test
writes to a fresh topic and a fresh HDFS sub-root, produces with kafka-python, waits on the
checkpoint and persisted progress, reads the Delta tables with delta-rs (`deltalake`, no JVM) and
compares with an independent pandas computation.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from kafka.admin import KafkaAdminClient, NewTopic

from btcstream.ingest import tick
from btcstream.clients.kafka import kafka_python_options
from btcstream.settings import Settings
from btcstream.names import HOURLY_COLUMNS
from btcstream.storage.filesystem import storage_filesystem, storage_path
from btcstream.streaming.progress import read_progress
from helpers.hourly import assert_hourly_equal, independent_hourly
from helpers.stream_job import INGEST, REPO, StreamJob, drained, produce, read_table

pytestmark = pytest.mark.integration

DAY = datetime(2025, 2, 14, tzinfo=timezone.utc)
SYMBOLS = {"BTCUSDT": 97_000.0, "ETHUSDT": 2_700.0}
MALFORMED = [
    b"not json at all",
    b'{"schema_version": 1, "symbol": "BTCUSDT"',
    tick.Tick("BTCUSDT", "2025-02-14T10:00:00+00:00", "2025-02-14T10:00:00+00:00", None, 1.0, 1.0, 1.0).to_json(),
    tick.Tick("BTCUSDT", "2025-02-14T10:00:01+00:00", "2025-02-14T10:00:01+00:00", -3.0, 1.0, 1.0, 1.0).to_json(),
    tick.Tick("BTCUSDT", "2025-02-14T10:00:02+00:00", "2025-02-14T10:00:02+00:00", 2.0, 1.0, 1.0, 1.0).to_json(),
    tick.Tick("BTCUSDT", "2025-02-14T10:00:03+00:00", "2025-02-14T10:00:03+00:00", 1.0, 2.0, 1.0, 1.0,
              schema_version=7).to_json(),
    b'{"schema_version":1,"symbol":"ETHUSDT","event_time":"2025-02-14T10:00:04+00:00","bid_price":NaN,"ask_price":1}',
    b"\xff\xfe",  # not UTF-8: once made the whole quarantine unreadable
]


def make_tick(symbol: str, moment: datetime, mid: float, rng: random.Random) -> tick.Tick:
    spread = rng.uniform(0.01, 2.0)
    return tick.Tick(symbol=symbol, event_time=tick.iso_utc(moment), timestamp=tick.iso_utc(moment),
                     bid_price=mid - spread / 2, ask_price=mid + spread / 2,
                     bid_qty=rng.uniform(0.01, 3.0), ask_qty=rng.uniform(0.01, 3.0),
                     volume_24h=rng.uniform(1e4, 2e4), high_24h=mid * 1.01, low_24h=mid * 0.99)


def market_ticks(start: datetime, hours: int, per_hour: int, seed: int) -> list[tick.Tick]:
    """Random-walk ticks of every symbol, in event-time order, `per_hour` per symbol and hour."""
    rng = random.Random(seed)
    ticks = []
    for symbol, mid in SYMBOLS.items():
        for index in range(hours * per_hour):
            mid *= float(np.exp(rng.gauss(0, 0.0008)))
            moment = start + timedelta(seconds=(index + rng.uniform(0.05, 0.95)) * 3600 / per_hour)
            ticks.append(make_tick(symbol, moment.replace(microsecond=moment.microsecond // 1000 * 1000), mid, rng))
    return sorted(ticks, key=lambda t: t.event_time)


def create_topic(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    try:
        admin.create_topics([NewTopic(settings.topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()


def hourly_rows(settings: Settings) -> int:
    return len(read_table(settings, "hourly_metrics"))


def totals(settings: Settings) -> dict[str, int]:
    """The job's running counts, as `btcstream status` reads them."""
    return (read_progress(settings, "btcstream_ingest") or {}).get("totals", {})


def unique_ticks(ticks: list[tick.Tick]) -> list[tick.Tick]:
    """One tick per (symbol, event_time), the first seen (what deduplication keeps)."""
    seen: dict[tuple[str, str], tick.Tick] = {}
    for t in ticks:
        seen.setdefault((t.symbol, t.event_time), t)
    return list(seen.values())


def assert_raw_equals(settings: Settings, expected: list[tick.Tick]) -> pd.DataFrame:
    """raw_data holds exactly the `expected` ticks, each once, with their prices."""
    raw = read_table(settings, "raw_data")
    keys = list(zip(raw.symbol, pd.to_datetime(raw.event_time, utc=True)))
    want = sorted((t.symbol, pd.Timestamp(t.event_time).tz_convert("UTC")) for t in expected)
    assert len(keys) == len(set(keys)), "raw_data holds a tick twice"
    assert sorted(keys) == want
    by_key = {(t.symbol, pd.Timestamp(t.event_time).tz_convert("UTC")): t for t in expected}
    mids = [(by_key[k].bid_price + by_key[k].ask_price) / 2 for k in keys]
    np.testing.assert_allclose(raw.mid_price, mids, rtol=1e-12)
    return raw


def hourly_frame(settings: Settings) -> pd.DataFrame:
    """hourly_metrics with its lifecycle columns, window times naive UTC like `independent_hourly`."""
    frame = read_table(settings, "hourly_metrics")
    for column in ("window_start", "window_end"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None)
    return frame.sort_values(["symbol", "window_start"]).reset_index(drop=True)


def assert_hourly_matches(settings: Settings, ticks: list[tick.Tick]) -> pd.DataFrame:
    """Every hourly value equals a pandas recomputation from `ticks` (what raw_data holds)."""
    frame = hourly_frame(settings)
    assert_hourly_equal(frame[list(HOURLY_COLUMNS)], independent_hourly(ticks))
    return frame


def raw_ticks(settings: Settings) -> list[tick.Tick]:
    """The ticks raw_data holds, as Tick records (for an independent recomputation from the table)."""
    raw = read_table(settings, "raw_data")
    return [tick.Tick(symbol=r.symbol, event_time=tick.iso_utc(pd.Timestamp(r.event_time).to_pydatetime()),
                      timestamp=tick.iso_utc(pd.Timestamp(r.timestamp).to_pydatetime()),
                      bid_price=r.bid_price, ask_price=r.ask_price, bid_qty=r.bid_qty, ask_qty=r.ask_qty,
                      volume_24h=r.volume_24h, high_24h=r.high_24h, low_24h=r.low_24h)
            for r in raw.itertuples()]


@pytest.fixture
def job_settings(test_settings: Settings) -> Settings:
    settings = test_settings.replace(spark_master="local[2]", trigger_interval_s=1.0, allowed_lateness="10 minutes")
    create_topic(settings)
    return settings


def test_one_read_stores_late_ticks_quarantines_any_bytes_and_revises_final_hours(job_settings: Settings,
                                                                                  tmp_path: Path):
    settings = job_settings
    rng = random.Random(11)
    hours_9_to_11 = market_ticks(DAY + timedelta(hours=9), hours=3, per_hour=30, seed=3)
    retried = rng.sample(hours_9_to_11, 15)  # producer retries: the same record again
    phase_1: list[tick.Tick | bytes] = hours_9_to_11 + retried + MALFORMED
    rng.shuffle(phase_1)  # out of order across all three hours
    produce(settings, phase_1)

    job = StreamJob(settings, tmp_path / "stream.log")
    job.start()
    try:
        job.wait_until(drained(settings), "the job to read phase 1")
        kept = unique_ticks(hours_9_to_11)
        assert_raw_equals(settings, kept)
        quarantine = read_table(settings, "quarantine")
        assert sorted(quarantine.value) == sorted(MALFORMED)  # the bytes as received, each once
        assert set(quarantine.reason) == {"unparseable JSON", "missing price", "price not finite or <= 0",
                                          "ask below bid", "unknown schema version"}
        assert "\ufffd\ufffd" in set(quarantine.value_preview)
        # Live hourly rows: the event clock is the newest tick (about 11:59); hours 9 and 10 ended
        # more than 10 minutes before it (final), hour 11 is still in progress (provisional).
        hourly = assert_hourly_matches(settings, kept)
        assert dict(zip(hourly.window_start.dt.hour, hourly.is_final)) == {9: True, 10: True, 11: False}
        assert set(hourly.revision) == {1}

        # Ticks long after hour 10 was final: stored (never dropped), counted as late, and they
        # revise that hour of that symbol only (revision 2).
        newest = max(hours_9_to_11, key=lambda t: t.event_time)
        too_late = [make_tick("BTCUSDT", DAY + timedelta(hours=10, minutes=m, seconds=30), 97_100.0, rng)
                    for m in (1, 17, 33, 48)]
        produce(settings, [*too_late, newest])  # `newest` again: a duplicate, not late
        job.wait_until(drained(settings), "the job to read the late ticks")
        assert_raw_equals(settings, kept + too_late)
        revised = assert_hourly_matches(settings, kept + too_late).set_index(["symbol", "window_start"])
        hour_10 = ("BTCUSDT", pd.Timestamp(DAY + timedelta(hours=10)).tz_localize(None))
        assert revised.loc[hour_10, "revision"] == 2 and revised.loc[hour_10, "is_final"]
        others = revised.drop(index=[hour_10])
        assert set(others.revision) == {1}
        before = hourly.set_index(["symbol", "window_start"]).drop(index=[hour_10])
        assert (others.updated_at == before.updated_at).all()  # untouched rows were not rewritten
        job.wait_until(lambda: totals(settings).get("late_rows") == len(too_late), "the late ticks to be counted")
        counted = totals(settings)
        assert counted["quarantined_rows"] == len(MALFORMED)
        assert counted["inserted_rows"] == len(kept) + len(too_late)
        assert counted["duplicate_rows"] == len(retried) + 1
        assert counted["hourly_revised"] == 1
        # Each batch says where its time went (`btcstream status` shows the last one's).
        stages = (read_progress(settings, "btcstream_ingest") or {})["history"][-1]["stage_ms"]
        assert set(stages) == {"clock", "tables", "hourly", "forecasts", "alerts"} and stages["tables"] > 0

        # `btcstream compact` (Delta OPTIMIZE, in its own process) while the job writes: every read,
        # before, during and after, sees each stored tick exactly once.
        more = market_ticks(DAY + timedelta(hours=12), hours=2, per_hour=60, seed=21)
        expected = kept + too_late
        compactor = subprocess.Popen([sys.executable, "-m", "btcstream", "compact", "--no-vacuum"], env=job.env(),
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        chunks = [more[i::6] for i in range(6)]
        reads = 0
        while compactor.poll() is None or chunks:
            if chunks:
                produce(settings, chunks.pop())
            raw = read_table(settings, "raw_data")
            keys = list(zip(raw.symbol, pd.to_datetime(raw.event_time, utc=True)))
            assert len(keys) == len(set(keys)), "a reader saw a tick twice during OPTIMIZE"
            assert set((t.symbol, pd.Timestamp(t.event_time)) for t in expected) <= set(keys), "a reader missed a tick"
            reads += 1
            time.sleep(0.5)
        output = compactor.stdout.read()
        assert compactor.returncode == 0, output
        assert reads >= 3
        optimized = [c for c in DeltaTable(settings.storage_url("raw_data")).history() if c["operation"] == "OPTIMIZE"]
        assert optimized, output
        metrics = optimized[0]["operationMetrics"]
        assert int(metrics["numRemovedFiles"]) > int(metrics["numAddedFiles"]), metrics  # small files merged
        job.wait_until(drained(settings), "the job to read the ticks written during OPTIMIZE")
        assert_raw_equals(settings, expected + more)
        assert_hourly_matches(settings, raw_ticks(settings))
        assert_hourly_matches(settings, expected + more)
        assert len(read_table(settings, "quarantine")) == len(MALFORMED)
    finally:
        exit_code = job.stop()
    assert exit_code == 0, job.log_tail()
    assert (read_progress(settings, "btcstream_ingest") or {}).get("stopped_at")


def test_kill_9_at_three_points_then_restart_is_exactly_once(job_settings: Settings, tmp_path: Path):
    # Small batches so each kill lands mid-backlog. Two writers interleaved, out of event-time
    # order, with producer retries and refused records among the ticks.
    settings = job_settings.replace(max_offsets_per_trigger=120)
    rng = random.Random(5)
    ticks = market_ticks(DAY + timedelta(hours=9), hours=3, per_hour=300, seed=9)
    first, second = ticks[: len(ticks) // 2], ticks[len(ticks) // 2:]
    records: list[tick.Tick | bytes] = []
    for a, b in zip(first, second):  # writer 2 replays later hours while writer 1 is still early
        for t in (a, b):
            records.extend([t, t] if rng.random() < 0.05 else [t])
    refused = [b"garbage %d \xff" % i for i in range(12)]
    for index, value in enumerate(refused):
        records.insert(rng.randrange(len(records)), value)
    produce(settings, records)

    job = StreamJob(settings, tmp_path / "stream.log")
    fs = storage_filesystem(settings)
    commits = storage_path(settings, "checkpoints", INGEST, "commits")

    def committed() -> int:
        return len(fs.ls(commits)) if fs.exists(commits) else 0

    try:
        for kill in range(3):
            job.start()
            target = committed() + rng.randint(1, 3)
            job.wait_until(lambda: committed() >= target, f"batch {target} before kill {kill + 1}", timeout=600)
            time.sleep(rng.uniform(0.0, 3.0))  # land anywhere in the next batch
            assert not drained(settings)(), "the backlog was drained before a kill: make batches smaller"
            job.kill9()
        # The last restart re-runs the interrupted batch with the offsets its checkpoint logged, then
        # drains the rest in one batch: batch sizes may change across a restart (and the test is shorter).
        job.settings = settings.replace(max_offsets_per_trigger=100_000)
        job.start()
        job.wait_until(drained(settings), "the job to drain the backlog after the restarts", timeout=900)
    finally:
        exit_code = job.stop()
    assert exit_code == 0, job.log_tail()
    kept = unique_ticks(ticks)
    assert_raw_equals(settings, kept)
    quarantine = read_table(settings, "quarantine")
    assert sorted(quarantine.value) == sorted(refused)  # each refused record exactly once
    assert len(set(zip(quarantine.partition, quarantine.offset))) == len(refused)
    hourly = assert_hourly_matches(settings, raw_ticks(settings))  # an independent recomputation from raw_data
    assert len(hourly) == 6
