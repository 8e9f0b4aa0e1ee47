"""`btcstream produce`: Binance (and CoinGecko) market data into Kafka.

`--feed websocket` (the default, BTCSTREAM_FEED) streams each symbol's book ticker, 24 h ticker and
aggregate trades: quotes to BTCSTREAM_TOPIC (at most BTCSTREAM_WS_MAX_QUOTES_HZ per symbol), trades
to BTCSTREAM_TRADES_TOPIC, gaps and counters in `<state dir>/feed/<topic>.json`. `--feed rest`
polls once per BTCSTREAM_POLL_INTERVAL_S and sends one tick per symbol per poll.

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
from btcstream.errors import BtcstreamError
from btcstream.names import SOURCES
from btcstream.settings import FEEDS, Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("produce", help="stream (or poll) market data into Kafka", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=SOURCES, default="live", help="live APIs or the local replay exchange")
    parser.add_argument("--feed", choices=FEEDS, default=None,
                        help="websocket streams or rest polls (default: BTCSTREAM_FEED, websocket)")
    parser.add_argument("--max-polls", type=int, default=None,
                        help="--feed rest: stop after this many polls (default: run until stopped)")
    parser.add_argument("--speed", type=float, default=DEFAULT_REPLAY_SPEED,
                        help="replay speed when the producer starts its own local exchange (simulated s per wall s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from btcstream.ingest.producer import run_feed, stop_on_signals  # kafka-python loads on use

    feed = args.feed or settings.feed
    if feed == "websocket" and args.max_polls is not None:
        raise BtcstreamError("--max-polls applies to --feed rest; the websocket feed runs until stopped (Ctrl-C)")
    settings = settings.replace(feed=feed)  # the replay checks the URLs of the feed in use
    stop = threading.Event()
    stop_on_signals(stop)
    with ExitStack() as resources:
        if args.source == "replay":
            settings = resources.enter_context(replay_exchange(settings, speed=args.speed))
        stats = run_feed(settings, max_polls=args.max_polls, stop_event=stop)
    return 0 if stats.failed == 0 and stats.pending == 0 else 1
