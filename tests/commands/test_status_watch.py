"""`btcstream status --watch`: a refreshing view of rates and lag that ends once the backlog is drained."""

from __future__ import annotations

from pathlib import Path

import pytest

from btcstream.commands import status as status_command
from btcstream.settings import Settings
from btcstream.streaming import status as streaming_status
from btcstream.streaming.status import QueryStatus


def query(name: str, state: str = "running", lag: int | None = 0, rate: float | None = 1000.0,
          lag_files: int | None = None) -> QueryStatus:
    return QueryStatus(name=name, state=state, updated_at=None, last_batch_id=3, input_rows_per_s=rate,
                       processed_rows_per_s=rate, batch_duration_ms=900, watermark=None, lag_offsets=lag,
                       late_rows_total=0, quarantined_rows_total=0, lag_files=lag_files)


def job(raw_lag: int, hourly_files: int = 0, state: str = "running") -> list[QueryStatus]:
    return [query("btcstream_quarantine", state, raw_lag), query("btcstream_raw", state, raw_lag, 19_000.0),
            query("btcstream_hourly", state, None, 500.0, lag_files=hourly_files)]


def test_caught_up_means_nothing_left_in_kafka_or_unread_raw_files() -> None:
    assert status_command.caught_up(job(0))
    assert not status_command.caught_up(job(5))
    assert not status_command.caught_up(job(0, hourly_files=2))
    assert not status_command.caught_up(job(0, state="never started"))


def test_progress_line_estimates_the_time_to_drain() -> None:
    assert status_command.progress_line(job(190_000)) == (
        "lag 380,000 offsets, draining at 1,000 rows/s or more: about 190 s to catch up")
    assert "start `btcstream stream`" in status_command.progress_line(job(10, state="stopped"))


def test_watch_refreshes_until_the_backlog_is_drained(monkeypatch, capsys) -> None:
    snapshots = iter([job(40_000), job(12_000), job(0, hourly_files=1), job(0)])
    monkeypatch.setattr(streaming_status, "query_statuses", lambda settings: next(snapshots))

    code = status_command.watch(Settings(storage_root="file:///tmp/unused"), every_s=0.01)

    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("caught up: every query has read all the topic holds")
    assert out.count("btcstream_raw") == 4  # one table per refresh
    assert "lag 80,000 offsets" in out and "lag 24,000 offsets" in out


def test_watch_stops_on_a_failed_query(monkeypatch) -> None:
    failed = job(10)
    failed[1] = query("btcstream_raw", "failed", 10)
    monkeypatch.setattr(streaming_status, "query_statuses", lambda settings: failed)
    assert status_command.watch(Settings(storage_root="file:///tmp/unused"), every_s=0.01) == 1
