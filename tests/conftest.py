"""Shared pytest fixtures: the real local Kafka + HDFS stack, fresh topics and storage roots.

`local_stack` starts the broker and HDFS (through `btcstream.infra.stack`, exactly as
`btcstream infra up` does) once per test session and stops them afterwards, unless they were
already running before the tests, in which case it leaves them running.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from btcstream.infra import stack
from btcstream.infra.kafka import KafkaBroker
from btcstream.settings import Settings, load_settings


def _stack_settings() -> Settings:
    """Settings for the tests' stack: the project defaults (localhost ports), a test area on HDFS."""
    base = load_settings(env={})
    return base.replace(storage_root=f"hdfs://localhost:9000/btcstream-tests/{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def local_stack() -> Iterator[Settings]:
    """A running local Kafka broker and HDFS; yields Settings pointing at them (fresh HDFS sub-root)."""
    settings = _stack_settings()
    was_running = stack.all_healthy(settings)
    if not was_running:
        stack.up(settings)
    try:
        yield settings
    finally:
        if not was_running:
            stack.down(settings)


@pytest.fixture
def fresh_topic(local_stack: Settings) -> str:
    """A topic name no other test uses (created by the first producer or by the test)."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def test_settings(local_stack: Settings, fresh_topic: str) -> Settings:
    """Settings with a fresh topic and a fresh storage root under the session's HDFS test area."""
    return local_stack.replace(topic=fresh_topic, storage_root=local_stack.storage_url(uuid.uuid4().hex[:8]))


@pytest.fixture
def restart_kafka(local_stack: Settings) -> Callable[[], None]:
    """Call it to stop the broker cleanly and start it again (data directory kept)."""

    def restart() -> None:
        broker = KafkaBroker(local_stack)
        broker.stop()
        broker.start()

    return restart


@pytest.fixture
def kafka_broker(local_stack: Settings) -> KafkaBroker:
    """The session's broker, for tests that stop and start it themselves (`.stop()`, `.start()`)."""
    return KafkaBroker(local_stack)
