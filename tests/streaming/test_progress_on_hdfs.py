"""The progress document on a real HDFS: a reader polling it while the job replaces it after every
batch always gets a whole document, never "no document" and never torn JSON (a 2-hour soak once
ended on `JSONDecodeError: Unterminated string` read from WebHDFS mid-replacement)."""

from __future__ import annotations

import threading

import pytest

from btcstream.names import INGEST_QUERY
from btcstream.settings import Settings
from btcstream.streaming import progress

pytestmark = pytest.mark.integration

WRITES = 150


def _spark_progress(batch_id: int) -> dict:
    # A description that changes length from batch to batch, as Spark's does (sources, sink,
    # durations): old and new documents differ in size, which is what tears a read.
    return {"name": INGEST_QUERY, "batchId": batch_id, "numInputRows": batch_id, "timestamp": f"t{batch_id}",
            "durationMs": {"triggerExecution": 100 + batch_id}, "sources": [{"description": "x" * (batch_id % 97)}]}


def test_a_reader_never_sees_the_document_missing_or_torn_while_it_is_replaced(test_settings: Settings) -> None:
    writer = progress.ProgressWriter(test_settings)
    writer.note_batch(INGEST_QUERY, 0, {"input_rows": 1, "inserted_rows": 1})
    writer.record(_spark_progress(0))
    done = threading.Event()

    def replace_after_every_batch() -> None:
        try:
            for batch_id in range(1, WRITES + 1):
                writer.note_batch(INGEST_QUERY, batch_id, {"input_rows": 1, "inserted_rows": 1})
                writer.record(_spark_progress(batch_id))
        finally:
            done.set()

    job = threading.Thread(target=replace_after_every_batch, daemon=True)
    job.start()
    seen: list[int] = []
    while not done.is_set():
        document = progress.read_progress(test_settings, INGEST_QUERY)  # raises on a torn document
        assert document is not None, "the document was missing while being replaced"
        seen.append(document["last_batch_id"])
    job.join(timeout=60)

    assert len(seen) >= 20, f"only {len(seen)} reads overlapped the {WRITES} replacements"
    assert seen == sorted(seen)  # never an older document after a newer one
    final = progress.read_progress(test_settings, INGEST_QUERY)
    assert final["last_batch_id"] == WRITES and final["totals"]["inserted_rows"] == WRITES + 1
