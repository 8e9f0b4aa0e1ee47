"""A JVM-free filesystem for the storage root: WebHDFS for `hdfs://`, the local disk for `file://`.

Used by readers, `btcstream data` and tests; Spark uses its own Hadoop client instead.
"""

from __future__ import annotations

import getpass
import os
from urllib.parse import urlparse

import fsspec

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
