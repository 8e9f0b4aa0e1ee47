"""Delta table maintenance: OPTIMIZE (bin-pack small files into large ones), then VACUUM, safe while the job writes.

The job commits a few small files per micro-batch; OPTIMIZE rewrites each partition's small files
into few large ones in one Delta commit (`dataChange=false`): a reader sees either the version
before (small files) or after (large files), never both (duplicates) or neither (gaps), and time
travel to the earlier version keeps working until VACUUM deletes the replaced files. VACUUM only
deletes files that no version younger than the retention references, so the retention must stay
longer than any reader or time-travel query needs: at least `MIN_RETENTION` (7 days, Delta's own
default) unless forced.

Why OPTIMIZE runs in Spark (`DeltaTable.forPath(...).optimize().executeCompaction()`) and not in
delta-rs (`deltalake`, JVM-free): delta-rs 1.6.6 compacts our Spark-written tables (protocol 1/2)
fine, but two concurrent delta-rs OPTIMIZE runs from the same version both commit, the second
removing files the first already removed and adding their rows again: every row of those files
twice (measured: 5 rows -> 10; also with `max_commit_retries=0` and with an app transaction id).
Spark's conflict checker refuses the second commit (`ConcurrentDeleteDeleteException`), so two
`btcstream compact` runs at once, or one beside a manual OPTIMIZE, are safe without a lock. Against
the job: its raw and quarantine writes add files only (no conflict either way); its hourly MERGE
rewrites files, and whichever of the two commits second retries (here: `COMMIT_ATTEMPTS`).
VACUUM and everything `--dry-run` reports use delta-rs: no JVM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Sequence

from btcstream.errors import CompactionError
from btcstream.names import DATASETS
from btcstream.settings import Settings
from btcstream.storage.layout import require_delta_layout
from btcstream.storage.delta_conflicts import commit_conflicts

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MIN_RETENTION = timedelta(hours=168)  # Delta's default delta.deletedFileRetentionDuration
COMMIT_ATTEMPTS = 3  # OPTIMIZE runs again from the new version after losing a commit race


@dataclass(frozen=True)
class MaintenanceReport:
    """What one maintenance run did (or, dry, would do) to one table."""

    dataset: str
    exists: bool
    files_before: int = 0
    files_after: int = 0
    files_removed: int = 0  # small files OPTIMIZE replaced (dry run: files in partitions holding several)
    files_added: int = 0
    vacuumed: int = 0  # files VACUUM deleted (dry run: would delete)
    version: int | None = None  # the table's newest version afterwards

    def line(self, dry_run: bool = False) -> str:
        """One line for the command's output."""
        if not self.exists:
            return f"{self.dataset}: no table yet, skipped"
        if dry_run:
            return (f"{self.dataset}: {self.files_before} files, {self.files_removed} in partitions holding several "
                    f"(OPTIMIZE would merge them), VACUUM would delete {self.vacuumed}; version {self.version}")
        return (f"{self.dataset}: files {self.files_before} -> {self.files_after} ({self.files_removed} replaced by "
                f"{self.files_added}), {self.vacuumed} vacuumed, version {self.version}")


def check_retention(retention: timedelta, force: bool) -> None:
    """Refuse a VACUUM retention below `MIN_RETENTION` unless forced (one line naming `--force`)."""
    if retention < MIN_RETENTION and not force:
        raise CompactionError(
            f"a VACUUM retention of {_hours(retention)} h is below the safe minimum of {_hours(MIN_RETENTION)} h "
            f"(readers still listing the replaced files and time travel to older versions would fail): "
            f"use a longer --retention-hours, or pass --force if nothing reads the older versions")


