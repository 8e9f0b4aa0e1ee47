"""`btcstream produce`: poll Binance and CoinGecko and send one tick per symbol per poll to Kafka.

`--source replay` drives the same producer through the local exchange (`btcstream exchange`):
the one at BTCSTREAM_BINANCE_URL when that is a loopback URL, else one started for the run
(`btcstream.exchange.replay_exchange`).
SIGINT/SIGTERM stop it after a flush; counts are logged periodically and at exit.
"""

from __future__ import annotations

import argparse
import threading
from contextlib import ExitStack

from btcstream.exchange import DEFAULT_REPLAY_SPEED, replay_exchange
from btcstream.names import SOURCES
from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("produce", help="poll market data into Kafka", description=__doc__)
    parser.add_argument("--source", choices=SOURCES, default="live", help="live APIs or the local replay exchange")
    parser.add_argument("--max-polls", type=int, default=None, help="stop after this many polls (default: run until stopped)")
    parser.add_argument("--speed", type=float, default=DEFAULT_REPLAY_SPEED,
                        help="replay speed when the producer starts its own local exchange (simulated s per wall s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.ingest.producer import run_producer, stop_on_signals  # kafka-python loads on use

    stop = threading.Event()
    stop_on_signals(stop)
    with ExitStack() as resources:
        if args.source == "replay":
            settings = resources.enter_context(replay_exchange(settings, speed=args.speed))
        stats = run_producer(settings, max_polls=args.max_polls, stop_event=stop)
    return 0 if stats.failed == 0 and stats.pending == 0 else 1
