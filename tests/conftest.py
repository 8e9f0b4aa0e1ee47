"""Shared pytest fixtures and the test tiers' checks.

`local_stack` starts the broker and HDFS (through `btcstream.infra.stack`, exactly as
`btcstream infra up` does) once per test session and stops them afterwards, unless they were
already running before the tests, in which case it leaves them running. `spark` is one local
Spark session for the DataFrame tests.

Tiers: tests that start Spark carry the `spark` marker (checked here for every user of the `spark`
fixture), tests that need the stack carry `integration`. `make test-fast` leaves both out and sets
BTCSTREAM_TEST_NO_JVM=1, under which a `JvmWatch` (tests/helpers/no_jvm.py) fails the run if any
JVM was started all the same. Shared helper code lives in tests/helpers, not in test modules.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from btcstream.infra import stack
from btcstream.infra.kafka import KafkaBroker
from btcstream.settings import Settings, load_settings
from helpers.no_jvm import NO_JVM_VARIABLE, JvmWatch, no_jvm_requested

JVM_WATCH = pytest.StashKey[JvmWatch]()
CHAOS_VARIABLE = "BTCSTREAM_TEST_CHAOS"


def _stack_settings() -> Settings:
    """Settings for the tests' stack: the project defaults (localhost ports), a test area on HDFS."""
    base = load_settings(env={})
    return base.replace(storage_root=f"hdfs://localhost:9000/btcstream-tests/{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def local_stack() -> Iterator[Settings]:
    """A running local Kafka broker and HDFS; yields Settings pointing at them (fresh HDFS sub-root)."""
    settings = _stack_settings()
    # A stack someone else runs (the user's, another test run's) is used and left running, even when
    # one of its services is briefly unhealthy (restarting): only a stack this session started is stopped.
    was_running = any(service.running for service in stack.status(settings)[0])
    if not stack.all_healthy(settings):
        stack.up(settings)
    try:
        yield settings
    finally:
        _remove_test_area(settings)
        if not was_running:
            stack.down(settings)


def _remove_test_area(settings: Settings) -> None:
    """Delete the session's HDFS test area (one WebHDFS call): a state dir that outlives many runs keeps
    only what the user put there. Left behind when HDFS is down."""
    from btcstream.storage.filesystem import storage_filesystem

    try:
        hdfs = storage_filesystem(settings)
        if hdfs.exists(settings.storage_path):
            hdfs.rm(settings.storage_path, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup only
        pass


@pytest.fixture
def fresh_topic(local_stack: Settings) -> str:
    """A topic name no other test uses (created by the first producer or by the test)."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def test_settings(local_stack: Settings, fresh_topic: str) -> Iterator[Settings]:
    """Settings with a fresh topic and a fresh storage root under the session's HDFS test area.

    Its topics are deleted afterwards: a broker whose state dir outlives many runs would otherwise
    carry hundreds of test topics, and every restart of it (the broker-restart tests) gets slower.
    """
    settings = local_stack.replace(topic=fresh_topic, trades_topic=f"{fresh_topic}-trades",
                                   alerts_topic=f"{fresh_topic}-alerts",
                                   storage_root=local_stack.storage_url(uuid.uuid4().hex[:8]))
    yield settings
    _delete_topics(settings, [settings.topic, settings.trades_topic, settings.alerts_topic])


def _delete_topics(settings: Settings, topics: list[str]) -> None:
    """Delete those of `topics` that exist; a broker that is down or slow only leaves them behind."""
    from kafka import KafkaAdminClient

    from btcstream.clients.kafka import kafka_python_options

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000,
                                 **kafka_python_options(settings))
    except Exception:  # noqa: BLE001 - cleanup only
        return
    try:
        existing = [topic for topic in topics if topic in admin.list_topics()]
        if existing:
            admin.delete_topics(existing, timeout_ms=10_000, raise_errors=False)
    except Exception:  # noqa: BLE001 - cleanup only
        pass
    finally:
        admin.close()


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


@pytest.fixture(scope="session")
def pipeline_report(local_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list]:
    """One real pipeline run by notebook 01 and the report of all four notebooks over it (built once per
    session, `helpers.pipeline_report`): its settings and the `NotebookRun`s."""
    from helpers.pipeline_report import build_pipeline_report, report_settings

    settings = report_settings(local_stack)
    return settings, build_pipeline_report(settings, tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One local Spark session (two cores, no Kafka connector needed) for the DataFrame tests.

    Tests using it must carry the `spark` marker (see `pytest_collection_modifyitems`).
    """
    from btcstream.clients.spark import spark_session

    settings = Settings(spark_master="local[2]", storage_root=f"file://{tmp_path_factory.mktemp('spark-unit')}")
    return spark_session(settings, "btcstream-tests", with_kafka=False)


# --- tiers -------------------------------------------------------------------------------------

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that uses the `spark` fixture without the `spark` marker: it would start a JVM
    in the fast tier."""
    unmarked = [item.nodeid for item in items
                if "spark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("spark") is None]
    if unmarked:
        raise pytest.UsageError("these tests use the `spark` fixture but lack the `spark` marker "
                                "(add `pytestmark = pytest.mark.spark` or `@pytest.mark.spark`):\n  "
                                + "\n  ".join(unmarked))
    # The chaos run (bench/chaos.py, ~11 minutes on a quiet 2-core machine) is CI's own step after the
    # suite (`make test-chaos`, .ci/run), so `make test` stays short: opt in with BTCSTREAM_TEST_CHAOS=1.
    if os.environ.get(CHAOS_VARIABLE) != "1":
        skip = pytest.mark.skip(reason=f"the chaos run is opt-in: {CHAOS_VARIABLE}=1 (or `make test-chaos`)")
        for item in items:
            if item.get_closest_marker("chaos") is not None:
                item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    """Under BTCSTREAM_TEST_NO_JVM=1 (`make test-fast`), watch the whole session for JVM launches."""
    if no_jvm_requested():
        watch = JvmWatch(Path(tempfile.mkdtemp(prefix="btcstream-no-jvm-")))
        watch.start()
        config.stash[JVM_WATCH] = watch


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After each test's teardown, record a JVM that a child process started and left running."""
    try:
        return (yield)
    finally:
        watch = item.config.stash.get(JVM_WATCH, None)
        if watch is not None:
            watch.check_descendants(f"{item.nodeid} (running after it)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A JVM started under the watch fails an otherwise passing run."""
    watch = session.config.stash.get(JVM_WATCH, None)
    if watch is None:
        return
    watch.check_descendants("at the end of the session")
    watch.stop()
    if watch.launches() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Name each test and the command that started a JVM, or say that none was started."""
    watch = config.stash.get(JVM_WATCH, None)
    if watch is None:
        return
    launches = watch.launches()
    if launches:
        terminalreporter.write_sep("=", f"a JVM was started although {NO_JVM_VARIABLE}=1", red=True)
        for launch in launches:
            terminalreporter.write_line(str(launch))
        terminalreporter.write_line("mark these tests `spark` (or `integration`), or stop them starting a JVM")
    else:
        terminalreporter.write_line(f"{NO_JVM_VARIABLE}: no JVM was started (java, JDK tools and Spark launchers "
                                    "watched in this process and its children)", green=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    watch = config.stash.get(JVM_WATCH, None)
    if watch is not None:
        shutil.rmtree(watch.directory, ignore_errors=True)
