"""Merge the small files of closed partitions into one file each, without readers ever seeing duplicates or gaps.

A raw sink fed a tick a minute writes a file per batch; this step rewrites each closed partition
(`date=D/hour=H` of raw_data, `date=D` of hourly_metrics and quarantine) holding at least
`min_files` committed files into one Parquet file, sorted by symbol and time, and records the swap
with `manifest.record_compaction` (see `btcstream.storage.manifest` for why readers stay exact).
Files replaced more than `grace` ago are then deleted, as are files of closed partitions that no
committed batch or compaction references (left by crashed batches or crashed compactions).

"Closed" comes from the checkpoints (see `closed_before`): once both the hourly watermark and the
raw query's late-row cut have passed a partition's end, no batch of either query writes rows there
and the hourly query has read every raw file of it (so deleting them cannot break its replay).
Unlisted files are deleted only after `grace` as well, so a batch being committed is never touched.
JVM-free (pyarrow through the storage filesystem). One compactor at a time (a lock file enforces it).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from btcstream.names import (
    CHECKPOINT_FOLDERS,
    DATASETS,
    HOURLY_DATASET,
    HOURLY_QUERY,
    QUARANTINE_DATASET,
    RAW_DATASET,
    RAW_QUERY,
    TIME_COLUMNS,
)
from btcstream.settings import Settings
from btcstream.storage import manifest
from btcstream.storage.filesystem import read_parquet, storage_filesystem, storage_path
from btcstream.storage.lock import exclusive_lock
from btcstream.storage.checkpoints import batch_watermark_ms, late_cut_ms

log = logging.getLogger(__name__)

SORT_KEYS = {RAW_DATASET: ("symbol", TIME_COLUMNS[RAW_DATASET]), HOURLY_DATASET: ("symbol", TIME_COLUMNS[HOURLY_DATASET]),
             QUARANTINE_DATASET: ("topic", "partition", "offset")}
COMPACTED_PREFIX = "compacted-"
LOCK_FILE = "_compaction.lock"  # under the storage root, while `compact` runs
DEFAULT_GRACE = timedelta(minutes=10)
# Quarantine partitions follow the Kafka timestamp (no watermark): treat a day as closed a day later.
QUARANTINE_CLOSE_DELAY = timedelta(days=1)
_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})(?:/hour=(\d{1,2}))?$")


@dataclass
class CompactionReport:
    """What one `compact` run did to one dataset."""

    dataset: str
    partitions_compacted: int = 0
    files_replaced: int = 0
    files_deleted: int = 0
    partitions_skipped_open: int = 0
    details: list[str] = field(default_factory=list)


def compact(settings: Settings, datasets: Iterable[str] = DATASETS, *, min_files: int = 2,
            grace: timedelta = DEFAULT_GRACE, now: datetime | None = None) -> list[CompactionReport]:
    """Compact the closed partitions of each dataset; returns one report per dataset.

    Holds `<root>/_compaction.lock` meanwhile: a second compactor fails with LockHeld instead of
    merging the same files again (which would show their rows twice).
    """
    now = now or datetime.now(timezone.utc)
    stream_closed = closed_before(settings)
    reports = []
    with exclusive_lock(storage_filesystem(settings), storage_path(settings, LOCK_FILE), "btcstream compact"):
        for dataset in datasets:
            closed = (now - QUARANTINE_CLOSE_DELAY) if dataset == QUARANTINE_DATASET else stream_closed
            reports.append(_compact_dataset(settings, dataset, closed, min_files, grace, now))
    return reports


def closed_before(settings: Settings) -> datetime | None:
    """Partitions ending at or before this moment can receive no more rows (None: nothing is closed yet).

    The hourly query's current watermark (it has read every raw file below it), and no later than
    the raw query's late-row cut (`checkpoints.late_cut_ms`).
    """
    hourly_ms = batch_watermark_ms(settings, CHECKPOINT_FOLDERS[HOURLY_QUERY])
    raw_late_cut_ms = late_cut_ms(settings, CHECKPOINT_FOLDERS[RAW_QUERY])
    if hourly_ms is None:
        return None
    moment_ms = hourly_ms if raw_late_cut_ms is None else min(hourly_ms, raw_late_cut_ms)
    return datetime.fromtimestamp(moment_ms / 1000, timezone.utc)


def _compact_dataset(settings: Settings, dataset: str, closed_before: datetime | None, min_files: int,
                     grace: timedelta, now: datetime) -> CompactionReport:
    fs = storage_filesystem(settings)
    root = storage_path(settings, dataset)
    report = CompactionReport(dataset)
    if closed_before is None or not fs.exists(root):
        report.details.append("nothing closed yet (no hourly watermark)" if closed_before is None else "no data")
        return report
    by_partition: dict[str, list[str]] = {}
    for path in manifest.committed_files(fs, root):
        by_partition.setdefault(path[len(root) + 1:].rsplit("/", 1)[0], []).append(path)
    for partition, files in sorted(by_partition.items()):
        end = partition_end(partition)
        if end is None or end > closed_before:
            report.partitions_skipped_open += 1
            continue
        if len(files) >= min_files:
            added = _merge(fs, f"{root}/{partition}", files, SORT_KEYS[dataset])
            manifest.record_compaction(fs, root, files, [added], created_at=now)
            report.partitions_compacted += 1
            report.files_replaced += len(files)
            report.details.append(f"{partition}: {len(files)} files -> {added.rsplit('/', 1)[-1]}")
    report.files_deleted = _delete_unreferenced(fs, root, closed_before if dataset != QUARANTINE_DATASET else None,
                                                grace, now)
    return report


def partition_end(partition: str) -> datetime | None:
    """The end of the time span of `date=D[/hour=H]` (UTC), or None for anything else."""
    match = _PARTITION.match(partition)
    if not match:
        return None
    start = datetime.fromisoformat(match.group(1)).replace(tzinfo=timezone.utc)
    if match.group(2) is None:
        return start + timedelta(days=1)
    return start + timedelta(hours=int(match.group(2)) + 1)


def _merge(fs, directory: str, files: list[str], sort_keys: tuple[str, ...]) -> str:
    """Write the rows of `files` as one new Parquet file in `directory`; returns its path."""
    table = pa.concat_tables([read_parquet(fs, path) for path in files])
    table = table.sort_by([(key, "ascending") for key in sort_keys if key in table.column_names])
    target = f"{directory}/{COMPACTED_PREFIX}{uuid.uuid4().hex}.snappy.parquet"
    buffer = pa.BufferOutputStream()  # encoded here, so Arrow never calls back into Python (see read_parquet)
    # int64 microsecond timestamps, as the Spark sinks write them (Spark cannot read nanoseconds).
    pq.write_table(table, buffer, compression="snappy", coerce_timestamps="us", allow_truncated_timestamps=False)
    with fs.open(target, "wb") as handle:
        handle.write(buffer.getvalue().to_pybytes())
    return target


def _delete_unreferenced(fs, root: str, closed_before: datetime | None, grace: timedelta, now: datetime) -> int:
    """Delete files replaced more than `grace` ago, and stray files in closed partitions; returns the count."""
    committed = set(manifest.committed_files(fs, root))
    doomed: set[str] = set()
    for entry in manifest.compaction_entries(fs, root):
        if now - entry.created_at >= grace:
            doomed.update(path for path in entry.replaced if path not in committed)
    if closed_before is not None:
        # Files no batch and no compaction committed (crashed attempts) in partitions no batch can still write.
        for path in fs.find(root):
            relative = path[len(root) + 1:]
            partition = relative.rsplit("/", 1)[0] if "/" in relative else ""
            end = partition_end(partition)
            if (path.endswith(".parquet") and path not in committed and end is not None and end <= closed_before
                    and now - _modified(fs, path) >= grace):
                doomed.add(path)
    deleted = 0
    for path in sorted(doomed):
        if fs.exists(path):
            fs.rm(path)
            deleted += 1
    return deleted


def _modified(fs, path: str) -> datetime:
    info = fs.info(path)
    moment = info.get("mtime") or info.get("modificationTime") or info.get("created")
    if isinstance(moment, datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    value = float(moment or 0)
    return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, timezone.utc)
