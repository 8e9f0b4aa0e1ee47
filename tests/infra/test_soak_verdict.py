"""The soak run's judgement of a service JVM's heap (bench/soak.py `verdict`), on made-up samples:
garbage that G1 leaves in old regions must not fail a run whose live heap is flat, and a live heap
that grows must."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def soak():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("soak_under_test", BENCH / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _samples(soak, minutes: int, heap, full_gc_live, every: int = 15) -> list:
    samples = []
    for minute in range(1, minutes + 1):
        sample = soak.Sample(at=minute * 60.0, lag=100)
        for name in soak.PROCESSES:
            sample.rss_mib[name], sample.fds[name] = 300.0, 50
        for name in soak.SERVICE_JVMS:
            sample.heap_mib[name] = heap(minute) if name == "broker" else 40.0
        if minute >= 10 and (minute - 10) % every == 0:
            for name in soak.SERVICE_JVMS:
                sample.full_gc_live_mib[name] = full_gc_live(minute) if name == "broker" else 35.0
        samples.append(sample)
    return samples


def test_heap_after_gc_creeping_with_a_flat_live_heap_passes(soak) -> None:
    samples = _samples(soak, 120, heap=lambda m: 70 + m * 0.5, full_gc_live=lambda m: 44.0)  # +55 MiB of old garbage
    lines, failures = soak.verdict(samples, warm_up_s=600, messages_per_minute=12_000, drained_lag=0)
    assert failures == []
    broker_heap = next(line for line in lines if line.startswith("| broker | heap_mib |"))
    assert "not judged: live heap after a full collection and the RSS bound are" in broker_heap


def test_a_live_heap_that_keeps_growing_fails_and_is_named(soak) -> None:
    samples = _samples(soak, 120, heap=lambda m: 70 + m * 0.5, full_gc_live=lambda m: 44 + m * 0.5)
    _, failures = soak.verdict(samples, warm_up_s=600, messages_per_minute=12_000, drained_lag=0)
    assert len(failures) == 1 and failures[0].startswith("broker full_gc_live_mib keeps growing")


def test_without_full_collections_the_heap_after_gc_judges(soak) -> None:
    samples = _samples(soak, 120, heap=lambda m: 70 + m * 0.5, full_gc_live=lambda m: 44.0, every=10_000)
    for sample in samples:
        sample.full_gc_live_mib.clear()
    _, failures = soak.verdict(samples, warm_up_s=600, messages_per_minute=12_000, drained_lag=0)
    assert failures and failures[0].startswith("broker heap_mib keeps growing")
