"""The streaming job on a storage root that fills up or turns read-only: one clear line, a clean stop,
and nothing lost once the storage is writable again.

The storage root is `file://` on a small tmpfs mounted by the test (needs root, or the test is
skipped saying so). Root ignores file permissions, so the "not permitted" case is exercised as a
read-only remount (EROFS), which Hadoop reports the same way for a local root. Kafka is the
shared local broker with fresh topics (`test_settings`); the job runs as `btcstream stream`.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from btcstream.commands.stream import failure_text, storage_refusal
from btcstream.ingest import tick
from btcstream.ingest.publisher import ensure_topic
from btcstream.settings import Settings
from btcstream.streaming.job import root_cause_line
from helpers.stream_job import StreamJob, drained, produce, read_table


START = datetime(2025, 2, 14, 10, tzinfo=timezone.utc)
ROUND_TICKS = 3_000  # ticks per round of production while waiting for the disk to fill
MAX_ROUNDS = 40
HEADROOM = 256 * 1024  # bytes left free by the filler file once the tables exist
DRAIN_TIMEOUT_S = 600.0  # a first batch creates every table: minutes on 2 busy cores


# --- what the CLI says for each refusal (no JVM) -------------------------------------------------

HDFS_QUOTA = ("org.apache.hadoop.hdfs.protocol.DSQuotaExceededException: The DiskSpace quota of /bitcoin is exceeded: "
              "quota = 1048576 B = 1 MB but diskspace consumed = 1179648 B = 1.13 MB")
HDFS_DENIED = ("org.apache.hadoop.security.AccessControlException: Permission denied: user=bob, access=WRITE, "
               "inode=\"/bitcoin/raw_data\":hdfs:supergroup:drwxr-xr-x")
HDFS_NO_ROOM = ("org.apache.hadoop.ipc.RemoteException(java.io.IOException): File /bitcoin/raw_data/part-0.parquet "
                "could only be written to 0 of the 1 minReplication nodes. There are 1 datanode(s) running")


@pytest.mark.parametrize(("cause", "kind", "fix"), [
    (HDFS_QUOTA, "over quota", "hdfs dfsadmin -setSpaceQuota"),
    (HDFS_DENIED, "not permitted", "give this user write access"),
    (HDFS_NO_ROOM, "full", "free space there"),
    ("java.io.FileNotFoundException: /data/x/offsets/.7.tmp (Read-only file system)", "read-only", "remount"),
])
def test_each_refusal_of_the_storage_root_is_one_line_with_its_fix(cause: str, kind: str, fix: str) -> None:
    settings = Settings(storage_root="hdfs://namenode:9000/bitcoin")
    text = f"py4j.Py4JException: An exception was raised by the Python Proxy\n  at x\nCaused by: {cause}\n  at y"
    refusal = storage_refusal(settings, text)
    assert refusal is not None and refusal.kind == kind
    message = str(refusal)
    assert "\n" not in message and message.startswith(f"storage root hdfs://namenode:9000/bitcoin is {kind} (")
    assert fix in message and "btcstream stream" in message and "nothing is lost" in message
    assert root_cause_line(text) == cause


def test_other_failures_are_not_blamed_on_the_storage_root() -> None:
    assert storage_refusal(Settings(), "org.apache.kafka.common.errors.TimeoutException: Timed out waiting") is None


def test_the_cause_chain_of_a_jvm_failure_is_searched() -> None:
    class JavaError:  # what py4j's Py4JJavaError carries: str() says only "An error occurred while calling"
        def __init__(self, text: str, cause: "JavaError | None" = None) -> None:
            self.text, self.cause = text, cause

        def toString(self) -> str:  # noqa: N802 (Java's names)
            return self.text

        def getCause(self) -> "JavaError | None":  # noqa: N802
            return self.cause

    error = RuntimeError("An error occurred while calling o71.start.")
    error.java_exception = JavaError("org.apache.spark.SparkException: Job aborted",
                                     JavaError("java.io.IOException: No space left on device"))
    assert storage_refusal(Settings(), failure_text(error)).kind == "full"


# --- the streaming job on a small tmpfs ------------------------------------------------------------

def _mount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True, capture_output=True)


def _remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True, capture_output=True)


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs of this test's own, unmounted afterwards."""
    target = tmp_path / "volume"
    target.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root: disk-full behaviour is documented in docs/reliability.md")
    try:
        _mount(target, "size=8m")
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot mount a tmpfs here ({error.stderr.decode().strip()}): see docs/reliability.md")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.fixture
def volume_settings(test_settings: Settings, small_volume: Path) -> Settings:
    """Fresh topics on the shared broker; the storage root on the small volume."""
    settings = test_settings.replace(storage_root=f"file://{small_volume}/bitcoin", spark_master="local[2]",
                                     trigger_interval_s=1.0, forecast_models="ewma")
    ensure_topic(settings, settings.topic)
    return settings


def ticks_from(index: int, count: int, rng: random.Random) -> list[tick.Tick]:
    """`count` BTCUSDT ticks one second apart, the first at START + `index` seconds."""
    ticks = []
    for i in range(index, index + count):
        moment = START + timedelta(seconds=i)
        mid = 97_000 + rng.gauss(0, 50)
        ticks.append(tick.Tick(symbol="BTCUSDT", event_time=tick.iso_utc(moment), timestamp=tick.iso_utc(moment),
                               bid_price=mid - 0.5, ask_price=mid + 0.5, bid_qty=rng.uniform(0.01, 3.0),
                               ask_qty=rng.uniform(0.01, 3.0), volume_24h=1.5e4, high_24h=mid * 1.01,
                               low_24h=mid * 0.99))
    return ticks


