"""Integration tests of the streaming job on the real local Kafka and HDFS, run as `btcstream stream`.

The job runs in its own driver process (as in production, and because a SparkSession's jars are
fixed per process: another test may already hold one without the Kafka connector). Each test
writes to a fresh topic and a fresh HDFS sub-root, produces with kafka-python, waits on the
checkpoints and persisted progress, and compares with an independent pandas computation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from btcstream.ingest import tick
from btcstream.clients.kafka import kafka_python_options
from btcstream.settings import Settings
from btcstream.storage import checkpoints, compaction, manifest
from btcstream.storage.filesystem import read_parquet, storage_filesystem, storage_path
from btcstream.streaming import status
from helpers.hourly import assert_hourly_equal, independent_hourly

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]  # the stream subprocess runs from the repository
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
]
STARTUP_TIMEOUT_S = 240.0


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


def produce(settings: Settings, records: list[tick.Tick | bytes]) -> None:
    """Send ticks (keyed by symbol) and raw byte values, in this order, and wait for the acks."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **kafka_python_options(settings))
    try:
        for record in records:
            if isinstance(record, tick.Tick):
                producer.send(settings.topic, key=record.symbol.encode(), value=record.to_json())
            else:
                producer.send(settings.topic, value=record)
        producer.flush(timeout=30)
    finally:
        producer.close()


class StreamJob:
    """`python -m btcstream stream` in its own process group (so kill -9 takes the JVM too)."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        self.settings = settings
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        values = {"KAFKA_BOOTSTRAP": s.kafka_bootstrap, "TOPIC": s.topic, "STORAGE_ROOT": s.storage_root,
                  "SPARK_MASTER": s.spark_master, "TRIGGER_INTERVAL_S": str(s.trigger_interval_s),
                  "ALLOWED_LATENESS": s.allowed_lateness, "MAX_OFFSETS_PER_TRIGGER": str(s.max_offsets_per_trigger),
                  "WEBHDFS_PORT": str(s.webhdfs_port), "CACHE_DIR": str(s.cache_dir), "STATE_DIR": str(s.state_dir)}
        env = {k: v for k, v in os.environ.items() if not k.startswith("BTCSTREAM_")}
        env.update({f"BTCSTREAM_{key}": value for key, value in values.items()})
        return env

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "btcstream", "stream"], env=self.env(),
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, wait for a clean exit, return the exit code (kill -9 as a last resort)."""
        if not self.alive():
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"the stream job exited while waiting for {what}:\n{self.log_tail()}")
            try:
                if condition():
                    return
            except (FileNotFoundError, json.JSONDecodeError, IndexError, KafkaError):
                pass  # checkpoint or progress file being written, or the shared broker restarting
            time.sleep(1.0)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log_tail()}")


def drained(settings: Settings, checkpoint: str) -> Callable[[], bool]:
    """True once the checkpoint's last committed batch reached the end of every topic partition."""
    def check() -> bool:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
        try:
            parts = consumer.partitions_for_topic(settings.topic) or set()
            ends = consumer.end_offsets([TopicPartition(settings.topic, p) for p in parts])
        finally:
            consumer.close()
        committed = checkpoints.committed_kafka_offsets(settings, checkpoint) or {}
        return all(committed.get(tp.partition, 0) >= end for tp, end in ends.items())
    return check