def maintain(settings: Settings, datasets: Sequence[str] = DATASETS, *, spark: Callable[[], SparkSession],
             retention: timedelta = MIN_RETENTION, force: bool = False, vacuum: bool = True,
             dry_run: bool = False) -> list[MaintenanceReport]:
    """OPTIMIZE then (unless `vacuum=False`) VACUUM each existing table; one report per dataset.

    `spark` is called for a session only when a table is to be optimized (a dry run or a root
    without tables starts no JVM). Raises `LegacyLayout` for an old file-sink root.
    """
    check_retention(retention, force)
    require_delta_layout(settings, datasets)
    reports = []
    for dataset in datasets:
        url = settings.storage_url(dataset)
        if not _is_table(url):
            reports.append(MaintenanceReport(dataset, exists=False))
            continue
        if dry_run:
            reports.append(_dry_report(dataset, url, retention, force))
            continue
        before = table_files(url)
        removed, added = optimize(spark(), url, dataset)
        vacuumed = vacuum_table(url, retention, force=force) if vacuum else []
        reports.append(MaintenanceReport(dataset, True, len(before), len(table_files(url)), removed, added,
                                         len(vacuumed), _version(url)))
    return reports


def optimize(spark: SparkSession, url: str, dataset: str = "table") -> tuple[int, int]:
    """Compact the table's small files (Delta OPTIMIZE); (files removed, files added).

    Retries from the newest version when a concurrent commit conflicts (e.g. the job's hourly
    MERGE rewrote a file being compacted, or another OPTIMIZE won); `CompactionError` after
    `COMMIT_ATTEMPTS` lost races.
    """
    from delta.tables import DeltaTable

    conflicts = commit_conflicts()

    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            metrics = DeltaTable.forPath(spark, url).optimize().executeCompaction().collect()[0]["metrics"]
            return int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])
        except conflicts as conflict:
            reason = _first_line(conflict)
            log.info("%s: OPTIMIZE lost a commit race (attempt %d of %d): %s", dataset, attempt, COMMIT_ATTEMPTS,
                     reason)
    raise CompactionError(f"{dataset}: OPTIMIZE lost the commit race to concurrent writers {COMMIT_ATTEMPTS} times "
                          f"({reason}); nothing was changed by it: run `btcstream compact` again later")


def vacuum_table(url: str, retention: timedelta, *, force: bool = False, dry_run: bool = False) -> list[str]:
    """Delete (dry: list) the files no table version younger than `retention` references.

    With at least `MIN_RETENTION` this is a full VACUUM: it also deletes files no commit ever
    named (left by failed writes), which are that old only if no writer can still commit them. A
    forced shorter retention only deletes files that commits removed (delta-rs "lite" mode), so a
    file the job is writing right now is never touched.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        return DeltaTable(url).vacuum(retention_hours=_hours(retention), dry_run=dry_run,
                                      enforce_retention_duration=not force, full=retention >= MIN_RETENTION)
    except DeltaError as error:  # e.g. the table's own delta.deletedFileRetentionDuration is longer
        raise CompactionError(f"VACUUM of {url} refused: {_first_line(error)}; pass --force to use the retention "
                              f"given") from error


def table_files(url: str) -> list[str]:
    """The data files of the table's newest version (full URIs, read from the Delta log)."""
    from deltalake import DeltaTable

    return DeltaTable(url).file_uris()


def _dry_report(dataset: str, url: str, retention: timedelta, force: bool) -> MaintenanceReport:
    files = table_files(url)
    per_partition: dict[str, int] = {}
    for path in files:
        directory = path.rsplit("/", 1)[0] if "/" in path else ""
        per_partition[directory] = per_partition.get(directory, 0) + 1
    mergeable = sum(count for count in per_partition.values() if count > 1)
    doomed = vacuum_table(url, retention, force=force, dry_run=True)
    return MaintenanceReport(dataset, True, len(files), len(files), mergeable, 0, len(doomed), _version(url))


def _is_table(url: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(url)


def _version(url: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(url).version()


def _hours(span: timedelta) -> int:
    return int(span.total_seconds() // 3600)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
