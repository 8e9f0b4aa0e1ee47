"""The short chaos run CI makes: `bench/chaos.py --minutes 5 --each-once`, one fault of each kind.

The run starts and stops a stack of its own (Kafka 19092, HDFS 19000/19870, a temporary state
directory), so it neither needs nor touches the session's `local_stack`. It must end with every
quote and trade the exchange sent stored exactly once (or in an explained gap), every malformed
record quarantined once, the final hourly rows equal to a recomputation, within CI's time limit.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REPO = Path(__file__).resolve().parents[2]
# 5 minutes of faults plus stack start, job restarts and drain; under pytest's 1500 s timeout (pyproject.toml).
CHAOS_LIMIT_S = 24 * 60


def test_short_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    results = tmp_path / "chaos.md"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--minutes", "5", "--each-once",
                           "--seed", "7", "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=CHAOS_LIMIT_S)
    took = time.monotonic() - started
    output = done.stdout + done.stderr[-6000:]
    assert done.returncode == 0, output
    assert re.search(r"^lost: 0$", done.stdout, re.M), output
    assert re.search(r"^duplicated: 0$", done.stdout, re.M), output
    assert "faults injected: 11, survived (recovered within" in done.stdout and ": 11\n" in done.stdout, output
    assert results.exists()
    assert took < CHAOS_LIMIT_S
