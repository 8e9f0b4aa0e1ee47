"""Persist each streaming query's progress where another process (`btcstream status`) can read it.

After every micro-batch the job writes `<root>/checkpoints/progress/<query name>.json`: Spark's
latest `StreamingQueryProgress` plus running totals and the last `HISTORY_BATCHES` batch
summaries. The counts come from the job's batch function (`note_batch`, see `BATCH_COUNTS`):
records read, quarantined, late ticks (stored, counted), ticks inserted into raw_data, duplicates
skipped, hourly rows opened / updated / revised / finalised. Totals are counted once per batch
id, so a batch that is re-run after a crash is not counted twice. The file is
replaced atomically (write, then rename). Not for: exactly-once data (the sinks own that).
"""

from __future__ import annotations

import json
import time
import logging
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import fsspec

from btcstream.errors import StorageReadError
from btcstream.names import CHECKPOINTS_DIR, PROGRESS_DIR
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path

log = logging.getLogger(__name__)

HISTORY_BATCHES = 100
READ_ATTEMPTS = 6  # reads of a progress document caught mid-replacement (0.05, 0.1, 0.2 ... s apart)

# The per-batch counts the job notes (`ProgressWriter.note_batch`) and the totals sum.
BATCH_COUNTS: tuple[str, ...] = (
    "input_rows", "quarantined_rows", "late_rows", "inserted_rows", "duplicate_rows",
    "trades_inserted", "trade_duplicates",
    "hourly_opened", "hourly_updated", "hourly_revised", "hourly_finalised",
    "forecasts_written", "alerts_raised", "alert_late_bars", "alerts_unpublished",
)
# Where a batch's time went (milliseconds, per batch only, not summed): the batch function's stages
# (`btcstream.streaming.job.IngestBatch`), in the order they run.
BATCH_STAGES: tuple[str, ...] = ("clock", "tables", "hourly", "forecasts", "alerts")


def progress_path(settings: Settings, query_name: str) -> str:
    """Where the progress of `query_name` lives (a path of `storage_filesystem(settings)`)."""
    return storage_path(settings, CHECKPOINTS_DIR, PROGRESS_DIR, f"{query_name}.json")


def read_progress(settings: Settings, query_name: str) -> dict[str, Any] | None:
    """The persisted progress document of a query, or None if it never ran.

    The writer replaces the document after every batch (write, then rename). A reader can catch
    that: on WebHDFS the file is briefly absent, and a read that began on the old file may fetch
    bytes of the new one (fsspec reads ranges of the size it found at open), which gives torn JSON.
    Both are read again, a little later each time; a document still torn after `READ_ATTEMPTS`
    reads raises StorageReadError naming the file.
    """
    fs = storage_filesystem(settings)
    path = progress_path(settings, query_name)
    problem = ""
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(0.05 * 2 ** (attempt - 1))
        if not fs.exists(path):
            return None
        try:
            with fs.open(path, "rb") as handle:
                return json.loads(handle.read().decode())
        except FileNotFoundError:
            problem = "it disappeared while being read"
        except (UnicodeDecodeError, json.JSONDecodeError) as error:  # caught mid-replacement
            problem = f"it is not a whole JSON document ({error})"
    raise StorageReadError(f"the progress document {path} could not be read after {READ_ATTEMPTS} attempts: "
                           f"{problem}; if the job is not running, delete it (the totals start again)")


def batch_summary(progress: dict[str, Any], counts: dict[str, int] | None = None,
                  stage_ms: dict[str, int] | None = None) -> dict[str, Any]:
    """The few numbers of one batch worth keeping in the history: timing (Spark's, and the job's
    stages when noted: `stage_ms`) plus the job's counts."""
    counts = counts or {}
    summary: dict[str, Any] = {
        "batch_id": progress.get("batchId"),
        "timestamp": progress.get("timestamp"),
        "duration_ms": (progress.get("durationMs") or {}).get("triggerExecution"),
    }
    for key in BATCH_COUNTS:
        summary[key] = int(counts.get(key, 0))
    summary["input_rows"] = int(counts.get("input_rows", progress.get("numInputRows") or 0))
    if stage_ms:
        summary["stage_ms"] = {stage: int(stage_ms[stage]) for stage in BATCH_STAGES if stage in stage_ms}
    return summary


def empty_document() -> dict[str, Any]:
    """The progress document of a query before its first batch."""
    return {"totals": {"batches": 0, **{key: 0 for key in BATCH_COUNTS}}, "history": [], "last_batch_id": -1}


def merge(document: dict[str, Any] | None, progress: dict[str, Any],
          counts: dict[str, int] | None = None, stage_ms: dict[str, int] | None = None) -> dict[str, Any]:
    """The progress document after one more batch (a batch id already counted adds nothing to totals)."""
    document = document or empty_document()
    batch_id = int(progress.get("batchId", -1))
    summary = batch_summary(progress, counts, stage_ms)
    if batch_id > document["last_batch_id"]:
        totals = document["totals"]
        totals["batches"] = totals.get("batches", 0) + 1
        for key in BATCH_COUNTS:
            totals[key] = totals.get(key, 0) + summary[key]
        document["last_batch_id"] = batch_id
    document["history"] = ([h for h in document["history"] if h["batch_id"] != batch_id] + [summary])[-HISTORY_BATCHES:]
    document["latest"] = progress
    document["updated_at"] = datetime.now(timezone.utc).isoformat()
    return document


