"""`btcstream stream` restarts a failed query from its checkpoint (HDFS restarting, the broker gone a
while) with a growing wait, counts each restart where `btcstream status` shows it, gives up after
`--max-restarts` tries in a row with one error line, and never retries a storage root that refuses
writes. The Spark side is replaced by fakes here: what is tested is the supervision loop; the chaos
run (bench/chaos.py) restarts the real HDFS under the real job."""

from __future__ import annotations

import argparse
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from btcstream.commands import stream
from btcstream.errors import StorageNotWritable, StreamingQueryFailed
from btcstream.names import INGEST_QUERY
from btcstream.settings import Settings
from btcstream.streaming import job


@dataclass
class FakeQuery:
    """A streaming query that fails with `error` after `healthy_checks` health checks (None: never)."""

    name: str
    error: Exception | None
    healthy_checks: int = 0
    checks: int = 0

    @property
    def isActive(self) -> bool:  # noqa: N802 - PySpark's name
        self.checks += 1
        return self.error is None or self.checks <= self.healthy_checks

    def exception(self) -> Exception | None:
        return self.error

    def stop(self) -> None:
        pass


@dataclass
class FakeJob:
    """Starts the queries `runs` lists in turn (an exception: that start fails); records restarts."""

    runs: list
    stop: "StopEvent"
    starts: int = 0
    restarts: list[str] = field(default_factory=list)

    def start_queries(self, spark, settings, *, queries, trigger_interval_s):
        run = self.runs[min(self.starts, len(self.runs) - 1)]
        self.starts += 1
        if isinstance(run, Exception):
            raise run
        if run is None:  # healthy until the test is over
            self.stop.set()
            return [FakeQuery(INGEST_QUERY, None)]
        return [run]

    def note_restart(self, spark, name: str, reason: str) -> None:
        self.restarts.append(f"{name}: {reason}")


class StopEvent:
    """The loop's stop event: set by the fake job once a healthy query runs; waits return at once and
    the restart waits (not the health checks) are recorded."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.waits: list[float] = []

    def set(self) -> None:
        self.stopped.set()

    def is_set(self) -> bool:
        return self.stopped.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout != stream.HEALTH_CHECK_S:
            self.waits.append(timeout)
        return self.stopped.is_set()


def supervise(monkeypatch: pytest.MonkeyPatch, settings: Settings, runs: list, max_restarts: int = 3
              ) -> tuple[FakeJob, list[float]]:
    """Run `btcstream stream` over fakes; (the fake job, the restart waits asked for)."""
    stop = StopEvent()
    fake = FakeJob(runs, stop)
    monkeypatch.setattr(stream.threading, "Event", lambda: stop)
    monkeypatch.setattr(stream.signal, "signal", lambda *args: None)
    monkeypatch.setattr("btcstream.clients.spark.spark_session", lambda settings, name: object())
    monkeypatch.setattr(job, "start_queries", fake.start_queries)
    monkeypatch.setattr(job, "stop_queries", lambda queries: None)
    monkeypatch.setattr(job, "note_restart", fake.note_restart)
    stream.run(argparse.Namespace(queries=None, trigger_interval=None, max_restarts=max_restarts), settings)
    return fake, stop.waits


def offline(tmp_path: Path) -> Settings:
    """Settings that reach no service (nothing here starts one)."""
    return Settings(storage_root=f"file://{tmp_path}/store", kafka_bootstrap="localhost:1")


# What a failure in the batch function looks like: py4j's useless first line, the JVM cause inside.
HDFS_DOWN = RuntimeError("An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n"
                         "  ...\nCaused by: java.net.ConnectException: Call From host to localhost:9000 failed on "
                         "connection exception: Connection refused\n\tat org.apache.hadoop.ipc.Client.call")


def test_a_failed_query_is_restarted_with_growing_waits_and_counted(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    failing = FakeQuery(INGEST_QUERY, HDFS_DOWN, healthy_checks=2)
    # Fails; the first restart meets HDFS still down; the second runs.
    fake, waits = supervise(monkeypatch, offline(tmp_path), [failing, HDFS_DOWN, None])
    assert fake.starts == 3
    assert waits == list(stream.RESTART_BACKOFF_S[:2])
    assert len(fake.restarts) == 2
    assert all(reason.endswith(": java.net.ConnectException: Call From host to localhost:9000 failed on connection "
                               "exception: Connection refused") for reason in fake.restarts), fake.restarts


def test_gives_up_after_max_restarts_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(StreamingQueryFailed) as failed:
        supervise(monkeypatch, offline(tmp_path), [FakeQuery(INGEST_QUERY, HDFS_DOWN)], max_restarts=2)
    message = str(failed.value)
    assert "\n" not in message and "Connection refused" in message and "after 2 restarts" in message
    assert "Python Proxy" not in message  # the JVM's cause, not py4j's wrapper
    assert "btcstream stream" in message  # the fix: run it again, it resumes from its checkpoint


def test_no_restart_when_asked_for_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(StreamingQueryFailed) as failed:
        supervise(monkeypatch, offline(tmp_path), [FakeQuery(INGEST_QUERY, HDFS_DOWN)], max_restarts=0)
    assert "restarts" not in str(failed.value)


def test_a_storage_root_refusing_writes_is_never_retried(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    full = OSError("java.io.IOException: No space left on device")
    with pytest.raises(StorageNotWritable):
        supervise(monkeypatch, offline(tmp_path), [FakeQuery(INGEST_QUERY, full), None])
