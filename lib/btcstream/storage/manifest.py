"""Which Parquet files of a dataset are committed, honouring Spark's file-sink metadata log.

A Structured Streaming file sink writes data files first and then records them in
`<dataset>/_spark_metadata/<batch>` (or `<batch>.compact`). A file that is on disk but not in
that log is half-written or from a failed batch and must never be read. Readers outside Spark
call `committed_files` instead of listing the directory.

Log format (Spark's FileStreamSinkLog, version 1): the first line is `v1`, every further line a
JSON object such as `{"path":"hdfs://.../part-0000.snappy.parquet","size":123,"isDir":false,
"modificationTime":...,"blockReplication":1,"blockSize":...,"action":"add"}`.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import fsspec

METADATA_DIR = "_spark_metadata"
_LOG_FILE = re.compile(r"^(\d+)(\.compact)?$")


def committed_files(fs: fsspec.AbstractFileSystem, dataset_path: str) -> list[str]:
    """Paths (without scheme) of the committed data files of a file-sink dataset, sorted.

    A dataset without `_spark_metadata` (written by a batch job) is read as every `*.parquet`
    file outside hidden (`_` or `.`) directories.
    """
    metadata = f"{dataset_path.rstrip('/')}/{METADATA_DIR}"
    if not fs.exists(metadata):
        if not fs.exists(dataset_path):
            return []
        return sorted(p for p in fs.find(dataset_path) if p.endswith(".parquet") and not _hidden(p, dataset_path))
    batches: dict[int, str] = {}
    for entry in fs.ls(metadata, detail=False):
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
