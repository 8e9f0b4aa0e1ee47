"""Unit tests (JVM-free) of the session builder's choices."""

from __future__ import annotations

import os

import pytest

from btcstream.clients.spark import shuffle_partitions


@pytest.mark.parametrize(("master", "expected"), [
    ("local", 1), ("local[2]", 2), ("local[3,2]", 3), ("local[64]", 8),  # one per core, at most 8
    ("local[*]", min(os.cpu_count() or 1, 8)),
    ("spark://master:7077", 4), ("yarn", 4), ("k8s://https://api:6443", 4),
])
def test_shuffle_partitions_follow_the_local_cores(master: str, expected: int) -> None:
    assert shuffle_partitions(master) == expected


def test_console_output_of_processes_started_in_the_block_goes_to_the_file(tmp_path, capfd) -> None:
    """What `spark_session(jvm_log=...)` does around the JVM's start: its stdout/stderr land in the log file."""
    import subprocess

    from btcstream.clients.spark import console_output_to

    log_file = tmp_path / "logs" / "spark.log"
    with console_output_to(log_file):
        subprocess.run(["sh", "-c", "echo 'Using incubator modules'; echo 'WARN NativeCodeLoader' >&2"], check=True)
    subprocess.run(["sh", "-c", "echo after; echo after-err >&2"], check=True)

    assert log_file.read_text().splitlines() == ["Using incubator modules", "WARN NativeCodeLoader"]
    out, err = capfd.readouterr()
    assert (out, err) == ("after\n", "after-err\n")  # descriptors 1 and 2 are back
