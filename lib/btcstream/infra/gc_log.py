"""The garbage-collection log of the JVM services we start (Kafka broker, HDFS NameNode and DataNode).

Each service writes `<name>-gc.log` beside its other logs (as Kafka's own start script does), rotated at
GC_LOG_FILE_SIZE x GC_LOG_FILES. `heap_after_gc` reads it back: the heap in use right after the
collections of a recent span, which tells a growing live set (a leak) from a heap that only fills up
towards its -Xmx, something a process's resident memory (RSS) alone cannot tell.
Not for: starting JVMs (`btcstream.infra.service`) or reading their application logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

GC_LOG_FILES, GC_LOG_FILE_SIZE = 2, "4m"
# JDK 17 unified logging, decorators time + uptime, e.g.
# [2026-12-03T06:54:38.808+0000][0.038s] GC(0) Pause Young (Normal) (G1 Evacuation Pause) 6M->6M(64M) 4.349ms
_PAUSE = re.compile(r"^\[(?P<time>[^\]]+)\]\[[^\]]+\] GC\(\d+\) Pause \w+.*? "
                    r"(?P<before>\d+)M->(?P<after>\d+)M\((?P<committed>\d+)M\)")


def gc_log_options(path: Path) -> list[str]:
    """The java option that writes the GC log to `path` (quoted: a path may hold a ':')."""
    return [f'-Xlog:gc:file="{path}":time,uptime:filecount={GC_LOG_FILES},filesize={GC_LOG_FILE_SIZE}']


@dataclass(frozen=True)
class HeapAfterGc:
    """Heap figures of the collections within a span: the smallest heap in use right after one (MiB),
    the committed heap at the newest, and how many collections there were."""

    used_mib: int
    committed_mib: int
    collections: int


def heap_after_gc(path: Path, within: timedelta, now: datetime | None = None) -> HeapAfterGc | None:
    """The collections of the last `within` in the GC log at `path` (None: no log, or no pause that recent).

    Only the current file is read: rotation keeps the newest lines there, and a span of minutes
    never reaches back into the previous file's."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    since = (now or datetime.now(timezone.utc)) - within
    used, committed, count = None, 0, 0
    for line in text.splitlines():
        match = _PAUSE.match(line)
        if match is None:
            continue
        try:
            at = datetime.strptime(match["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
        except ValueError:
            continue
        if at < since:
            continue
        after = int(match["after"])
        used = after if used is None else min(used, after)
        committed, count = int(match["committed"]), count + 1
    return None if used is None else HeapAfterGc(used, committed, count)
