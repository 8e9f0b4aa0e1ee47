"""The job's progress document: a batch re-run after a crash is counted once, the job's counts land
in the totals, and what was noted for a batch is used once (JVM-free)."""

from __future__ import annotations

import json
from pathlib import Path

from btcstream.names import INGEST_QUERY
from btcstream.settings import Settings
from btcstream.streaming import progress


def spark_progress(batch_id: int, input_rows: int) -> dict:
    """The few fields of Spark's StreamingQueryProgress the document reads."""
    return {"name": INGEST_QUERY, "batchId": batch_id, "numInputRows": input_rows, "timestamp": f"t{batch_id}",
            "durationMs": {"triggerExecution": 100 + batch_id}}


def test_totals_count_a_rerun_batch_once_and_sum_the_jobs_counts() -> None:
    counts = {0: {"input_rows": 10, "inserted_rows": 8, "duplicate_rows": 1, "quarantined_rows": 1},
              1: {"input_rows": 5, "inserted_rows": 3, "late_rows": 2, "duplicate_rows": 2, "hourly_revised": 1},
              2: {"input_rows": 3, "inserted_rows": 3, "hourly_opened": 2, "hourly_finalised": 1}}
    document = None
    for batch_id in (0, 1, 1, 2):  # batch 1 re-run after a crash
        document = progress.merge(document, spark_progress(batch_id, 99), counts[batch_id])
    totals = document["totals"]
    assert totals["batches"] == 3
    assert (totals["input_rows"], totals["inserted_rows"], totals["duplicate_rows"]) == (18, 14, 3)
    assert (totals["late_rows"], totals["quarantined_rows"]) == (2, 1)
    assert (totals["hourly_opened"], totals["hourly_revised"], totals["hourly_finalised"]) == (2, 1, 1)
    assert [h["batch_id"] for h in document["history"]] == [0, 1, 2]  # the re-run replaced its summary
    assert document["latest"]["batchId"] == 2 and document["last_batch_id"] == 2


def test_without_the_jobs_counts_input_rows_come_from_spark() -> None:
    document = progress.merge(None, spark_progress(0, 42))
    assert document["totals"]["input_rows"] == 42 and document["totals"]["inserted_rows"] == 0


def test_the_writer_persists_noted_counts_with_their_batch_and_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(storage_root=f"file://{tmp_path}")
    writer = progress.ProgressWriter(settings)
    writer.note_batch(INGEST_QUERY, 0, {"input_rows": 4, "inserted_rows": 4})
    writer.record(spark_progress(0, 4))
    writer.record(spark_progress(0, 4))  # Spark reports the same batch again: nothing added
    restarted = progress.ProgressWriter(settings)  # a new process reads the document back
    restarted.note_batch(INGEST_QUERY, 1, {"input_rows": 6, "inserted_rows": 5, "duplicate_rows": 1})
    restarted.record(spark_progress(1, 6))

    stored = progress.read_progress(settings, INGEST_QUERY)
    assert stored == json.loads(Path(progress.progress_path(settings, INGEST_QUERY)).read_text())
    assert (stored["totals"]["batches"], stored["totals"]["input_rows"], stored["totals"]["inserted_rows"],
            stored["totals"]["duplicate_rows"]) == (2, 10, 9, 1)


def test_each_batch_keeps_where_its_time_went_and_totals_do_not_sum_it(tmp_path: Path) -> None:
    writer = progress.ProgressWriter(Settings(storage_root=f"file://{tmp_path}"))
    writer.note_batch(INGEST_QUERY, 0, {"input_rows": 4}, {"clock": 40, "tables": 3100, "hourly": 2400, "alerts": 5})
    writer.record(spark_progress(0, 4))
    writer.note_batch(INGEST_QUERY, 1, {"input_rows": 2})  # a batch noted without its stage times
    writer.record(spark_progress(1, 2))

    stored = progress.read_progress(writer.settings, INGEST_QUERY)
    first, second = stored["history"]
    # In the order the batch runs them (progress.BATCH_STAGES), whatever order they were noted in.
    assert list(first["stage_ms"].items()) == [("clock", 40), ("tables", 3100), ("hourly", 2400), ("alerts", 5)]
    assert "stage_ms" not in second
    assert not any("stage" in key or key in progress.BATCH_STAGES for key in stored["totals"])


