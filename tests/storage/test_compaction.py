"""Unit tests (JVM-free, file://) of compaction, the manifest it extends, the progress totals and the
hourly query's lag in files (which reads the same logs).

The dataset is laid out exactly as Spark's file sink leaves it (hive partitions, `_spark_metadata`
log) and the hourly checkpoint's offset log carries the watermark, so `compact` runs unchanged.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from btcstream.errors import LockHeld
from btcstream.settings import Settings
from btcstream.storage import manifest
from btcstream.storage.filesystem import storage_filesystem, storage_path
from btcstream.storage.lock import exclusive_lock
from btcstream.storage import compaction
from btcstream.streaming import progress, status

T0 = datetime(2025, 2, 14, 9, tzinfo=timezone.utc)


def write_sink_batch(dataset: Path, batch: int, rows_by_hour: dict[int, list[int]]) -> list[str]:
    """One file-sink batch: a Parquet file per hour partition, then its `_spark_metadata/<batch>` entry."""
    paths = []
    for hour, seconds in rows_by_hour.items():
        directory = dataset / "date=2025-02-14" / f"hour={hour}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{batch:05d}-{hour}.c000.snappy.parquet"
        times = [T0.replace(hour=hour) + timedelta(seconds=s) for s in seconds]
        table = pa.table({"symbol": ["BTCUSDT"] * len(times),
                          "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
                          "mid_price": [100.0 + s for s in seconds]})
        pq.write_table(table, path)
        paths.append(str(path))
    log = dataset / "_spark_metadata"
    log.mkdir(parents=True, exist_ok=True)
    entries = [json.dumps({"path": f"file://{p}", "size": 1, "isDir": False, "modificationTime": 0,
                           "blockReplication": 1, "blockSize": 1, "action": "add"}) for p in paths]
    (log / str(batch)).write_text("\n".join(["v1", *entries]) + "\n")
    return paths


def set_watermark(root: Path, moment: datetime, query: str = "hourly", batch: int = 0) -> None:
    """Write offsets/<batch> of a checkpoint as Spark does: version, batch metadata, source offsets."""
    offsets = root / "checkpoints" / query / "offsets"
    offsets.mkdir(parents=True, exist_ok=True)
    metadata = {"batchWatermarkMs": int(moment.timestamp() * 1000), "batchTimestampMs": 0, "conf": {}}
    (offsets / str(batch)).write_text("\n".join(["v1", json.dumps(metadata), json.dumps({"logOffset": 0})]))


def set_hourly_watermark(root: Path, moment: datetime) -> None:
    set_watermark(root, moment)


def rows(settings: Settings, dataset: str) -> list[tuple]:
    fs = storage_filesystem(settings)
    found = []
    for path in manifest.committed_files(fs, f"{settings.storage_path}/{dataset}"):
        table = pq.read_table(path)
        found.extend(zip(table.column("event_time").to_pylist(), table.column("mid_price").to_pylist()))
    return sorted(found)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}")


def test_compaction_swaps_closed_partitions_atomically_and_deletes_after_grace(settings: Settings, tmp_path: Path):
    raw = tmp_path / "raw_data"
    write_sink_batch(raw, 0, {9: [1, 2], 10: [5]})
    write_sink_batch(raw, 1, {9: [3], 10: [6], 11: [7]})
    stray = raw / "date=2025-02-14" / "hour=9" / "part-99999-crashed.c000.snappy.parquet"
    pq.write_table(pa.table({"x": [1]}), stray)  # a crashed batch's file: never committed
    before = rows(settings, "raw_data")
    set_hourly_watermark(tmp_path, T0.replace(hour=11))  # hours 9 and 10 are closed, 11 is open

    now = datetime.now(timezone.utc)
    report, = compaction.compact(settings, ["raw_data"], grace=timedelta(minutes=10), now=now)
    assert (report.partitions_compacted, report.files_replaced, report.partitions_skipped_open) == (2, 4, 1)
    assert rows(settings, "raw_data") == before  # no duplicates, no gaps
    committed = manifest.committed_files(storage_filesystem(settings), str(raw))
    assert [Path(p).parent.name for p in committed] == ["hour=10", "hour=11", "hour=9"]
    assert sum(Path(p).name.startswith("compacted-") for p in committed) == 2
    # Within the grace period the replaced files stay for readers that listed them just before the swap.
    assert len(list((raw / "date=2025-02-14" / "hour=9").glob("part-0000*"))) == 2
    assert stray.exists()

    report, = compaction.compact(settings, ["raw_data"], grace=timedelta(minutes=10), now=now + timedelta(minutes=11))
    assert report.partitions_compacted == 0  # one file per closed partition already
    assert not list((raw / "date=2025-02-14" / "hour=9").glob("part-0000*"))
    assert not stray.exists()
    assert report.files_deleted == 5  # four replaced + one stray
    assert rows(settings, "raw_data") == before


def test_a_second_compactor_is_refused_while_one_runs_and_the_lock_is_released_after(settings: Settings, tmp_path: Path):
    raw = tmp_path / "raw_data"
    write_sink_batch(raw, 0, {9: [1, 2]})
    write_sink_batch(raw, 1, {9: [3]})
    set_hourly_watermark(tmp_path, T0.replace(hour=11))
    fs = storage_filesystem(settings)
    lock_path = f"{settings.storage_path}/{compaction.LOCK_FILE}"

    with exclusive_lock(fs, lock_path, "a compaction elsewhere"):
        with pytest.raises(LockHeld, match=r"held by a compaction elsewhere by .*pid \d+.*delete the lock file"):
            compaction.compact(settings, ["raw_data"])
        assert len(manifest.committed_files(fs, str(raw))) == 2  # the refused run changed nothing
    report, = compaction.compact(settings, ["raw_data"])
    assert report.partitions_compacted == 1
    assert not fs.exists(lock_path)


def test_releasing_a_lock_leaves_a_lock_that_is_no_longer_ours(settings: Settings, caplog) -> None:
    fs = storage_filesystem(settings)
    lock_path = f"{settings.storage_path}/{compaction.LOCK_FILE}"

    with exclusive_lock(fs, lock_path, "first"):
        fs.rm(lock_path)  # deleted by hand while held...
    assert "deleted by someone else" in caplog.text  # ...release warns instead of failing

    other = b'{"purpose": "second", "user": "u", "host": "h", "pid": 1, "since": "t"}'
    with exclusive_lock(fs, lock_path, "first"):
        fs.rm(lock_path)
        fs.pipe_file(lock_path, other)  # ...and another process took it meanwhile
    assert fs.cat_file(lock_path) == other  # the first's release left the other's lock in place
    assert "now belongs to second by u@h pid 1" in caplog.text


def test_late_files_after_a_compaction_stay_visible_and_are_compacted_again(settings: Settings, tmp_path: Path):
    raw = tmp_path / "raw_data"
    write_sink_batch(raw, 0, {9: [1]})
    write_sink_batch(raw, 1, {9: [2]})
    set_hourly_watermark(tmp_path, T0.replace(hour=12))
    compaction.compact(settings, ["raw_data"], grace=timedelta(0))
    write_sink_batch(raw, 2, {9: [3]})  # committed after the swap: visible beside the merged file
    assert [t.second for t, _ in rows(settings, "raw_data")] == [1, 2, 3]
    compaction.compact(settings, ["raw_data"], grace=timedelta(0))
    committed = manifest.committed_files(storage_filesystem(settings), str(raw))
    assert len(committed) == 1 and [t.second for t, _ in rows(settings, "raw_data")] == [1, 2, 3]


def test_raw_late_cut_of_the_previous_batch_bounds_what_is_closed(settings: Settings, tmp_path: Path):
    set_watermark(tmp_path, T0.replace(hour=13))
    set_watermark(tmp_path, T0.replace(hour=10), query="raw", batch=4)  # the in-flight batch drops below 10:00
    set_watermark(tmp_path, T0.replace(hour=12), query="raw", batch=5)  # planned, not committed yet
    assert compaction.closed_before(settings) == T0.replace(hour=10)
    commits = tmp_path / "checkpoints" / "raw" / "commits"
    commits.mkdir(parents=True)
    (commits / "5").write_text("v1\n{}")  # batch 5 committed: the next batch drops below 12:00
    assert compaction.closed_before(settings) == T0.replace(hour=12)


def test_nothing_is_compacted_without_an_hourly_watermark(settings: Settings, tmp_path: Path):
    write_sink_batch(tmp_path / "raw_data", 0, {9: [1]})
    write_sink_batch(tmp_path / "raw_data", 1, {9: [2]})
    report, = compaction.compact(settings, ["raw_data"])
    assert report.partitions_compacted == 0


def test_progress_totals_count_a_rerun_batch_once():
    def batch(batch_id: int, rows: int, late: int) -> dict:
        return {"name": "btcstream_raw", "batchId": batch_id, "numInputRows": rows,
                "stateOperators": [{"numRowsDroppedByWatermark": late}],
                "observedMetrics": {"quarantine": {"rows": 1}}}

    document = None
    for event in (batch(0, 10, 0), batch(1, 5, 2), batch(1, 5, 2), batch(2, 3, 1)):  # batch 1 re-run after a crash
        document = progress.merge(document, event)
    assert document["totals"] == {"batches": 3, "input_rows": 18, "late_rows": 3, "quarantined_rows": 3}
    assert [h["batch_id"] for h in document["history"]] == [0, 1, 2]


@pytest.mark.integration
def test_lock_on_hdfs_is_exclusive_and_released(test_settings: Settings) -> None:
    fs = storage_filesystem(test_settings)
    lock_path = storage_path(test_settings, compaction.LOCK_FILE)
    with exclusive_lock(fs, lock_path, "first"):
        with pytest.raises(LockHeld, match="held by first by"):
            with exclusive_lock(fs, lock_path, "second"):
                pass
        assert fs.cat_file(lock_path).startswith(b'{"purpose": "first"')
    assert not fs.exists(lock_path)
    assert fs.ls(storage_path(test_settings), detail=False) == []  # no temporary file left behind


def test_hourly_lag_counts_committed_raw_files_no_hourly_batch_has_taken(settings: Settings, tmp_path: Path):
    raw = tmp_path / "raw_data"
    first = write_sink_batch(raw, 0, {9: [1], 10: [2]})
    write_sink_batch(raw, 1, {10: [3], 11: [4]})
    (raw / "date=2025-02-14" / "hour=11" / "part-half-written.parquet").write_bytes(b"PAR1")  # not committed
    assert status.unread_raw_files(settings, "hourly") == 4  # the hourly query has not started

    sources = tmp_path / "checkpoints" / "hourly" / "sources" / "0"
    sources.mkdir(parents=True)
    taken = [json.dumps({"path": f"file://{p}", "timestamp": 0, "batchId": 0}) for p in first]
    (sources / "0").write_text("\n".join(["v1", *taken]) + "\n")
    assert status.unread_raw_files(settings, "hourly") == 2

    set_hourly_watermark(tmp_path, T0.replace(hour=12))
    report, = compaction.compact(settings, ["raw_data"], min_files=1, grace=timedelta(0))
    assert report.partitions_compacted == 3  # swapped in our manifest only: Spark's logs are untouched
    assert status.unread_raw_files(settings, "hourly") == 2
