"""A JVM-free filesystem for the storage root: WebHDFS for `hdfs://`, the local disk for `file://`.

Used by readers, `btcstream data` and tests; Spark uses its own Hadoop client instead.
"""

from __future__ import annotations

import getpass
import os
import uuid
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from btcstream.settings import Settings


def storage_filesystem(settings: Settings) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem behind `settings.storage_root`.

    For `hdfs://host:port/...` this talks WebHDFS on `settings.webhdfs_port` (Hadoop 3's 9870;
    fsspec's own default 50070 is Hadoop 2's), as user HADOOP_USER_NAME or the login name.
    """
    if settings.storage_scheme == "hdfs":
        user = os.environ.get("HADOOP_USER_NAME") or getpass.getuser()
        return fsspec.filesystem("webhdfs", host=settings.hdfs_host, port=settings.webhdfs_port, user=user)
    return fsspec.filesystem("file")


def storage_path(settings: Settings, *parts: str) -> str:
    """A path under the storage root as the filesystem above names it (no scheme)."""
    return urlparse(settings.storage_url(*parts)).path.rstrip("/")


def read_parquet(fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file of `fs` as an Arrow table, decoded without Arrow's thread pools.

    The bytes are read here, in Python, and decoded in the calling thread. Given the fsspec file
    object, Arrow's I/O threads call back into Python to read it, and Arrow threads still busy
    when the interpreter exits abort the process after all the work is done ("terminate called
    without an active exception", apache/arrow#34314, #39862; measured here: 9 of 40 short reader
    processes). Callers that read many files overlap them with their own Python threads.
    """
    with fs.open(path, "rb") as handle:
        data = handle.read()
    return pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)


def create_exclusively(fs: fsspec.AbstractFileSystem, path: str, content: bytes) -> bool:
    """Create `path` holding `content` unless it exists; True when this call created it.

    Atomic, and readers never see a partial file: the content is written to a temporary file that
    is then linked (local disk: a hard link fails if `path` exists) or renamed (HDFS: a rename
    never replaces an existing file) onto `path`.
    """
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open(temporary, "wb") as handle:
        handle.write(content)
    try:
        if "file" in _protocols(fs):
            try:
                os.link(temporary, path)
                return True
            except FileExistsError:
                return False
        # WebHDFS RENAME answers {"boolean": false} when the destination exists (fsspec's mv drops that).
        return bool(fs._call("RENAME", method="put", path=temporary, destination=path).json().get("boolean", False))
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
