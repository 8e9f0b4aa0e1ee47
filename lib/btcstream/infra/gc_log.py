"""The garbage-collection log of the JVM services we start (Kafka broker, HDFS NameNode and DataNode).

Each service writes `<name>-gc.log` beside its other logs (as Kafka's own start script does), rotated at
GC_LOG_FILE_SIZE x GC_LOG_FILES. `heap_after_gc` reads it back: the heap in use right after the
collections of a recent span, which tells a heap that only fills up towards its -Xmx from a growing
one, something a process's resident memory (RSS) alone cannot tell.

The heap after a young or mixed collection still holds the garbage of old regions G1 has not
collected (it leaves regions that are mostly live, and it need not collect at all while the heap has
room), so it can creep up for hours without a leak. The live data itself is what G1's concurrent
marking finds: with G1 each service also writes `<name>-gc-liveness.log` (`gc+liveness=trace`: after
each marking a per-region table and a `### SUMMARY` line), and `live_after_marking` reads the live
bytes of the markings of a recent span: a leak grows them, garbage does not.
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


# After a marking (not the post-cleanup table), e.g.
# [2026-12-03T11:35:18.974+0000][3.231s] GC(12) ### PHASE Post-Marking @ 3.231
# [2026-12-03T11:35:18.974+0000][3.231s] GC(12) ### SUMMARY  capacity: 64.00 MB  used: 32.04 MB / 50.07 %  prev-live: 32.04 MB / 50.07 %  next-live: 23.86 MB / 37.28 % ...
_POST_MARKING = re.compile(r"^\[[^\]]+\]\[[^\]]+\] GC\((?P<gc>\d+)\) ### PHASE Post-Marking ")
_SUMMARY = re.compile(r"^\[(?P<time>[^\]]+)\]\[[^\]]+\] GC\((?P<gc>\d+)\) ### SUMMARY .*? used: (?P<used>[\d.]+) MB"
                      r".*? next-live: (?P<live>[\d.]+) MB")


def gc_log_options(path: Path) -> list[str]:
    """The java options that write the GC log to `path` and G1's liveness after each marking to
    `liveness_log(path)` (quoted: a path may hold a ':'). The liveness log holds a line per heap
    region per marking (~0.2 MB per marking of a 512 MB heap): its own file, rotated the same way."""
    rotation = f"filecount={GC_LOG_FILES},filesize={GC_LOG_FILE_SIZE}"
    return [f'-Xlog:gc:file="{path}":time,uptime:{rotation}',
            f'-Xlog:gc+liveness=trace:file="{liveness_log(path)}":time,uptime:{rotation}']


def liveness_log(path: Path) -> Path:
    """`kafka-gc.log` -> `kafka-gc-liveness.log`: where `gc_log_options` sends G1's liveness tables."""
    return path.with_name(f"{path.stem}-liveness{path.suffix}")


@dataclass(frozen=True)
class HeapAfterGc:
    """Heap figures of the collections within a span: the smallest heap in use right after one (MiB),
    the committed heap at the newest, and how many collections there were."""

    used_mib: int
    committed_mib: int
    collections: int


@dataclass(frozen=True)
class LiveAfterMarking:
    """G1's markings within a span: the live data the newest found (MiB), the heap in use then, how many."""

    live_mib: float
    used_mib: float
    markings: int


def _log_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


def live_after_marking(path: Path, within: timedelta, now: datetime | None = None) -> LiveAfterMarking | None:
    """The markings of the last `within` in the liveness log at `path` (`liveness_log` of the GC log;
    None: no log, or no marking that recent: G1 marks only once the heap fills past its threshold).

    The live bytes are the `next-live` of the SUMMARY after a `Post-Marking` phase: what the marking
    found reachable, garbage excluded, without the full collection a heap histogram would force."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    since = (now or datetime.now(timezone.utc)) - within
    marking, newest, count = None, None, 0
    for line in text.splitlines():
        started = _POST_MARKING.match(line)
        if started is not None:
            marking = started["gc"]
            continue
        summary = _SUMMARY.match(line)
        if summary is None or summary["gc"] != marking:
            continue
        marking = None  # the post-cleanup SUMMARY of the same GC id is not a marking's
        at = _log_time(summary["time"])
        if at is None or at < since:
            continue
        newest, count = (float(summary["live"]), float(summary["used"])), count + 1
    return None if newest is None else LiveAfterMarking(newest[0], newest[1], count)


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
        at = _log_time(match["time"])
        if at is None or at < since:
            continue
        after = int(match["after"])
        used = after if used is None else min(used, after)
        committed, count = int(match["committed"]), count + 1
    return None if used is None else HeapAfterGc(used, committed, count)
