"""The hourly upsert is run again when a concurrent commit (an OPTIMIZE by `btcstream compact`)
conflicts with it, whichever of delta-spark's conflict classes Delta raises; no JVM."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from delta import exceptions

from btcstream.streaming import hourly_upserts
from btcstream.streaming.hourly_upserts import CONFLICT_RETRIES, HourlyCounts, upsert_hours

HOUR = datetime(2025, 2, 14, 9, tzinfo=timezone.utc)
DONE = HourlyCounts(hours=1, opened=1, updated=0, revised=0, finalised=0)


def conflicting(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> list[int]:
    """`_upsert_once` raising `errors` in turn, then succeeding; the list of calls made."""
    calls: list[int] = []

    def once(*args, **kwargs) -> HourlyCounts:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return DONE

    monkeypatch.setattr(hourly_upserts, "_upsert_once", once)
    monkeypatch.setattr(hourly_upserts.time, "sleep", lambda seconds: None)
    return calls


@pytest.mark.parametrize("conflict", [exceptions.ConcurrentDeleteReadException, exceptions.ConcurrentAppendException,
                                      exceptions.ConcurrentDeleteDeleteException, exceptions.MetadataChangedException,
                                      exceptions.DeltaConcurrentModificationException])
def test_each_kind_of_commit_conflict_is_retried(monkeypatch: pytest.MonkeyPatch, conflict: type[Exception]) -> None:
    calls = conflicting(monkeypatch, [conflict(message="files were removed by a concurrent OPTIMIZE")])
    counts = upsert_hours(None, "raw", "hourly", [("BTCUSDT", HOUR)], HOUR + timedelta(hours=1), timedelta(minutes=10))
    assert counts == DONE and len(calls) == 2


def test_conflicts_beyond_the_retries_and_other_errors_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    lost = [exceptions.ConcurrentDeleteReadException(message="lost")] * CONFLICT_RETRIES
    conflicting(monkeypatch, lost)
    with pytest.raises(exceptions.ConcurrentDeleteReadException):
        upsert_hours(None, "raw", "hourly", [("BTCUSDT", HOUR)], HOUR, timedelta(minutes=10))
    calls = conflicting(monkeypatch, [ValueError("not a conflict")])
    with pytest.raises(ValueError):
        upsert_hours(None, "raw", "hourly", [("BTCUSDT", HOUR)], HOUR, timedelta(minutes=10))
    assert len(calls) == 1