def test_a_document_that_cannot_be_read_is_neither_replaced_nor_raised_and_nothing_noted_is_lost(
        tmp_path: Path, monkeypatch, caplog) -> None:
    settings = Settings(storage_root=f"file://{tmp_path}")
    first = progress.ProgressWriter(settings)
    first.note_batch(INGEST_QUERY, 0, {"input_rows": 7, "inserted_rows": 7})
    first.record(spark_progress(0, 7))

    # A restarted job meets the NameNode in safe mode: the stored document cannot be read (as
    # pyarrow's "Zero blocklocations ... Name node is in safe mode" that once ended `btcstream stream`).
    real_read = progress.read_progress
    unreadable = [True]

    def read(settings_, name):
        if unreadable[0]:
            raise RuntimeError("Zero blocklocations for /bitcoin/checkpoints/progress/x.json. Name node is in safe mode.")
        return real_read(settings_, name)

    monkeypatch.setattr(progress, "read_progress", read)
    writer = progress.ProgressWriter(settings)
    writer.mark_started(INGEST_QUERY)
    writer.note_restart(INGEST_QUERY, "java.net.ConnectException: Connection refused")
    writer.note_batch(INGEST_QUERY, 1, {"input_rows": 5, "inserted_rows": 4, "duplicate_rows": 1})
    writer.record(spark_progress(1, 5))
    stored = real_read(settings, INGEST_QUERY)
    assert stored["totals"]["input_rows"] == 7 and "restarts" not in stored  # not replaced by a fresh document
    assert "could not read streaming progress" in caplog.text

    unreadable[0] = False  # HDFS is back: what was kept is folded in at the next event
    writer.note_batch(INGEST_QUERY, 2, {"input_rows": 2, "inserted_rows": 2})
    writer.record(spark_progress(2, 2))
    stored = real_read(settings, INGEST_QUERY)
    assert (stored["totals"]["batches"], stored["totals"]["input_rows"], stored["totals"]["inserted_rows"],
            stored["totals"]["duplicate_rows"]) == (3, 14, 13, 1)
    assert stored["restarts"] == 1 and stored["last_restart"]["reason"].startswith("java.net.ConnectException")
    assert [h["batch_id"] for h in stored["history"]] == [0, 1, 2]


class _TornReads:
    """A filesystem whose first `torn` opens of the document give the head of the next version (as a
    WebHDFS read that began before a replacement and fetched the new file's bytes)."""

    def __init__(self, real, torn: int) -> None:
        self.real, self.torn, self.opens = real, torn, 0

    def exists(self, path: str) -> bool:
        return self.real.exists(path)

    def open(self, path: str, mode: str = "rb"):
        import io

        self.opens += 1
        whole = self.real.cat_file(path)
        return io.BytesIO(whole[: len(whole) // 2] if self.opens <= self.torn else whole)


def test_a_read_torn_by_a_replacement_is_read_again_and_one_that_stays_torn_names_the_file(
        tmp_path: Path, monkeypatch) -> None:
    import fsspec
    import pytest

    from btcstream.errors import StorageReadError

    settings = Settings(storage_root=f"file://{tmp_path}")
    writer = progress.ProgressWriter(settings)
    writer.note_batch(INGEST_QUERY, 0, {"input_rows": 3, "inserted_rows": 3})
    writer.record(spark_progress(0, 3))

    twice_torn = _TornReads(fsspec.filesystem("file"), torn=2)
    monkeypatch.setattr(progress, "storage_filesystem", lambda _: twice_torn)
    assert progress.read_progress(settings, INGEST_QUERY)["totals"]["inserted_rows"] == 3
    assert twice_torn.opens == 3

    always_torn = _TornReads(fsspec.filesystem("file"), torn=10**6)
    monkeypatch.setattr(progress, "storage_filesystem", lambda _: always_torn)
    with pytest.raises(StorageReadError, match=f"progress document .*{INGEST_QUERY}.json could not be read") as raised:
        progress.read_progress(settings, INGEST_QUERY)
    assert "\n" not in str(raised.value) and always_torn.opens == progress.READ_ATTEMPTS