def read_dataset(settings: Settings, dataset: str) -> pd.DataFrame:
    """Every committed row of a dataset, JVM-free (pyarrow over WebHDFS, committed files only)."""
    fs = storage_filesystem(settings)
    frames = []
    for path in manifest.committed_files(fs, storage_path(settings, dataset)):
        frames.append(read_parquet(fs, path).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def hourly_rows(settings: Settings) -> int:
    return len(read_dataset(settings, "hourly_metrics"))


def unique_ticks(ticks: list[tick.Tick]) -> list[tick.Tick]:
    """One tick per (symbol, event_time), the first seen (what deduplication keeps)."""
    seen: dict[tuple[str, str], tick.Tick] = {}
    for t in ticks:
        seen.setdefault((t.symbol, t.event_time), t)
    return list(seen.values())


def assert_raw_equals(settings: Settings, expected: list[tick.Tick]) -> pd.DataFrame:
    raw = read_dataset(settings, "raw_data")
    keys = list(zip(raw.symbol, pd.to_datetime(raw.event_time, utc=True)))
    want = sorted((t.symbol, pd.Timestamp(t.event_time).tz_convert("UTC")) for t in expected)
    assert len(keys) == len(set(keys)), "raw_data holds a tick twice"
    assert sorted(keys) == want
    by_key = {(t.symbol, pd.Timestamp(t.event_time).tz_convert("UTC")): t for t in expected}
    mids = [(by_key[k].bid_price + by_key[k].ask_price) / 2 for k in keys]
    np.testing.assert_allclose(raw.mid_price, mids, rtol=1e-12)
    return raw


def hourly_frame(settings: Settings) -> pd.DataFrame:
    frame = read_dataset(settings, "hourly_metrics")
    frame = frame[[c for c in frame.columns if c != "date"]]
    for column in ("window_start", "window_end"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None)
    return frame


@pytest.fixture
def job_settings(test_settings: Settings) -> Settings:
    settings = test_settings.replace(spark_master="local[2]", trigger_interval_s=1.0, allowed_lateness="10 minutes")
    create_topic(settings)
    return settings


def test_duplicates_out_of_order_late_and_malformed_ticks_then_compaction(job_settings: Settings, tmp_path: Path):
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
        job.wait_until(drained(settings, "raw"), "raw to read phase 1")
        job.wait_until(drained(settings, "quarantine"), "quarantine to read phase 1")

        # Phase 2a: the watermark is now max(event_time) - 10 min (about 11:49).
        newest = max(hours_9_to_11, key=lambda t: t.event_time)
        watermark = datetime.fromisoformat(newest.event_time) - timedelta(minutes=10)
        too_late = [make_tick("BTCUSDT", DAY + timedelta(hours=10, minutes=m, seconds=30), 97_100.0, rng)
                    for m in (1, 17, 33, 48)]
        in_time = make_tick("ETHUSDT", watermark + timedelta(minutes=5, milliseconds=1), 2_705.0, rng)
        assert not any(t.event_time == in_time.event_time for t in hours_9_to_11)
        produce(settings, [*too_late, newest, in_time])  # `newest` again: a duplicate within the watermark
        job.wait_until(drained(settings, "raw"), "raw to read phase 2a")

        # Phase 2b: ticks at 14:30 push the watermark past 12:00, closing hours 9, 10 and 11.
        pushers = [make_tick(symbol, DAY + timedelta(hours=14, minutes=30), mid, rng) for symbol, mid in SYMBOLS.items()]
        produce(settings, pushers)
        job.wait_until(lambda: hourly_rows(settings) >= 6, "hourly rows of hours 9-11")

        kept = unique_ticks(hours_9_to_11) + [in_time]
        assert_raw_equals(settings, kept + pushers)
        quarantine = read_dataset(settings, "quarantine")
        assert len(quarantine) == len(MALFORMED)
        assert set(quarantine.reason) == {"unparseable JSON", "missing price", "price not finite or <= 0",
                                          "ask below bid", "unknown schema version"}
        assert sorted(quarantine.value) == sorted(v.decode() for v in MALFORMED)
        assert_hourly_equal(hourly_frame(settings), independent_hourly(kept))

        # Late ticks are counted where `btcstream status` (another process) reads them.
        job.wait_until(lambda: {s.name: s.lag_offsets for s in status.query_statuses(settings)}["btcstream_raw"] == 0,
                       "status to show no lag")
        by_name = {s.name: s for s in status.query_statuses(settings)}
        assert by_name["btcstream_raw"].late_rows_total == len(too_late)
        assert by_name["btcstream_quarantine"].quarantined_rows_total == len(MALFORMED)
        assert by_name["btcstream_raw"].lag_offsets == 0
        assert by_name["btcstream_raw"].state == "running"
        # The hourly query's lag: raw_data files (several by now) that no hourly batch has taken.
        job.wait_until(lambda: {s.name: s.lag_files for s in status.query_statuses(settings)}["btcstream_hourly"] == 0,
                       "status to show the hourly query has taken every raw_data file")

        # Compaction while the job runs: one file per closed hour, same rows, originals deleted.
        fs = storage_filesystem(settings)
        raw_root = storage_path(settings, "raw_data")
        before = manifest.committed_files(fs, raw_root)
        reports = compaction.compact(settings, ["raw_data"], min_files=1, grace=timedelta(0))
        assert reports[0].partitions_compacted == 3  # hours 9, 10, 11; hour 14 is still open
        after = manifest.committed_files(fs, raw_root)
        assert sum("/hour=14/" not in p for p in after) == 3
        assert all(not fs.exists(p) for p in set(before) - set(after))
        assert_raw_equals(settings, kept + pushers)

        # Spark reads the same committed rows through committed_urls.
        from btcstream.clients.spark import spark_session

        spark = spark_session(settings, "test-streaming-reader", with_kafka=False)
        urls = manifest.committed_urls(settings, "raw_data")
        frame = spark.read.option("basePath", settings.storage_url("raw_data")).parquet(*urls)
        assert frame.count() == len(kept) + len(pushers)
        assert frame.select("symbol", "event_time").distinct().count() == len(kept) + len(pushers)

        # The hourly query keeps working after the raw files it already read were deleted.
        produce(settings, [make_tick(s, DAY + timedelta(hours=16, minutes=30), m, rng) for s, m in SYMBOLS.items()])
        job.wait_until(lambda: hourly_rows(settings) >= 8, "hourly rows of hour 14")
        assert_hourly_equal(hourly_frame(settings), independent_hourly(kept + pushers))
    finally:
        exit_code = job.stop()
    assert exit_code == 0, job.log_tail()
    states = {s.name: s.state for s in status.query_statuses(settings)}
    assert set(states.values()) == {"stopped"}, states


def test_kill_9_mid_stream_and_restart_is_exactly_once(job_settings: Settings, tmp_path: Path):
    # Small batches so the kill lands mid-backlog; 30 minutes of lateness covers the partitions'
    # uneven progress within a batch, so no tick is late and the expected result is exact.
    settings = job_settings.replace(max_offsets_per_trigger=150, allowed_lateness="30 minutes")
    rng = random.Random(5)
    ticks = market_ticks(DAY + timedelta(hours=9), hours=3, per_hour=200, seed=9)
    records: list[tick.Tick] = []
    for t in ticks:  # each tick sent once or, a retry, twice in a row
        records.extend([t, t] if rng.random() < 0.05 else [t])
    pushers = [make_tick(symbol, DAY + timedelta(hours=14, minutes=45), mid, rng) for symbol, mid in SYMBOLS.items()]
    produce(settings, records + pushers)

    job = StreamJob(settings, tmp_path / "stream.log")
    job.start()
    fs = storage_filesystem(settings)
    commits = storage_path(settings, "checkpoints", "raw", "commits")
    try:
        job.wait_until(lambda: fs.exists(commits) and len(fs.ls(commits)) >= 2, "two committed raw batches")
        assert not drained(settings, "raw")(), "the backlog was drained before the kill: make batches smaller"
        job.kill9()
        first_run_batches = len(fs.ls(commits))

        job.start()
        job.wait_until(drained(settings, "raw"), "raw to drain the backlog after the restart", timeout=600)
        job.wait_until(lambda: hourly_rows(settings) >= 6, "hourly rows of hours 9-11", timeout=300)
    finally:
        exit_code = job.stop()
    assert exit_code == 0, job.log_tail()
    assert len(fs.ls(commits)) > first_run_batches
    kept = unique_ticks(ticks)
    assert_raw_equals(settings, kept + pushers)
    assert_hourly_equal(hourly_frame(settings), independent_hourly(kept))
