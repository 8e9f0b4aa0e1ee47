"""Import a storage root of the old file-sink layout into Delta tables (`btcstream migrate`).

The old job wrote each dataset as a Spark file sink (Parquet under hive partitions plus a
`_spark_metadata` log naming the committed files; any other file is debris of a failed batch) and
kept three checkpoints (`checkpoints/{raw,quarantine,hourly}`). Steps, in this order, each one
resumable (a crash and a re-run lose and duplicate nothing):

1. checkpoints: `checkpoints/ingest-start-offsets.json` = per Kafka partition the smaller of the
   old raw and quarantine queries' committed offsets (a partition only one of them knows: -2,
   Kafka's "earliest"), so the new job reads on where the old one stopped (ticks read twice are
   stored once: raw_data is deduplicated on (symbol, event_time)); then the old checkpoints and
   progress files move to `legacy/<stamp>/checkpoints`.
2. raw_data, quarantine: `spark.read.parquet(<dataset>)` (Spark honours `_spark_metadata`: committed
   files only) -> one Delta write into `<dataset>.importing` (a Delta write is one commit: the copy
   is whole or absent) -> the old folder moves to `legacy/<stamp>/<dataset>` -> `.importing` is
   renamed into place. raw_data keeps each (symbol, event_time) once; quarantine's `value` becomes
   the record's bytes (binary, the old string encoded as UTF-8) with a `value_preview`.
3. hourly_metrics: rebuilt from the imported raw_data by `hourly_upserts.upsert_hours` (the old rows
   lack is_final/revision), one day at a time, the event clock being the newest event_time; the old
   folder moves to legacy like the others. It moves last, so the new job (which refuses a root with
   any old-layout dataset, `storage.layout`) cannot start before the import is complete.

`<root>/legacy/<stamp>/migration.json` records the run; an unfinished one is resumed under the same
stamp. Stop the old streaming job before migrating: its checkpoints and folders move away.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from btcstream.errors import BtcstreamError
from btcstream.ingest.tick import FIELD_NAMES
from btcstream.names import (
    CHECKPOINTS_DIR,
    HOURLY_DATASET,
    INGEST_START_OFFSETS_FILE,
    LEGACY_DIR,
    PROGRESS_DIR,
    QUARANTINE_COLUMNS,
    QUARANTINE_DATASET,
    QUARANTINE_PARTITION_COLUMNS,
    QUARANTINE_PREVIEW_CHARS,
    RAW_DATASET,
    RAW_DERIVED_COLUMNS,
    RAW_PARTITION_COLUMNS,
)
from btcstream.settings import Settings
from btcstream.storage.checkpoints import committed_kafka_offsets
from btcstream.storage.filesystem import storage_filesystem, storage_path
from btcstream.storage.layout import legacy_datasets

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# The old job's checkpoint folders (under CHECKPOINTS_DIR) and progress files (under PROGRESS_DIR).
LEGACY_KAFKA_CHECKPOINTS: tuple[str, ...] = ("raw", "quarantine")
LEGACY_CHECKPOINTS: tuple[str, ...] = (*LEGACY_KAFKA_CHECKPOINTS, "hourly")
LEGACY_PROGRESS_FILES: tuple[str, ...] = ("btcstream_raw.json", "btcstream_quarantine.json", "btcstream_hourly.json")
IMPORTED_DATASETS: tuple[str, ...] = (RAW_DATASET, QUARANTINE_DATASET)  # copied; hourly is recomputed
IMPORTING_SUFFIX = ".importing"
RECORD_FILE = "migration.json"  # under legacy/<stamp>/
EARLIEST_OFFSET = -2  # Spark's startingOffsets JSON: the partition's earliest offset


class MigrationError(BtcstreamError):
    """`btcstream migrate` could not import the old layout (the message names the step and what to do)."""


@dataclass(frozen=True)
class MigrationPlan:
    """What `migrate` will do to one storage root (computed from the files alone, no JVM)."""

    stamp: str  # legacy/<stamp>/ receives what is moved aside
    checkpoints: tuple[str, ...]  # old checkpoint folders and progress files present (paths under checkpoints/)
    start_offsets: dict[int, int] | None  # what ingest-start-offsets.json will hold (None: not written)
    imports: tuple[str, ...]  # of IMPORTED_DATASETS: old-layout folders, or imports to finish
    rebuild_hourly: bool

    @property
    def empty(self) -> bool:
        return not (self.checkpoints or self.imports or self.rebuild_hourly)

    def lines(self, settings: Settings) -> list[str]:
        """The plan as the command prints it."""
        if self.empty:
            return [f"nothing to migrate: {settings.storage_root} holds no dataset or checkpoint of the old "
                    f"file-sink layout"]
        legacy = f"{LEGACY_DIR}/{self.stamp}"
        lines = [f"migration of {settings.storage_root} (stop the old streaming job first); moved aside into {legacy}:"]
        if self.checkpoints:
            offsets = ("not written: an old query committed nothing, the new job starts at the earliest offsets"
                       if self.start_offsets is None else json.dumps(_offsets_document(settings, self.start_offsets)))
            lines.append(f"  checkpoints: {CHECKPOINTS_DIR}/{INGEST_START_OFFSETS_FILE} {offsets}; "
                         f"move {', '.join(self.checkpoints)}")
        for dataset in self.imports:
            lines.append(f"  {dataset}: import the committed files into a Delta table, old folder to {legacy}/{dataset}")
        if self.rebuild_hourly:
            lines.append(f"  {HOURLY_DATASET}: recompute every hour from the imported {RAW_DATASET} "
                         f"(live/final by the newest event_time), old folder (if any) to {legacy}/{HOURLY_DATASET}")
        return lines


def plan_migration(settings: Settings, now: datetime | None = None) -> MigrationPlan:
    """Inspect the storage root: which steps remain (an interrupted migration resumes where it stopped)."""
    fs = storage_filesystem(settings)
    legacy = set(legacy_datasets(settings))
    imports = tuple(d for d in IMPORTED_DATASETS
                    if d in legacy or (not fs.exists(storage_path(settings, d)) and _is_table(_importing(settings, d))))
    hourly = storage_path(settings, HOURLY_DATASET)
    rebuild_hourly = (HOURLY_DATASET in legacy or fs.exists(hourly + IMPORTING_SUFFIX)
                      or (RAW_DATASET in imports and not fs.exists(hourly)))
    checkpoints = tuple(name for name in _legacy_checkpoint_entries()
                        if fs.exists(storage_path(settings, CHECKPOINTS_DIR, name)))
    offsets = start_offsets(settings) if checkpoints else None
    return MigrationPlan(_stamp(settings, now), checkpoints, offsets, imports, rebuild_hourly)


def start_offsets(settings: Settings) -> dict[int, int] | None:
    """Per partition, where the new job starts: the minimum of the old Kafka queries' committed offsets.

    None when an old query exists but committed nothing (start at the earliest offsets).
    """
    fs = storage_filesystem(settings)
    per_query = [committed_kafka_offsets(settings, folder) for folder in LEGACY_KAFKA_CHECKPOINTS
                 if fs.exists(storage_path(settings, CHECKPOINTS_DIR, folder))]
    if not per_query or any(not offsets for offsets in per_query):
        return None
    partitions = set().union(*per_query)
    return {p: min(offsets.get(p, EARLIEST_OFFSET) for offsets in per_query) for p in sorted(partitions)}


def migrate(spark: SparkSession, settings: Settings, plan: MigrationPlan,
            say: Callable[[str], None] = print) -> dict[str, int]:
    """Carry out `plan`; rows in each imported or rebuilt table. `say` receives one progress line per step."""
    _record(settings, plan, finished=False)
    if plan.checkpoints:
        _move_checkpoints(settings, plan)
        say(f"checkpoints: start offsets {plan.start_offsets}; moved {', '.join(plan.checkpoints)}")
    rows: dict[str, int] = {}
    for dataset in plan.imports:
        rows[dataset] = _import_dataset(spark, settings, dataset, plan.stamp)
        say(f"{dataset}: {rows[dataset]} rows imported")
    if plan.rebuild_hourly:
        rows[HOURLY_DATASET] = _rebuild_hourly(spark, settings, plan.stamp)
        say(f"{HOURLY_DATASET}: {rows[HOURLY_DATASET]} hourly rows recomputed from {RAW_DATASET}")
    _record(settings, plan, finished=True)
    return rows


def raw_rows(old: DataFrame) -> DataFrame:
    """Old raw_data rows in the Delta table's columns, each (symbol, event_time) once."""
    from pyspark.sql import functions as F

    return (old.select(*FIELD_NAMES, *RAW_DERIVED_COLUMNS)
            .dropDuplicates(["symbol", "event_time"])
            .withColumn("date", F.to_date("event_time")).withColumn("hour", F.hour("event_time")))


