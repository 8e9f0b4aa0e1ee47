"""Persist each streaming query's progress where another process (`btcstream status`) can read it.

After every micro-batch the job writes `<root>/checkpoints/progress/<query name>.json`: Spark's
latest `StreamingQueryProgress` plus running totals (input rows, late rows dropped by the
watermark, quarantined rows) and the last `HISTORY_BATCHES` batch summaries. Totals are counted
once per batch id, so a batch that is re-run after a crash is not counted twice. The file is
replaced atomically (write, then rename). Not for: exactly-once data (the sinks own that).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import fsspec

from btcstream.names import CHECKPOINTS_DIR, PROGRESS_DIR
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path

log = logging.getLogger(__name__)

HISTORY_BATCHES = 100


def progress_path(settings: Settings, query_name: str) -> str:
    """Where the progress of `query_name` lives (a path of `storage_filesystem(settings)`)."""
    return storage_path(settings, CHECKPOINTS_DIR, PROGRESS_DIR, f"{query_name}.json")


def read_progress(settings: Settings, query_name: str) -> dict[str, Any] | None:
    """The persisted progress document of a query, or None if it never ran."""
    fs = storage_filesystem(settings)
    path = progress_path(settings, query_name)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read().decode())


def late_rows(progress: dict[str, Any]) -> int:
    """Rows a batch's stateful operators dropped because they were older than the watermark."""
    return sum(int(op.get("numRowsDroppedByWatermark") or 0) for op in progress.get("stateOperators") or [])


def observed(progress: dict[str, Any], name: str, metric: str) -> int:
    """An `observe()`d metric of a batch, 0 when absent."""
    value = ((progress.get("observedMetrics") or {}).get(name) or {}).get(metric)
    return int(value or 0)


def batch_summary(progress: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of one batch worth keeping in the history."""
    return {
        "batch_id": progress.get("batchId"),
        "timestamp": progress.get("timestamp"),
        "input_rows": int(progress.get("numInputRows") or 0),
        "late_rows": late_rows(progress),
        "quarantined_rows": observed(progress, "quarantine", "rows"),
        "duration_ms": (progress.get("durationMs") or {}).get("triggerExecution"),
        "watermark": (progress.get("eventTime") or {}).get("watermark"),
    }


def merge(document: dict[str, Any] | None, progress: dict[str, Any]) -> dict[str, Any]:
    """The progress document after one more batch (a batch id already counted adds nothing to totals)."""
    document = document or {"totals": {"batches": 0, "input_rows": 0, "late_rows": 0, "quarantined_rows": 0},
                            "history": [], "last_batch_id": -1}
    batch_id = int(progress.get("batchId", -1))
    summary = batch_summary(progress)
    if batch_id > document["last_batch_id"]:
        totals = document["totals"]
        totals["batches"] += 1
        for key in ("input_rows", "late_rows", "quarantined_rows"):
            totals[key] += summary[key]
        document["last_batch_id"] = batch_id
    document["history"] = ([h for h in document["history"] if h["batch_id"] != batch_id] + [summary])[-HISTORY_BATCHES:]
    document["latest"] = progress
    document["updated_at"] = datetime.now(timezone.utc).isoformat()
    return document


class ProgressWriter:
    """Writes the progress document of the queries it is told about, one file per query name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fs: fsspec.AbstractFileSystem = storage_filesystem(settings)
        self._documents: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()

    def record(self, progress: dict[str, Any]) -> None:
        """Fold one `StreamingQueryProgress` (as a dict) into its query's document and persist it."""
        name = progress.get("name")
        if not name:
            return
        with self._lock:
            if name not in self._documents:
                self._documents[name] = read_progress(self.settings, name)
            document = merge(self._documents[name], progress)
            self._documents[name] = document
            self._write(progress_path(self.settings, name), document)

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
            document = self._documents.get(name) or read_progress(self.settings, name)
            if document is None:
                return
            document.pop("stopped_at", None)
            document["error"] = None
            document["updated_at"] = datetime.now(timezone.utc).isoformat()
            self._documents[name] = document
            self._write(progress_path(self.settings, name), document)

    def mark_stopped(self, name: str, error: str | None) -> None:
        """Record that a query stopped (and why, if it failed)."""
        with self._lock:
            document = self._documents.get(name) or read_progress(self.settings, name)
            if document is None:
                return
            document["stopped_at"] = datetime.now(timezone.utc).isoformat()
            if error is not None:  # a clean stop never hides an earlier failure
                document["error"] = error
            self._write(progress_path(self.settings, name), document)

    def _write(self, path: str, document: dict[str, Any]) -> None:
        directory = path.rsplit("/", 1)[0]
        temporary = f"{directory}/.{uuid.uuid4().hex}.tmp"
        try:
            self._fs.makedirs(directory, exist_ok=True)
            with self._fs.open(temporary, "wb") as handle:
                handle.write(json.dumps(document, default=str).encode())
            if self.settings.storage_scheme == "hdfs" and self._fs.exists(path):
                self._fs.rm(path)  # WebHDFS rename does not overwrite (readers retry once)
            self._fs.mv(temporary, path)
        except Exception:  # progress is diagnostics: never let it stop a query
            log.exception("could not write streaming progress to %s", path)
