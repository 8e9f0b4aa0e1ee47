"""The services' GC logs: written by a real JVM with our option, read back as heap after collection."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from btcstream.infra import artifacts
from btcstream.infra.gc_log import gc_log_options, heap_after_gc
from btcstream.infra.java import java_executable
from btcstream.infra.kafka import KafkaBroker
from btcstream.settings import Settings

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=timezone.utc)
LOG = """\
[2026-12-03T06:40:00.000+0000][1.0s] Using G1
[2026-12-03T06:40:00.100+0000][1.1s] GC(0) Pause Young (Normal) (G1 Evacuation Pause) 90M->20M(256M) 4.3ms
[2026-12-03T06:55:00.000+0000][901.0s] GC(7) Pause Young (Normal) (G1 Evacuation Pause) 300M->140M(384M) 6.1ms
[2026-12-03T06:56:00.000+0000][961.0s] GC(8) Concurrent Mark Cycle
[2026-12-03T06:56:01.000+0000][962.0s] GC(8) Pause Remark 310M->150M(384M) 0.3ms
[2026-12-03T06:58:00.000+0000][1081.0s] GC(9) Pause Young (Mixed) (G1 Evacuation Pause) 320M->120M(512M) 7.0ms
[2026-12-03T06:59:00.000+0000][1141.0s] GC(10) Pause Young (Normal) (G1 Evacuation Pause) 330M->125M(512M) 5.0ms
"""


def test_heap_after_gc_is_the_smallest_heap_after_a_pause_within_the_span(tmp_path: Path) -> None:
    path = tmp_path / "kafka-gc.log"
    path.write_text(LOG)
    reading = heap_after_gc(path, timedelta(minutes=10), now=NOW)
    assert reading is not None
    # The pauses at 06:55 and later count (the 06:40 one is older than 10 minutes); the concurrent
    # cycle's line is not a pause; the remark is.
    assert (reading.used_mib, reading.committed_mib, reading.collections) == (120, 512, 4)
    assert heap_after_gc(path, timedelta(minutes=30), now=NOW).used_mib == 20
    assert heap_after_gc(path, timedelta(seconds=30), now=NOW) is None  # no pause that recent
    assert heap_after_gc(tmp_path / "missing-gc.log", timedelta(minutes=10)) is None


def test_the_broker_command_writes_its_gc_log_beside_its_own_log(tmp_path: Path, monkeypatch) -> None:
    # The command line only: no jar resolution (that would run Maven, a JVM, in `make test-fast`).
    monkeypatch.setattr(artifacts, "classpath", lambda settings, component: "")
    broker = KafkaBroker(Settings(state_dir=tmp_path))
    assert broker.gc_log_file == tmp_path / "kafka" / "kafka-gc.log"
    assert gc_log_options(broker.gc_log_file)[0] in broker.command()


@pytest.mark.integration  # starts a JVM
def test_a_jvm_started_with_the_option_writes_a_log_heap_after_gc_reads(tmp_path: Path) -> None:
    source = tmp_path / "Churn.java"
    source.write_text("public class Churn { public static void main(String[] a) {"
                      " java.util.List<byte[]> kept = new java.util.ArrayList<>();"
                      " for (int i = 0; i < 3000; i++) { kept.add(new byte[50_000]); if (kept.size() > 200) kept.remove(0); }"
                      " System.gc(); } }")
    log = tmp_path / "dir with: colon" / "churn-gc.log"
    log.parent.mkdir()
    done = subprocess.run([java_executable(), "-Xmx64m", "-XX:+UseG1GC", *gc_log_options(log), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reading = heap_after_gc(log, timedelta(minutes=5))
    assert reading is not None, log.read_text()
    assert reading.collections >= 1
    assert 0 <= reading.used_mib <= reading.committed_mib <= 64
