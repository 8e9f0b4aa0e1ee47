"""Which Parquet files of a dataset are committed, honouring Spark's file-sink metadata log.

A Structured Streaming file sink writes data files first and then records them in
`<dataset>/_spark_metadata/<batch>` (or `<batch>.compact`). A file that is on disk but not in
that log is half-written or from a failed batch and must never be read. Readers outside Spark
call `committed_files` instead of listing the directory.

Log format (Spark's FileStreamSinkLog, version 1): the first line is `v1`, every further line a
JSON object such as `{"path":"hdfs://.../part-0000.snappy.parquet","size":123,"isDir":false,
"modificationTime":...,"blockReplication":1,"blockSize":...,"action":"add"}`.

Compaction (`btcstream compact`) never edits Spark's log (the running sink owns it). It writes
one merged file per partition beside the small ones, then records the swap in
`<dataset>/_btcstream_compaction/<n>.json` (written under a temporary name and renamed, so it
appears whole or not at all): `{"replaced": [paths], "added": [paths], "created_at": ...}`.
Committed files = the sink log's files, then for each compaction entry in order: minus
`replaced`, plus `added`. Before the rename readers see only the small files, after it only the
merged one: never both (duplicates), never neither (gaps). Replaced files are deleted by a later
compaction run, after a grace period, so a reader that listed them just before the swap can still
open them. Spark readers must therefore read `committed_urls(...)`, not the dataset directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import fsspec

from btcstream.storage.filesystem import create_exclusively

if TYPE_CHECKING:
    from btcstream.settings import Settings

METADATA_DIR = "_spark_metadata"
COMPACTION_DIR = "_btcstream_compaction"
_LOG_FILE = re.compile(r"^(\d+)(\.compact)?$")
_COMPACTION_FILE = re.compile(r"^(\d+)\.json$")


@dataclass(frozen=True)
class CompactionEntry:
    """One recorded compaction: `added` files replace `replaced` files (paths without scheme)."""

    number: int
    replaced: tuple[str, ...]
    added: tuple[str, ...]
    created_at: datetime


def committed_files(fs: fsspec.AbstractFileSystem, dataset_path: str) -> list[str]:
    """Paths (without scheme) of the committed data files of a dataset, sorted.

    The files of Spark's file-sink log (a dataset without `_spark_metadata`, written by a batch
    job, is read as every `*.parquet` file outside hidden `_`/`.` directories), with every
    recorded compaction applied.
    """
    files = dict.fromkeys(sink_files(fs, dataset_path))
    for entry in compaction_entries(fs, dataset_path):
        for path in entry.replaced:
            files.pop(path, None)
        files.update(dict.fromkeys(entry.added))
    return sorted(files)


def committed_urls(settings: "Settings", dataset: str) -> list[str]:
    """Full URLs (`hdfs://...` or `file://...`) of a dataset's committed files, for `spark.read.parquet`.

    Read with `.option("basePath", settings.storage_url(dataset))` to keep the partition columns.
    """
    from btcstream.storage.filesystem import storage_filesystem, storage_path

    root = urlparse(settings.storage_root)
    files = committed_files(storage_filesystem(settings), storage_path(settings, dataset))
    return [f"{root.scheme}://{root.netloc}{path}" for path in files]


def compaction_entries(fs: fsspec.AbstractFileSystem, dataset_path: str) -> list[CompactionEntry]:
    """The recorded compactions of a dataset, oldest first."""
    directory = f"{dataset_path.rstrip('/')}/{COMPACTION_DIR}"
    if not fs.exists(directory):
        return []
    numbered = []
    for entry in fs.ls(directory, detail=False):
        match = _COMPACTION_FILE.match(entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            numbered.append((int(match.group(1)), entry))
    entries = []
    for number, path in sorted(numbered):
        with fs.open(path, "rb") as handle:
            record = json.loads(handle.read().decode())
        entries.append(CompactionEntry(number, tuple(record["replaced"]), tuple(record["added"]),
                                       datetime.fromisoformat(record["created_at"])))
    return entries


def record_compaction(fs: fsspec.AbstractFileSystem, dataset_path: str, replaced: list[str], added: list[str],
                      created_at: datetime | None = None) -> CompactionEntry:
    """Atomically record that `added` files replace `replaced` files (one compactor at a time)."""
    directory = f"{dataset_path.rstrip('/')}/{COMPACTION_DIR}"
    fs.makedirs(directory, exist_ok=True)
    existing = compaction_entries(fs, dataset_path)
    number = existing[-1].number + 1 if existing else 0
    created_at = created_at or datetime.now(timezone.utc)
    target = f"{directory}/{number}.json"
    record = json.dumps({"replaced": sorted(replaced), "added": sorted(added), "created_at": created_at.isoformat()})
    if not create_exclusively(fs, target, record.encode()):
        raise FileExistsError(f"{target} appeared meanwhile: is another `btcstream compact` running?")
    return CompactionEntry(number, tuple(sorted(replaced)), tuple(sorted(added)), created_at)


def sink_files(fs: fsspec.AbstractFileSystem, dataset_path: str) -> list[str]:
    """The files Spark's file-sink log committed (or, without a log, every visible `*.parquet`)."""
    metadata = f"{dataset_path.rstrip('/')}/{METADATA_DIR}"
    if not fs.exists(metadata):
        if not fs.exists(dataset_path):
            return []
        return sorted(p for p in fs.find(dataset_path) if p.endswith(".parquet") and not _hidden(p, dataset_path))
    return logged_paths(fs, metadata)


def logged_paths(fs: fsspec.AbstractFileSystem, log_dir: str) -> list[str]:
    """Paths (without scheme) a Spark file log lists: a file sink's `_spark_metadata`, or a file
    source's `<checkpoint>/sources/<n>` (the files a file-stream query has read); same format."""
    if not fs.exists(log_dir):
        return []
    batches: dict[int, str] = {}
    for entry in fs.ls(log_dir, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        match = _LOG_FILE.match(name)
        if match:
            batches[int(match.group(1))] = entry
    if not batches:
        return []
    # The newest .compact file holds every earlier entry; read it and the batches after it.
    compacts = [b for b, path in batches.items() if path.endswith(".compact")]
    start = max(compacts) if compacts else min(batches)
    files: dict[str, None] = {}
    for batch in sorted(b for b in batches if b >= start):
        for record in _read_log(fs, batches[batch]):
            path = urlparse(record["path"]).path
            if record.get("action", "add") == "delete":
                files.pop(path, None)
            else:
                files[path] = None
    return sorted(files)


def _read_log(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    with fs.open(path, "rb") as handle:
        lines = handle.read().decode().splitlines()
    if not lines or not lines[0].startswith("v"):
        raise ValueError(f"{path} is not a Spark file-sink log (first line {lines[:1]!r})")
    return [json.loads(line) for line in lines[1:] if line.strip()]


def _hidden(path: str, root: str) -> bool:
    relative = path[len(root.rstrip("/")) + 1:]
    return any(part.startswith(("_", ".")) for part in relative.split("/")[:-1])
