"""The local exchange (`btcstream exchange`): Binance and CoinGecko endpoints replaying real history.

Binance REST, Binance WebSocket market streams (bookTicker, aggTrade, ticker; see `streams`) and
CoinGecko, each on its own loopback port. Start one in-process (`start_exchange`) or as a child
process (`spawn_exchange`); both give the base URLs to point the producer at
(`exchange.settings_for(settings)` sets BINANCE_URL, BINANCE_WS_URL and COINGECKO_URL). Example, in a notebook:

    from btcstream.exchange import replay_exchange
    with replay_exchange(settings, speed=3600) as replay_settings:   # an hour of history per second
        run_producer(replay_settings, max_polls=60)

Not for: production data. Prices are real hourly bars with synthetic paths inside each hour.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import urlparse

from btcstream.errors import BtcstreamError
from btcstream.exchange.faults import Fault, StreamFault
from btcstream.exchange.history import DEFAULT_SYMBOL, History, default_history_path, load_history
from btcstream.exchange.market import DAY_MS, ReplayMarket, SimulatedClock
from btcstream.exchange.server import ExchangeServer
from btcstream.settings import LOCAL_HOSTS, Settings

log = logging.getLogger(__name__)

SPAWN_READY_TIMEOUT_S = 60.0
DEFAULT_REPLAY_SPEED = 1800.0  # exchange seconds per wall second: an hour of history every 2 s
__all__ = ["DEFAULT_REPLAY_SPEED", "ExchangeServer", "ExchangeProcess", "Fault", "StreamFault", "build_market",
           "replay_exchange", "start_exchange", "spawn_exchange"]


def build_market(history: Mapping[str, Path | str] | None = None, speed: float = 1.0,
                 start: datetime | None = None, seed: int = 0) -> ReplayMarket:
    """A ReplayMarket from `{symbol: kline CSV}` (default: the shipped BTCUSDT hourly history).

    The clock starts at `start` (aware UTC) or one day into the history, so 24 h statistics are whole.
    """
    sources = dict(history) if history else {DEFAULT_SYMBOL: default_history_path()}
    histories: dict[str, History] = {symbol.upper(): load_history(path, symbol) for symbol, path in sources.items()}
    if start is not None and start.tzinfo is None:
        raise BtcstreamError(f"replay start {start!r} has no time zone: give it in UTC, e.g. 2021-05-19T00:00:00+00:00")
    first = min(h.start_ms for h in histories.values())
    start_ms = int(start.timestamp() * 1000) if start is not None else first + DAY_MS
    return ReplayMarket(histories, SimulatedClock(start_ms, speed), seed=seed)


def start_exchange(history: Mapping[str, Path | str] | None = None, speed: float = 1.0, start: datetime | None = None,
                   seed: int = 0, **server_options: object) -> ExchangeServer:
    """Start the local exchange in this process on ephemeral loopback ports; call `.stop()` (or use `with`).

    `server_options` go to `ExchangeServer` (e.g. `ws_quotes_per_second=200, ws_trades_per_second=20`).
    """
    return ExchangeServer(build_market(history, speed, start, seed), **server_options).start()  # type: ignore[arg-type]


@contextmanager
def replay_exchange(settings: Settings, history: Mapping[str, Path | str] | None = None,
                    speed: float = DEFAULT_REPLAY_SPEED, start: datetime | None = None) -> Iterator[Settings]:
    """Settings whose Binance (REST and WebSocket) and CoinGecko URLs serve a replay, for the `with` block.

    When `settings.binance_url` is already a loopback URL (a `btcstream exchange` you started), it
    is used as it is (with the WebSocket feed, BTCSTREAM_BINANCE_WS_URL must then be a loopback URL
    too: the exchange prints it). Otherwise an exchange replaying `history` ({symbol: kline CSV},
    default the shipped BTCUSDT history) at `speed` starts in this process and stops when the block ends.
    """
    if urlparse(settings.binance_url).hostname in LOCAL_HOSTS:
        if settings.feed == "websocket" and urlparse(settings.binance_ws_url).hostname not in LOCAL_HOSTS:
            raise BtcstreamError(f"BTCSTREAM_BINANCE_URL points at a local exchange ({settings.binance_url}) but "
                                 f"BTCSTREAM_BINANCE_WS_URL at {settings.binance_ws_url}: set it to the ws_url that "
                                 "`btcstream exchange` printed (e.g. ws://127.0.0.1:8082), or use --feed rest")
        yield settings
        return
    exchange = start_exchange(history, speed=speed, start=start)
    try:
        missing = [symbol for symbol in settings.symbols if symbol not in exchange.market.symbols]
        if missing:
            raise BtcstreamError(f"the replay exchange has no history for {', '.join(missing)} (it replays "
                                 f"{', '.join(exchange.market.symbols)}): pass history={{symbol: csv}} or run "
                                 "`btcstream exchange --history SYMBOL=file.csv` and point BTCSTREAM_BINANCE_URL at it")
        yield exchange.settings_for(settings)
    finally:
        exchange.stop()


@dataclass
class ExchangeProcess:
    """A `btcstream exchange` child process and its URLs."""

    process: subprocess.Popen[str]
    binance_url: str
    coingecko_url: str
    ws_url: str

    def settings_for(self, settings: Settings) -> Settings:
        """Settings pointing the Binance (REST and WebSocket) and CoinGecko clients at this exchange."""
        return settings.replace(binance_url=self.binance_url, binance_ws_url=self.ws_url, coingecko_url=self.coingecko_url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "ExchangeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_exchange(history: Mapping[str, Path | str] | None = None, speed: float = 1.0,
                   extra_args: Sequence[str] = ()) -> ExchangeProcess:
    """Run `btcstream exchange` as a child process on ephemeral ports; returns once it serves.

    `extra_args` are more `btcstream exchange` options, e.g. `["--ws-quotes-per-second", "200"]`.
    """
    command = [sys.executable, "-m", "btcstream", "exchange", "--speed", str(speed), "--port", "0", "--coingecko-port", "0",
               "--ws-port", "0"]
    for symbol, path in (history or {}).items():
        command += ["--history", f"{symbol}={path}"]
    command += list(extra_args)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline() if process.stdout else ""
    if not line:
        process.wait(timeout=SPAWN_READY_TIMEOUT_S)
        raise BtcstreamError(f"`btcstream exchange` exited with code {process.returncode} before serving (see its stderr)")
    urls = json.loads(line)
    return ExchangeProcess(process, urls["binance_url"], urls["coingecko_url"], urls["ws_url"])