def quarantine_rows(old: DataFrame) -> DataFrame:
    """Old quarantine rows with the record's bytes (`value`, binary) and a UTF-8 preview, as
    `btcstream.streaming.parse.quarantined` writes them."""
    from pyspark.sql import functions as F

    value = F.col("value").cast("binary")  # a string becomes its UTF-8 bytes
    preview = F.substring(F.make_valid_utf8(value.cast("string")), 1, QUARANTINE_PREVIEW_CHARS)
    return (old.withColumn("value", value).withColumn("value_preview", preview)
            .select(*QUARANTINE_COLUMNS).withColumn("date", F.to_date("kafka_timestamp")))


def _import_dataset(spark: SparkSession, settings: Settings, dataset: str, stamp: str) -> int:
    from pyspark.errors import AnalysisException

    fs = storage_filesystem(settings)
    url, importing = settings.storage_url(dataset), _importing(settings, dataset)
    path, importing_path = storage_path(settings, dataset), storage_path(settings, dataset + IMPORTING_SUFFIX)
    if fs.exists(path):  # still the old folder
        if not _is_table(importing):
            if fs.exists(importing_path):
                fs.rm(importing_path, recursive=True)  # an import interrupted before its commit
            try:
                old = spark.read.parquet(url)  # Spark reads the files `_spark_metadata` lists, no others
            except AnalysisException as error:
                if error.getCondition() != "UNABLE_TO_INFER_SCHEMA":
                    raise
                old = None  # no committed file: the job creates the table on its first write
            if old is not None:
                rows, partitions = ((raw_rows(old), RAW_PARTITION_COLUMNS) if dataset == RAW_DATASET
                                    else (quarantine_rows(old), QUARANTINE_PARTITION_COLUMNS))
                rows.write.format("delta").mode("overwrite").partitionBy(*partitions).save(importing)
        _move(fs, path, storage_path(settings, LEGACY_DIR, stamp, dataset))
    if not _is_table(importing):
        return 0
    _move(fs, importing_path, path)
    return spark.read.format("delta").load(url).count()


