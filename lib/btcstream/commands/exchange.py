"""`btcstream exchange`: run the local exchange (Binance REST + WebSocket streams, CoinGecko, replaying real history).

On start it prints one JSON line on stdout with the three base URLs, e.g.
`{"binance_url": "http://127.0.0.1:8080", "coingecko_url": "http://127.0.0.1:8081/api/v3", "ws_url": "ws://127.0.0.1:8082"}`;
point the producer at them with BTCSTREAM_BINANCE_URL / BTCSTREAM_COINGECKO_URL / BTCSTREAM_BINANCE_WS_URL.
Stream rates are per symbol per wall second at the starting --speed. Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import datetime
from types import FrameType

from btcstream.errors import BtcstreamError
from btcstream.exchange import Fault, start_exchange
from btcstream.exchange.faults import FAULT_KINDS
from btcstream.exchange.server import WS_QUOTES_PER_SECOND, WS_TRADES_PER_SECOND
from btcstream.exchange.streams import PING_INTERVAL_S, PONG_TIMEOUT_S
from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("exchange", help="serve Binance/CoinGecko endpoints from real kline history",
                                   description=__doc__)
    parser.add_argument("--history", action="append", default=[], metavar="SYMBOL=CSV",
                        help="a Binance kline CSV to replay for SYMBOL (repeatable; default: the shipped BTCUSDT hourly history)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (3600: an hour per second)")
    parser.add_argument("--start", type=datetime.fromisoformat, default=None,
                        help="simulated start time, ISO-8601 with zone (default: one day into the history)")
    parser.add_argument("--host", default=None,
                        help="address the three listeners bind to (default: BTCSTREAM_BIND_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="Binance port (0: any free port)")
    parser.add_argument("--coingecko-port", type=int, default=8081, help="CoinGecko port (0: any free port)")
    parser.add_argument("--ws-port", type=int, default=8082, help="WebSocket streams port (0: any free port)")
    parser.add_argument("--ws-quotes-per-second", type=float, default=WS_QUOTES_PER_SECOND, metavar="RATE",
                        help="bookTicker updates per symbol per wall second at the starting --speed (0: none)")
    parser.add_argument("--ws-trades-per-second", type=float, default=WS_TRADES_PER_SECOND, metavar="RATE",
                        help="aggregate trades per symbol per wall second at the starting --speed (0: none)")
    parser.add_argument("--ws-ping-interval", type=float, default=PING_INTERVAL_S, metavar="SECONDS",
                        help="seconds between the server's pings")
    parser.add_argument("--ws-pong-timeout", type=float, default=PONG_TIMEOUT_S, metavar="SECONDS",
                        help="a connection whose pong has not come within this is dropped")
    parser.add_argument("--ws-max-age-hours", type=float, default=24.0, metavar="HOURS",
                        help="simulated hours after which a connection is cut (Binance: 24; 0: never)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic intra-hour paths")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND[:PROBABILITY[:FIELD]]",
                        help=f"inject a fault on a share of all requests (default every one), repeatable; kinds: "
                             f"{', '.join(FAULT_KINDS)}; FIELD for null_field/missing_field (default bidPrice). "
                             "Faults can also be added at run time: POST /_control/faults; WebSocket faults "
                             "(abrupt close, silence, serverShutdown, gaps...): POST /_control/ws-faults (docs/exchange.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    history = {}
    for item in args.history:
        symbol, sep, path = item.partition("=")
        if not sep or not symbol or not path:
            raise BtcstreamError(f"--history {item!r}: expected SYMBOL=path/to/klines.csv")
        history[symbol.strip().upper()] = path.strip()
    if args.ws_quotes_per_second < 0 or args.ws_trades_per_second < 0:
        raise BtcstreamError("--ws-quotes-per-second and --ws-trades-per-second must be >= 0")
    if args.ws_ping_interval <= 0 or args.ws_pong_timeout <= 0 or args.ws_max_age_hours < 0:
        raise BtcstreamError("--ws-ping-interval and --ws-pong-timeout must be > 0, --ws-max-age-hours >= 0")
    exchange = start_exchange(history or None, speed=args.speed, start=args.start, seed=args.seed,
                              host=args.host or settings.bind_host, binance_port=args.port, coingecko_port=args.coingecko_port,
                              ws_port=args.ws_port, ws_quotes_per_second=args.ws_quotes_per_second,
                              ws_trades_per_second=args.ws_trades_per_second, ws_ping_interval_s=args.ws_ping_interval,
                              ws_pong_timeout_s=args.ws_pong_timeout,
                              ws_max_connection_age_ms=round(args.ws_max_age_hours * 3_600_000) or None)
    for spec in args.fault:
        kind, _, rest = spec.partition(":")
        probability, _, field = rest.partition(":")
        try:
            exchange.inject(Fault(kind=kind, count=None, probability=float(probability or 1.0),
                                  field=(field or "bidPrice") if kind in ("null_field", "missing_field") else None))
        except ValueError as error:
            exchange.stop()
            raise BtcstreamError(f"--fault {spec!r}: {error}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(json.dumps({"binance_url": exchange.binance_url, "coingecko_url": exchange.coingecko_url,
                      "ws_url": exchange.ws_url}), flush=True)
    try:
        stop.wait()
    finally:
        exchange.stop()
    print(json.dumps(exchange.state()["requests"]), file=sys.stderr)
    return 0
