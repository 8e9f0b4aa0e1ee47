"""`btcstream status --watch`: a refreshing view of tables, rates and lag that ends once the backlog is drained."""

from __future__ import annotations

from btcstream.commands import status as status_command
from btcstream.names import DATASETS, INGEST_QUERY
from btcstream.settings import Settings
from btcstream.streaming import status as streaming_status
from btcstream.streaming.status import HourlyStatus, QueryStatus, StatusReport, TableStatus

UNUSED = Settings(storage_root="file:///tmp/unused")


def query(state: str = "running", lag: int | None = 0, rate: float | None = 1000.0,
          error: str | None = None) -> QueryStatus:
    return QueryStatus(name=INGEST_QUERY, state=state, updated_at=None, last_batch_id=3, input_rows_per_s=rate,
                       processed_rows_per_s=rate, batch_duration_ms=900, lag_offsets=lag, error=error)


def report(lag: int | None, state: str = "running", rate: float | None = 1000.0,
           warnings: list[str] | None = None, error: str | None = None) -> StatusReport:
    return StatusReport(tables=[TableStatus(name) for name in DATASETS], queries=[query(state, lag, rate, error)],
                        hourly=HourlyStatus(1, 2, 0), warnings=warnings or [])


def test_caught_up_means_the_job_ran_and_nothing_is_left_in_kafka() -> None:
    assert status_command.caught_up([query(lag=0)])
    assert status_command.caught_up([query("stopped", lag=0)])  # a stopped job that read everything
    assert not status_command.caught_up([query(lag=5)])
    assert not status_command.caught_up([query("never started", lag=0)])
    assert not status_command.caught_up([query(lag=None)])  # Kafka unreachable: unknown is not caught up


def test_progress_line_estimates_the_time_to_drain() -> None:
    assert status_command.progress_line([query(lag=190_000)]) == (
        "lag 190,000 offsets, draining at 1,000 rows/s or more: about 190 s to catch up")
    assert "start `btcstream stream`" in status_command.progress_line([query("stopped", lag=10)])
    assert status_command.progress_line([query(lag=None)]).startswith("lag unknown")


def test_watch_refreshes_until_the_backlog_is_drained(monkeypatch, capsys) -> None:
    unreachable = "cannot reach Kafka at localhost:9092 (...): Kafka lag unknown"
    snapshots = iter([report(40_000), report(None, warnings=[unreachable]), report(12_000), report(0)])
    monkeypatch.setattr(streaming_status, "status_report", lambda settings: next(snapshots))

    code = status_command.watch(UNUSED, every_s=0.01)

    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("caught up: the job has read all the topic holds")
    assert out.count(INGEST_QUERY) == 4 and out.count("hourly rows: 1 open, 2 final") == 4  # one view per refresh
    assert "lag 40,000 offsets" in out and "lag 12,000 offsets" in out
    assert f"warning: {unreachable}" in out and "lag unknown" in out  # an unknown lag keeps watching


def test_watch_stops_on_a_failed_query(monkeypatch, capsys) -> None:
    failed = report(10, state="failed", error="StreamingQueryException: boom\n\tat ...")
    monkeypatch.setattr(streaming_status, "status_report", lambda settings: failed)
    assert status_command.watch(UNUSED, every_s=0.01) == 1
    assert "  error: StreamingQueryException: boom" in capsys.readouterr().out


def test_watch_gives_up_after_max_refreshes_when_still_behind(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(streaming_status, "status_report", lambda settings: calls.append(1) or report(10))
    assert status_command.watch(UNUSED, every_s=0.0, max_refreshes=3) == 1
    assert len(calls) == 3
