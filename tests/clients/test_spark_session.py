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
