"""`btcstream stream`: run the streaming job until SIGINT/SIGTERM, then stop its queries cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from btcstream.errors import BtcstreamError, StorageNotWritable, StreamingQueryFailed
from btcstream.names import QUERY_NAMES
from btcstream.settings import Settings

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 2.0
# A failed query (HDFS restarting, the broker gone a while) is started again from its checkpoint after
# these waits, the last repeated; a query that then runs STABLE_AFTER_S resets the count. The
# checkpoint makes a restart exactly once: the interrupted batch is re-run, nothing written twice.
RESTART_BACKOFF_S = (5.0, 10.0, 20.0, 40.0, 60.0)
STABLE_AFTER_S = 300.0
DEFAULT_MAX_RESTARTS = 5
# What the JVM, Hadoop's local file system and HDFS say when the storage root refuses a write -> the
# kind `StorageNotWritable` names (first match wins; the text searched holds the whole cause chain).
STORAGE_REFUSALS = (
    ("No space left on device", "full"),
    ("DSQuotaExceededException", "over quota"),
    ("NSQuotaExceededException", "over quota"),
    ("could only be written to 0 of the", "full"),  # HDFS: no DataNode had room for the block
    ("Read-only file system", "read-only"),
    ("AccessControlException", "not permitted"),
    ("Permission denied", "not permitted"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stream", help="run the Spark streaming job (Kafka -> raw_data, hourly_metrics, "
                                                  "quarantine Delta tables, one read) until interrupted")
    parser.add_argument("--trigger-interval", type=float, default=None, metavar="SECONDS",
                        help="micro-batch trigger interval (default: the trigger_interval_s setting)")
    parser.add_argument("--query", action="append", choices=QUERY_NAMES, dest="queries",
                        help="run only this query (repeatable; default: all; the job has one, btcstream_ingest)")
    parser.add_argument("--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS, metavar="N",
                        help="restart a failed query from its checkpoint up to N times in a row, waiting 5 s "
                             "to 60 s between tries (a query that then runs 5 minutes resets the count; "
                             f"0: exit on the first failure; default {DEFAULT_MAX_RESTARTS}). A storage root that "
                             "refuses writes (full, read-only) is never retried")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the job; a storage root that refuses writes (full, read-only, no permission) ends it with
    one `StorageNotWritable` line instead of the JVM's stack trace."""
    try:
        return _run(args, settings)
    except BtcstreamError as error:
        raise storage_refusal(settings, str(error)) or error
    except Exception as error:
        refusal = storage_refusal(settings, failure_text(error))
        if refusal is None:
            raise
        log.debug("the storage root refused a write", exc_info=True)
        raise refusal from None


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.clients.spark import spark_session
    from btcstream.streaming import job

    if args.max_restarts < 0:
        raise BtcstreamError(f"--max-restarts must be 0 or more, not {args.max_restarts}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    spark = spark_session(settings, "btcstream-stream")
    names = args.queries or QUERY_NAMES

    def start() -> list:
        return job.start_queries(spark, settings, queries=names, trigger_interval_s=args.trigger_interval)

    queries = start()
    log.info("streaming %s -> %s (trigger %ss); stop with Ctrl-C or SIGTERM", settings.topic,
             settings.storage_root, args.trigger_interval or settings.trigger_interval_s)
    budget = RestartBudget(args.max_restarts)
    failed = True
    try:
        while not stop.wait(HEALTH_CHECK_S):
            failure = _failure(queries)
            if failure is None:
                budget.note_healthy()
            else:
                queries = _restart(spark, settings, queries, failure, budget, stop, start)
        failed = False
    finally:
        log.info("stopping %d queries", len(queries))
        job.stop_queries(queries)
        if failed:
            # Stop the JVM's listener bus while Python still answers it: else a progress event it
            # delivers after this process has printed its one error line ends the output with a
            # Java stack trace (py4j "Error while sending a command ... onQueryProgress").
            _stop_session(spark)
    log.info("stopped cleanly")
    return 0


@dataclass
class RestartBudget:
    """Restarts in a row, up to `limit`; the count starts again once a query has run STABLE_AFTER_S."""

    limit: int
    used: int = 0
    running_since: float = field(default_factory=time.monotonic)

    def note_healthy(self) -> None:
        if self.used and time.monotonic() - self.running_since >= STABLE_AFTER_S:
            log.info("running for %.0f s since the last restart: the restart count starts again", STABLE_AFTER_S)
            self.used = 0

    def take(self, name: str, reason: str) -> float:
        """The wait before the next restart; `StreamingQueryFailed` once none is left."""
        if self.used >= self.limit:
            tried = f" (after {self.used} restarts)" if self.used else ""
            raise StreamingQueryFailed(name, reason + tried)
        delay = RESTART_BACKOFF_S[min(self.used, len(RESTART_BACKOFF_S) - 1)]
        self.used += 1
        return delay

    def note_started(self) -> None:
        self.running_since = time.monotonic()


def _restart(spark, settings: Settings, queries: list, failure: tuple[str, BaseException | str],
             budget: RestartBudget, stop: threading.Event, start: Callable[[], list]) -> list:
    """Start the failed queries again from their checkpoint, trying until they start (HDFS may still be
    down: a failed start takes the next restart) or the budget runs out. The queries now running."""
    from btcstream.streaming import job

    name, error = failure
    while True:
        text = failure_text(error) if isinstance(error, BaseException) else error
        refusal = storage_refusal(settings, text)
        if refusal is not None:
            raise refusal
        # The innermost JVM cause (e.g. java.io.EOFException): the first line of a failure in the
        # batch function is py4j's "An exception was raised by the Python Proxy", which says nothing.
        reason = job.root_cause_line(text)
        delay = budget.take(name, reason)
        log.warning("query %s failed (%s); restarting it from its checkpoint in %.0f s (restart %d of %d)",
                    name, reason, delay, budget.used, budget.limit)
        job.note_restart(spark, name, reason)
        if stop.wait(delay):
            return queries
        try:
            job.stop_queries(queries)
            queries = start()
        except Exception as start_error:  # noqa: BLE001 - e.g. the NameNode not back yet: try again
            error = start_error
            continue
        budget.note_started()
        log.info("restarted %s", name)
        return queries


def _failure(queries: list) -> tuple[str, BaseException | str] | None:
    """The first query that is no longer active: (name, its exception or why); None while all run."""
    for query in queries:
        if not query.isActive:
            return query.name, query.exception() or "stopped unexpectedly"
    return None


def _stop_session(spark) -> None:
    try:
        spark.stop()
    except Exception:  # the JVM may be gone already
        log.debug("stopping the Spark session failed", exc_info=True)


def storage_refusal(settings: Settings, text: str) -> StorageNotWritable | None:
    """A `StorageNotWritable` when `text` (a failure with its causes) says the storage root refused a write."""
    for marker, kind in STORAGE_REFUSALS:
        if marker in text:
            return StorageNotWritable(settings.storage_root, kind, marker)
    return None


def failure_text(error: BaseException) -> str:
    """A failure's message with its JVM cause chain and stack trace (py4j and PySpark's captured
    exceptions keep the Java `Caused by: java.io.IOException: No space left on device` out of str())."""
    parts = [str(error)]
    stack = getattr(error, "getStackTrace", None)
    if callable(stack):
        try:
            parts.append(str(stack() or ""))
        except Exception:  # the JVM is gone
            pass
    java = getattr(error, "java_exception", None)
    try:
        while java is not None:
            parts.append(str(java.toString()))
            java = java.getCause()
    except Exception:  # the JVM is gone
        pass
    return "\n".join(parts)
