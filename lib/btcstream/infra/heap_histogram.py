"""The live heap of a running JVM, measured exactly: `jcmd <pid> GC.class_histogram`.

The command runs a full collection first, so its total is the data still reachable, without the
garbage that G1 leaves in old regions until a concurrent marking (which may not come for hours in
a heap with room). It pauses the JVM for the collection (tens of ms for the local services' heaps):
for occasional measurements (the soak run), not for every minute.
Not for: a JVM without the JDK's tools beside its `java` (a bare JRE has no jcmd): None then.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from btcstream.infra.java import java_executable

# "   1:         46447      148706256  [B (java.base@17.0.15)"  and  "Total        812345       46137344"
_ROW = re.compile(r"^\s*\d+:\s+(?P<instances>\d+)\s+(?P<bytes>\d+)\s+(?P<name>\S+)")
_TOTAL = re.compile(r"^Total\s+(?P<instances>\d+)\s+(?P<bytes>\d+)")
JVM_TYPE_NAMES = {"[B": "byte[]", "[C": "char[]", "[I": "int[]", "[J": "long[]", "[Ljava.lang.Object;": "Object[]"}


@dataclass(frozen=True)
class HeapHistogram:
    live_mib: float  # every object reachable after the full collection
    top: tuple[tuple[str, float], ...]  # (class, MiB) of the largest classes, largest first


def parse_histogram(text: str, top: int = 5) -> HeapHistogram | None:
    """A `GC.class_histogram` printout as a HeapHistogram; None without its Total line."""
    rows: list[tuple[str, float]] = []
    for line in text.splitlines():
        total = _TOTAL.match(line)
        if total:
            return HeapHistogram(int(total["bytes"]) / 2**20, tuple(rows[:top]))
        row = _ROW.match(line)
        if row:
            rows.append((JVM_TYPE_NAMES.get(row["name"], row["name"]), int(row["bytes"]) / 2**20))
    return None


def heap_histogram(pid: int, top: int = 5, timeout_s: float = 120.0) -> HeapHistogram | None:
    """The live heap of JVM `pid` after a full collection; None when jcmd is missing, the process
    is gone or does not answer in time."""
    jcmd = Path(java_executable()).with_name("jcmd")
    if not jcmd.exists():
        return None
    try:
        done = subprocess.run([str(jcmd), str(pid), "GC.class_histogram"], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return parse_histogram(done.stdout, top) if done.returncode == 0 else None