def _rebuild_hourly(spark: SparkSession, settings: Settings, stamp: str) -> int:
    from pyspark.sql import functions as F

    from btcstream.streaming.hourly_upserts import LiveDates, touched_hours, upsert_hours

    fs = storage_filesystem(settings)
    raw_url = settings.storage_url(RAW_DATASET)
    path = storage_path(settings, HOURLY_DATASET)
    importing_path = path + IMPORTING_SUFFIX
    importing = _importing(settings, HOURLY_DATASET)
    if _is_table(raw_url):
        raw = spark.read.format("delta").load(raw_url)
        newest = raw.agg(F.unix_micros(F.max("event_time"))).collect()[0][0]
        if newest is not None:
            clock = datetime.fromtimestamp(newest / 1e6, timezone.utc)
            allowed = settings.allowed_lateness_span
            dates = sorted(row[0] for row in raw.select("date").distinct().collect())
            live = LiveDates()
            grid = int(settings.rv_grid_span.total_seconds())
            for date in dates:  # a day at a time: bounded work per upsert, and progress in the log
                counts = upsert_hours(spark, raw_url, importing, touched_hours(raw.where(F.col("date") == date)),
                                      clock, allowed, live, grid_seconds=grid)
                log.info("%s %s: %d hours", HOURLY_DATASET, date, counts.hours)
    if fs.exists(path):
        _move(fs, path, storage_path(settings, LEGACY_DIR, stamp, HOURLY_DATASET))
    if not fs.exists(importing_path):
        return 0
    _move(fs, importing_path, path)
    return spark.read.format("delta").load(settings.storage_url(HOURLY_DATASET)).count()


