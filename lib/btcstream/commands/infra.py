"""`btcstream infra up | down | status | resolve`: the local Kafka broker and HDFS."""

from __future__ import annotations

import argparse

from btcstream.infra import artifacts, stack
from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("infra", help="start, stop or inspect the local Kafka and HDFS")
    parser.add_argument("action", choices=["up", "down", "status", "resolve"],
                        help="up: start and wait until healthy; down: stop cleanly; status: show each service; "
                             "resolve: only fetch the jars (Kafka, HDFS, Spark's Kafka connector, Delta Lake)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "resolve":
        artifacts.resolve_all(settings)
        return 0
    if args.action == "up":
        for line in stack.up(settings):
            print(line)
        return 0
    if args.action == "down":
        for line in stack.down(settings):
            print(line)
        return 0
    statuses, external = stack.status(settings)
    width = max([len("service"), *(len(s.name) for s in statuses)])
    print(f"{'service':{width}} {'state':8} {'pid':>8} {'rss MiB':>8}  ports  data  health")
    for s in statuses:
        state = "healthy" if s.healthy else ("running" if s.running else "stopped")
        ports = ",".join(f"{k}={v}" for k, v in s.ports.items())
        rss = f"{s.memory_mib:.0f}" if s.memory_mib else "-"
        print(f"{s.name:{width}} {state:8} {s.pid or '-':>8} {rss:>8}  {ports}  {s.data_dir}  {s.detail}")
    for line in external:
        print(line)
    return 0 if all(s.healthy for s in statuses) else 1
