"""A running JVM's live heap from `jcmd GC.class_histogram`: parsed, measured on real JVMs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from btcstream.infra.heap_histogram import heap_histogram, parse_histogram
from btcstream.infra.java import java_executable
from btcstream.infra.kafka import KafkaBroker
from btcstream.settings import Settings

PRINTOUT = """\
20555:
 num     #instances         #bytes  class name (module)
-------------------------------------------------------
   1:         46447      148706256  [B (java.base@17.0.15)
   2:         19601        1677824  [Ljava.util.HashMap$Node; (java.base@17.0.15)
   3:         37708        1508320  java.util.LinkedHashMap$Entry (java.base@17.0.15)
Total        812345      163577856
"""


def _jcmd_or_skip() -> None:
    if not Path(java_executable()).with_name("jcmd").exists():
        pytest.skip(f"no jcmd beside {java_executable()} (a JRE without the JDK's tools)")


def test_the_total_and_the_largest_classes_are_read_with_readable_names() -> None:
    histogram = parse_histogram(PRINTOUT, top=2)
    assert histogram is not None and round(histogram.live_mib, 1) == 156.0
    assert histogram.top == (("byte[]", 148706256 / 2**20), ("[Ljava.util.HashMap$Node;", 1677824 / 2**20))
    assert parse_histogram("12345:\ncom.sun.tools.attach.AttachNotSupportedException") is None


@pytest.mark.integration  # starts a JVM
def test_a_running_jvm_reports_what_it_keeps_not_what_it_threw_away(tmp_path: Path) -> None:
    _jcmd_or_skip()
    # 200 arrays of 50 kB stay reachable (~10 MB) among 150 MB allocated, then the program waits.
    source = tmp_path / "Keeper.java"
    source.write_text("public class Keeper { public static void main(String[] a) throws Exception {"
                      " java.util.List<byte[]> kept = new java.util.ArrayList<>();"
                      " for (int i = 0; i < 3000; i++) { kept.add(new byte[50_000]); if (kept.size() > 200) kept.remove(0); }"
                      " System.out.println(\"ready\"); System.out.flush(); Thread.sleep(120_000); System.out.println(kept.size()); } }")
    keeper = subprocess.Popen([java_executable(), "-Xmx256m", "-XX:+UseG1GC", str(source)], stdout=subprocess.PIPE, text=True)
    try:
        assert keeper.stdout.readline().strip() == "ready"
        histogram = heap_histogram(keeper.pid)
        assert histogram is not None
        assert 8 <= histogram.live_mib <= 30  # the ~10 MB kept (plus the JVM's own), not the 150 MB allocated
        assert histogram.top[0][0] == "byte[]" and histogram.top[0][1] >= 9
    finally:
        keeper.kill()
        keeper.wait(timeout=30)
    time.sleep(0.5)
    assert heap_histogram(keeper.pid) is None  # gone: None, not an error


@pytest.mark.integration
def test_the_local_brokers_live_heap_is_small_after_a_full_collection(local_stack: Settings) -> None:
    """Kafka's default 128 MiB log-cleaner buffer would be most of it (156 MiB live when idle)."""
    _jcmd_or_skip()
    histogram = heap_histogram(KafkaBroker(local_stack).pid())
    assert histogram is not None
    assert histogram.live_mib < 100, f"{histogram.live_mib:.0f} MiB live in the broker after a full GC: {histogram.top}"
