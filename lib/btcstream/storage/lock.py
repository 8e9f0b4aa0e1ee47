"""An exclusive lock file under the storage root, for work that must never run twice at once.

Two compactions of the same partition would each record a merged file, and readers would then
see its rows twice; `btcstream compact` holds this lock while it works.

The lock is created atomically (`filesystem.create_exclusively`). It names its holder (host, pid,
since when), so a lock left by a crashed process is easy to recognise and delete by hand.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import fsspec

from btcstream.errors import LockHeld
from btcstream.storage.filesystem import create_exclusively

log = logging.getLogger(__name__)


@contextmanager
def exclusive_lock(fs: fsspec.AbstractFileSystem, path: str, purpose: str) -> Iterator[None]:
    """Hold the lock file `path` while the block runs; LockHeld (naming the holder) if it exists."""
    holder = json.dumps({"purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
                         "user": getpass.getuser(), "since": datetime.now(timezone.utc).isoformat()})
    if not create_exclusively(fs, path, holder.encode()):
        raise LockHeld(f"{path} is held by {_describe(fs, path)}; if that process is no longer running, "
                       f"delete the lock file and retry")
    try:
        yield
    finally:
        _release(fs, path, holder.encode())


def _release(fs: fsspec.AbstractFileSystem, path: str, holder: bytes) -> None:
    """Delete the lock file if it is still ours; warn (never delete) if it is gone or someone else's.

    The lock can vanish while held if someone deleted it by hand, and a second process may then
    have taken it: removing that process's lock would let a third one in.
    """
    try:
        with fs.open(path, "rb") as handle:
            current = handle.read()
    except FileNotFoundError:
        log.warning("the lock %s was deleted by someone else while this process held it", path)
        return
    if current != holder:
        log.warning("the lock %s now belongs to %s; leaving it in place", path, _describe(fs, path))
        return
    fs.rm(path)


def _describe(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """'purpose by user@host pid N since T', or what little can be said about an unreadable lock."""
    try:
        with fs.open(path, "rb") as handle:
            holder = json.loads(handle.read())
        return (f"{holder['purpose']} by {holder['user']}@{holder['host']} pid {holder['pid']} "
                f"since {holder['since']}")
    except (OSError, ValueError, KeyError):
        return "another process"