def _move_checkpoints(settings: Settings, plan: MigrationPlan) -> None:
    fs = storage_filesystem(settings)
    if plan.start_offsets is not None:
        target = storage_path(settings, CHECKPOINTS_DIR, INGEST_START_OFFSETS_FILE)
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(target, "wb") as handle:  # rewritten whole by a re-run while the old checkpoints remain
            handle.write(json.dumps(_offsets_document(settings, plan.start_offsets)).encode())
    for name in plan.checkpoints:
        _move(fs, storage_path(settings, CHECKPOINTS_DIR, name),
              storage_path(settings, LEGACY_DIR, plan.stamp, CHECKPOINTS_DIR, name))


def _offsets_document(settings: Settings, offsets: dict[int, int]) -> dict:
    return {"topic": settings.topic, "offsets": {str(p): o for p, o in offsets.items()}}


def _legacy_checkpoint_entries() -> tuple[str, ...]:
    return (*LEGACY_CHECKPOINTS, *(f"{PROGRESS_DIR}/{name}" for name in LEGACY_PROGRESS_FILES))


def _stamp(settings: Settings, now: datetime | None) -> str:
    """The stamp of an unfinished migration of this root (resumed), else a new one from `now` (UTC)."""
    fs = storage_filesystem(settings)
    legacy = storage_path(settings, LEGACY_DIR)
    if fs.exists(legacy):
        for entry in sorted(fs.ls(legacy, detail=False), reverse=True):
            record = f"{entry.rstrip('/')}/{RECORD_FILE}"
            if fs.exists(record):
                with fs.open(record, "rb") as handle:
                    if json.loads(handle.read().decode()).get("finished_at") is None:
                        return entry.rstrip("/").rsplit("/", 1)[-1]
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _record(settings: Settings, plan: MigrationPlan, finished: bool) -> None:
    """Write legacy/<stamp>/migration.json: what the first run found to do, and when the migration finished."""
    fs = storage_filesystem(settings)
    path = storage_path(settings, LEGACY_DIR, plan.stamp, RECORD_FILE)
    if fs.exists(path):  # a resumed run keeps the first run's record of what there was to do
        with fs.open(path, "rb") as handle:
            record = json.loads(handle.read().decode())
    else:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        record = {"checkpoints": list(plan.checkpoints), "imports": list(plan.imports),
                  "rebuild_hourly": plan.rebuild_hourly, "start_offsets": plan.start_offsets}
    record["finished_at"] = datetime.now(timezone.utc).isoformat() if finished else None
    if fs.exists(path):
        fs.rm(path)  # WebHDFS does not overwrite on create
    with fs.open(path, "wb") as handle:
        handle.write(json.dumps(record).encode())


def _move(fs, source: str, target: str) -> None:
    if fs.exists(target):
        raise MigrationError(f"cannot move {source} to {target}: the target exists; move it away and run "
                             f"`btcstream migrate` again")
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(source, target, recursive=True)


def _importing(settings: Settings, dataset: str) -> str:
    return settings.storage_url(dataset + IMPORTING_SUFFIX)


def _is_table(url: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(url)
