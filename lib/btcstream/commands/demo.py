"""`btcstream demo`: the offline end-to-end demo on the embedded local defaults."""

from __future__ import annotations

import argparse

from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the offline end-to-end demo on the local stack")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.workbench.demo import run_demo

    return run_demo(settings)
