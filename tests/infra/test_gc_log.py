"""The services' GC logs: written by a real JVM with our option, read back as heap after collection."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from btcstream.infra import artifacts
from btcstream.infra.gc_log import gc_log_options, heap_after_gc, live_after_marking, liveness_log
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


LIVENESS = """\
[2026-12-03T06:40:00.000+0000][1.0s] GC(3) ### PHASE Post-Marking @ 1.000
[2026-12-03T06:40:00.000+0000][1.0s] GC(3) ###   OLD 0x00000000fc000000-0x00000000fc100000 1048576 1048576 900000 12.5 2048 UNTRACKED 0
[2026-12-03T06:40:00.000+0000][1.0s] GC(3) ### SUMMARY  capacity: 512.00 MB  used: 90.00 MB / 17.58 %  prev-live: 90.00 MB / 17.58 %  next-live: 40.50 MB / 7.91 %  remset: 0.18 MB  code-roots: 0.03 MB
[2026-12-03T06:55:00.000+0000][901.0s] GC(9) ### PHASE Post-Marking @ 901.000
[2026-12-03T06:55:00.000+0000][901.0s] GC(9) ### SUMMARY  capacity: 512.00 MB  used: 200.00 MB / 39.06 %  prev-live: 200.00 MB / 39.06 %  next-live: 61.25 MB / 11.96 %  remset: 0.18 MB  code-roots: 0.03 MB
[2026-12-03T06:55:00.100+0000][901.1s] GC(9) ### PHASE Post-Cleanup @ 901.100
[2026-12-03T06:55:00.100+0000][901.1s] GC(9) ### SUMMARY  capacity: 512.00 MB  used: 210.00 MB / 41.02 %  prev-live: 61.25 MB / 11.96 %  next-live: 210.00 MB / 41.02 %  remset: 0.18 MB  code-roots: 0.03 MB
[2026-12-03T06:58:00.000+0000][1081.0s] GC(14) ### PHASE Post-Marking @ 1081.000
[2026-12-03T06:58:00.000+0000][1081.0s] GC(14) ### SUMMARY  capacity: 512.00 MB  used: 220.00 MB / 42.97 %  prev-live: 61.25 MB / 11.96 %  next-live: 58.00 MB / 11.33 %  remset: 0.18 MB  code-roots: 0.03 MB
"""


def test_live_after_marking_is_what_the_newest_marking_of_the_span_found_live(tmp_path: Path) -> None:
    path = liveness_log(tmp_path / "kafka-gc.log")
    assert path.name == "kafka-gc-liveness.log"
    path.write_text(LIVENESS)
    reading = live_after_marking(path, timedelta(minutes=10), now=NOW)
    assert reading is not None
    # Two markings in the last 10 minutes (06:55 and 06:58); the newest's live data, not the heap in
    # use (220) and not the post-cleanup table's "next-live" (210, the used heap of the next cycle).
    assert (reading.live_mib, reading.used_mib, reading.markings) == (58.0, 220.0, 2)
    assert live_after_marking(path, timedelta(minutes=4, seconds=30), now=NOW).markings == 1
    assert live_after_marking(path, timedelta(seconds=30), now=NOW) is None  # no marking that recent
    assert live_after_marking(tmp_path / "missing-gc-liveness.log", timedelta(minutes=10)) is None


def test_the_broker_command_writes_its_gc_log_beside_its_own_log(tmp_path: Path, monkeypatch) -> None:
    # The command line only: no jar resolution (that would run Maven, a JVM, in `make test-fast`).
    monkeypatch.setattr(artifacts, "classpath", lambda settings, component: "")
    broker = KafkaBroker(Settings(state_dir=tmp_path))
    assert broker.gc_log_file == tmp_path / "kafka" / "kafka-gc.log"
    assert all(option in broker.command() for option in gc_log_options(broker.gc_log_file))


@pytest.mark.integration  # starts a JVM
def test_a_jvm_started_with_the_options_writes_logs_heap_after_gc_and_live_after_marking_read(tmp_path: Path) -> None:
    # 200 arrays of 50 kB stay reachable (~10 MB) among 150 MB allocated; System.gc() starts a
    # concurrent marking (ExplicitGCInvokesConcurrent), which the JVM lets finish before exiting.
    source = tmp_path / "Churn.java"
    source.write_text("public class Churn { public static void main(String[] a) throws Exception {"
                      " java.util.List<byte[]> kept = new java.util.ArrayList<>();"
                      " for (int i = 0; i < 3000; i++) { kept.add(new byte[50_000]); if (kept.size() > 200) kept.remove(0); }"
                      " System.gc(); Thread.sleep(1000); System.out.println(kept.size()); } }")
    log = tmp_path / "dir with: colon" / "churn-gc.log"
    log.parent.mkdir()
    done = subprocess.run([java_executable(), "-Xmx64m", "-XX:+UseG1GC", "-XX:+ExplicitGCInvokesConcurrent",
                           *gc_log_options(log), str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reading = heap_after_gc(log, timedelta(minutes=5))
    assert reading is not None, log.read_text()
    assert reading.collections >= 1
    assert 0 <= reading.used_mib <= reading.committed_mib <= 64
    live = live_after_marking(liveness_log(log), timedelta(minutes=5))
    assert live is not None, liveness_log(log).read_text()[-2000:]
    assert 8 <= live.live_mib <= 20  # the ~10 MB kept (plus the JVM's own), not the garbage