class ProgressWriter:
    """Writes the progress document of the queries it is told about, one file per query name.

    Progress is diagnostics: nothing here raises into the job. While the stored document cannot be
    read (HDFS restarting or in safe mode), what happens is kept in memory (Spark's progress
    events, restarts) and folded in once it can be read, so the stored totals are never replaced
    by a document that starts from zero, and no batch's counts are lost.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fs: fsspec.AbstractFileSystem = storage_filesystem(settings)
        self._documents: dict[str, dict[str, Any] | None] = {}
        self._counts: dict[tuple[str, int], dict[str, int]] = {}  # (query, batch id) -> counts noted
        self._stage_ms: dict[tuple[str, int], dict[str, int]] = {}  # (query, batch id) -> stage times noted
        self._waiting: dict[str, list[dict[str, Any]]] = {}  # progress events not folded in yet (unreadable)
        self._restarts: dict[str, list[str]] = {}  # restart reasons not counted yet (unreadable)
        self._lock = threading.Lock()

    def note_batch(self, name: str, batch_id: int, counts: dict[str, int],
                   stage_ms: dict[str, int] | None = None) -> None:
        """Keep what the job's batch function counted (and how long its stages took, `BATCH_STAGES`)
        until Spark reports that batch's progress."""
        with self._lock:
            self._counts[(name, batch_id)] = dict(counts)
            if stage_ms:
                self._stage_ms[(name, batch_id)] = dict(stage_ms)

    def record(self, progress: dict[str, Any]) -> None:
        """Fold one `StreamingQueryProgress` (as a dict) into its query's document and persist it."""
        name = progress.get("name")
        if not name:
            return
        with self._lock:
            self._waiting.setdefault(name, []).append(progress)
            if self._loaded(name):
                self._write(progress_path(self.settings, name), self._documents[name])

    def touch(self, name: str) -> None:
        """Record that an idle query is alive (Spark reports idle triggers without a progress)."""
        with self._lock:
            document = self._documents.get(name)
            if document is None:
                return
            document["updated_at"] = datetime.now(timezone.utc).isoformat()
            self._write(progress_path(self.settings, name), document)

    def mark_started(self, name: str) -> None:
        """Forget a previous stop or failure of `name`."""
        with self._lock:
            if not self._loaded(name) or self._documents[name] is None:
                return
            document = self._documents[name]
            document.pop("stopped_at", None)
            document["error"] = None
            document["updated_at"] = datetime.now(timezone.utc).isoformat()
            self._write(progress_path(self.settings, name), document)

    def mark_stopped(self, name: str, error: str | None) -> None:
        """Record that a query stopped (and why, if it failed)."""
        with self._lock:
            if not self._loaded(name) or self._documents[name] is None:
                return
            document = self._documents[name]
            document["stopped_at"] = datetime.now(timezone.utc).isoformat()
            if error is not None:  # a clean stop never hides an earlier failure
                document["error"] = error
            self._write(progress_path(self.settings, name), document)

    def note_restart(self, name: str, reason: str) -> None:
        """Count a restart of `name` after a failure (`btcstream stream --max-restarts`), with its reason."""
        with self._lock:
            self._restarts.setdefault(name, []).append(reason)
            if self._loaded(name):
                self._write(progress_path(self.settings, name), self._documents[name])

    def _loaded(self, name: str) -> bool:
        """Make `self._documents[name]` current: read it once (None: never written), then fold in the
        progress events and restarts kept meanwhile. False while the stored document cannot be read."""
        if name not in self._documents:
            try:
                self._documents[name] = read_progress(self.settings, name)
            except Exception as error:  # noqa: BLE001 - e.g. HDFS in safe mode: try again at the next event
                log.warning("could not read streaming progress of %s (kept in memory until it can be): %s", name,
                            (str(error).splitlines() or [type(error).__name__])[0])
                return False
        for progress in self._waiting.pop(name, []):
            key = (name, int(progress.get("batchId", -1)))
            counts, stage_ms = self._counts.pop(key, None), self._stage_ms.pop(key, None)
            self._documents[name] = merge(self._documents[name], progress, counts, stage_ms)
        reasons = self._restarts.pop(name, [])
        if reasons:
            document = self._documents[name] or empty_document()
            document["restarts"] = int(document.get("restarts") or 0) + len(reasons)
            document["last_restart"] = {"at": datetime.now(timezone.utc).isoformat(), "reason": reasons[-1]}
            self._documents[name] = document
        return True

    def _write(self, path: str, document: dict[str, Any]) -> None:
        directory = path.rsplit("/", 1)[0]
        temporary = f"{directory}/.{uuid.uuid4().hex}.tmp"
        try:
            self._fs.makedirs(directory, exist_ok=True)
            with self._fs.open(temporary, "wb") as handle:
                handle.write(json.dumps(document, default=str).encode())
            if self.settings.storage_scheme == "hdfs":
                # WebHDFS's plain RENAME refuses an existing target, and rm + rename leaves a moment
                # without a document (a reader would take the query for one that never ran).
                # `renameoptions=OVERWRITE` (Hadoop's rename2) replaces it atomically; fsspec's mv
                # has no such option, hence its request helper.
                self._fs._call("RENAME", method="put", path=temporary, destination=path, renameoptions="OVERWRITE")
            else:
                self._fs.mv(temporary, path)
        except Exception as error:  # progress is diagnostics: never let it stop a query
            # One line (a full disk would repeat a traceback per batch); the traceback at debug level.
            log.warning("could not write streaming progress to %s: %s", path,
                        (str(error).splitlines() or [type(error).__name__])[0])
            log.debug("progress write failure", exc_info=True)
