"""`btcstream stream`: run the streaming job until SIGINT/SIGTERM, then stop its queries cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from btcstream.errors import StreamingQueryFailed
from btcstream.names import QUERY_NAMES
from btcstream.settings import Settings

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stream", help="run the Spark streaming job (Kafka -> raw_data, hourly_metrics, "
                                                  "quarantine Delta tables, one read) until interrupted")
    parser.add_argument("--trigger-interval", type=float, default=None, metavar="SECONDS",
                        help="micro-batch trigger interval (default: the trigger_interval_s setting)")
    parser.add_argument("--query", action="append", choices=QUERY_NAMES, dest="queries",
                        help="run only this query (repeatable; default: all; the job has one, btcstream_ingest)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.clients.spark import spark_session
    from btcstream.streaming import job

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    spark = spark_session(settings, "btcstream-stream")
    queries = job.start_queries(spark, settings, queries=args.queries or QUERY_NAMES,
                                trigger_interval_s=args.trigger_interval)
    log.info("streaming %s -> %s (trigger %ss); stop with Ctrl-C or SIGTERM", settings.topic,
             settings.storage_root, args.trigger_interval or settings.trigger_interval_s)
    try:
        while not stop.wait(HEALTH_CHECK_S):
            for query in queries:
                if not query.isActive:
                    error = query.exception()
                    raise StreamingQueryFailed(query.name, str(error) if error else "stopped unexpectedly")
    finally:
        log.info("stopping %d queries", len(queries))
        job.stop_queries(queries)
    log.info("stopped cleanly")
    return 0