def fill(volume: Path, leave: int) -> Path:
    """Write a filler file that leaves about `leave` bytes free on `volume`."""
    filler = volume / "filler"
    free = shutil.disk_usage(volume).free - leave
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(free, 0))
    return filler


def last_line(log_file: Path) -> str:
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def feed_until_exit(job: StreamJob, settings: Settings, produced: list[tick.Tick], rng: random.Random) -> None:
    """Produce rounds of new ticks until the job exits (it must, within MAX_ROUNDS)."""
    for _ in range(MAX_ROUNDS):
        batch = ticks_from(len(produced), ROUND_TICKS, rng)
        produce(settings, batch)
        produced.extend(batch)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and job.alive() and not drained(settings)():
            time.sleep(1)
        if not job.alive():
            return
    raise AssertionError(f"the job still runs after {MAX_ROUNDS * ROUND_TICKS} ticks on a full volume:\n{job.log_tail()}")


def assert_exactly_once(settings: Settings, produced: list[tick.Tick]) -> None:
    raw = read_table(settings, "raw_data")
    stored = list(zip(raw["symbol"], pd.to_datetime(raw["event_time"], utc=True)))
    expected = {(t.symbol, pd.Timestamp(t.event_time).tz_convert("UTC")) for t in produced}
    assert len(stored) == len(set(stored)), "a tick is stored twice in raw_data"
    missing = expected - set(stored)
    assert not missing, f"{len(missing)} of {len(produced)} ticks lost, e.g. {sorted(missing)[:3]}"
    assert len(stored) == len(expected)


def start_and_drain(job: StreamJob, settings: Settings) -> None:
    job.start()
    job.wait_until(drained(settings), "the job to catch up with the topic", timeout=DRAIN_TIMEOUT_S)


def run_until_refused(job: StreamJob, settings: Settings, produced: list[tick.Tick], rng: random.Random,
                      refuse) -> str:
    """Start `job`, let it store what is in the topic, call `refuse()` (fill or remount the volume), feed it
    until it exits; its exit code must be 2; its last line."""
    try:
        start_and_drain(job, settings)
        refuse()
        feed_until_exit(job, settings, produced, rng)
    finally:
        job.stop()
    assert job.process.returncode == 2, job.log_tail()
    return last_line(job.log_file)


@pytest.mark.integration
def test_full_then_read_only_root_stops_with_one_line_and_resumes_losing_nothing(
        volume_settings: Settings, small_volume: Path, tmp_path: Path) -> None:
    """One job after another on the same root: it fills up (stop), space comes back (resume), it turns
    read-only (stop), writable again (resume); every tick produced is stored exactly once."""
    settings, rng = volume_settings, random.Random(15)
    produced = ticks_from(0, 500, rng)
    produce(settings, produced)
    filler: list[Path] = []
    line = run_until_refused(StreamJob(settings, tmp_path / "stream-1.log"), settings, produced, rng,
                             lambda: filler.append(fill(small_volume, HEADROOM)))
    assert line == (f"btcstream: error: storage root {settings.storage_root} is full (No space left on device): "
                    f"free space there or grow the volume, then run `btcstream stream` again; it resumes from its "
                    f"checkpoint and nothing is lost")

    filler[0].unlink()
    _remount(small_volume, "size=64m")  # the space is back, and more
    more = ticks_from(len(produced), 200, rng)
    produce(settings, more)
    produced.extend(more)
    line = run_until_refused(StreamJob(settings, tmp_path / "stream-2.log"), settings, produced, rng,
                             lambda: _remount(small_volume, "ro"))
    assert line.startswith(f"btcstream: error: storage root {settings.storage_root} is read-only "), line
    assert "make it writable again" in line and "nothing is lost" in line, line

    _remount(small_volume, "rw")
    resumed = StreamJob(settings, tmp_path / "stream-3.log")
    try:
        start_and_drain(resumed, settings)
    finally:
        assert resumed.stop() == 0, resumed.log_tail()
    assert_exactly_once(settings, produced)


def test_a_failure_in_the_python_batch_function_is_named_by_its_python_exception() -> None:
    # As the job logs it when HDFS is down under delta-rs (ANSI colours and all).
    text = ("py4j.Py4JException: An exception was raised by the Python Proxy. Return Message: Traceback (most "
            "recent call last):\n  File \"/x/job.py\", line 173, in __call__\n    counts = self.writer(kafka_rows)\n"
            "OSError: Generic HdfsObjectStore error\n          \x1b[31m↳\x1b[0m IO error occurred while communicating "
            "with HDFS\n           \x1b[31m↳\x1b[0m Connection refused (os error 111)\n\n\tat py4j.Protocol.x(P.java:1)")
    assert root_cause_line(text) == "OSError: Generic HdfsObjectStore error: Connection refused (os error 111)"
    wrapped = f"org.apache.spark.SparkException: batch failed\n\tat a\nCaused by: {text}"
    assert root_cause_line(wrapped) == "OSError: Generic HdfsObjectStore error: Connection refused (os error 111)"
    java_inside = f"{wrapped}\nCaused by: java.io.IOException: No space left on device\n\tat b"
    assert root_cause_line(java_inside) == "java.io.IOException: No space left on device"
