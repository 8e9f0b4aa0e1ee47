"""The market-data producer: poll Binance (and CoinGecko, gently), build one tick per symbol, send to Kafka.

Two feeds (`run_feed(settings, feed=...)`, `btcstream produce --feed`): `websocket` (the default for
live; see `ws_feed`) streams quotes and trades; `rest` is the poll described here.

Polls are scheduled on the exchange's clock (see `clock`): poll k happens when the exchange shows
first_poll + k * poll_interval_s, so polls never drift, and against the local exchange replaying at
`--speed 3600` a 60 s interval gives one tick per simulated minute, 60 per wall second. A poll
that cannot keep up skips the slots it missed (counted), it never bunches them.

Per poll: `GET /api/v3/time` once a second at most (clock), one `bookTicker` request for all symbols
(its midpoint, on the exchange clock, is every tick's `event_time`), one `24hr` request for all, and
CoinGecko `/coins/markets` only when `coingecko_min_interval_s` of exchange time has passed since
the last attempt; otherwise, or when it fails, its last good answer is reused with that answer's own
`last_updated`. A symbol without a book ticker is skipped (reason counted); a missing 24 h or
CoinGecko answer leaves those fields null (counted as incomplete). Never a made-up value.

Library entry points: `run_feed(settings, feed=...)` for either feed, `run_producer(settings,
max_polls=..., stop_event=...)` for the REST poll. It reads whatever
exchange the settings name; a replay points them at the local exchange first
(`btcstream.exchange.replay_exchange`), so nothing here imports the rehearsal tooling.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator

from btcstream.ingest.clock import ExchangeClock, calibrate_until_stopped
from btcstream.errors import BadResponse, RateLimited, SourceUnavailable
from btcstream.ingest.publisher import TickPublisher
from btcstream.settings import Settings
from btcstream.symbols import coin_id_for_symbol
from btcstream.ingest.sources.binance import BinanceClient, BookTicker, Ticker24h
from btcstream.ingest.sources.coingecko import CoinGeckoClient, CoinMarket
from btcstream.ingest.quote_ticks import quote_tick
from btcstream.ingest.tick import Tick, iso_utc
from btcstream.ingest.ws_feed import WebSocketFeedStats, run_websocket_feed
from btcstream.settings import FEEDS

log = logging.getLogger(__name__)

CLOCK_RESYNC_S = 1.0  # local seconds between clock syncs (weight 1 each: at most 60 of 6000 a minute)
STATS_LOG_INTERVAL_S = 30.0  # local seconds between progress lines
SHUTDOWN_FLUSH_TIMEOUT_S = 60.0  # a broker restart takes tens of seconds
IDLE_WAIT_CAP_S = 1.0  # longest single sleep, so a stop or a clock change is noticed quickly


@dataclass
class ProducerStats:
    """Counts of one producer run (also the return value of `run_producer`)."""

    polls: int = 0
    sent: int = 0  # acknowledged by Kafka
    failed: int = 0  # rejected for good by Kafka
    resent: int = 0  # deliveries that failed without a rejection (e.g. expired, broker away) and went again
    pending: int = 0  # accepted but not yet acknowledged (non-zero only if the broker never came back)
    missed_slots: int = 0  # poll slots skipped because a poll ran late
    skipped: Counter[str] = field(default_factory=Counter)  # ticks not built, by reason
    incomplete: Counter[str] = field(default_factory=Counter)  # ticks sent with some fields null, by reason
    started_at: float = field(default_factory=time.monotonic, repr=False)
    finished_at: float | None = field(default=None, repr=False)  # set when the run has flushed and stopped

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        elapsed = (self.finished_at or time.monotonic()) - self.started_at
        parts = [f"polls={self.polls}", f"sent={self.sent}", f"failed={self.failed}",
                 f"skipped={self.skipped_total}", f"pending={self.pending}"]
        if self.resent:
            parts.append(f"resent={self.resent}")
        if self.missed_slots:
            parts.append(f"missed_slots={self.missed_slots}")
        if self.skipped:
            parts.append("skip reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())))
        if self.incomplete:
            parts.append("incomplete: " + ", ".join(f"{k}={v}" for k, v in sorted(self.incomplete.items())))
        return f"{' '.join(parts)} in {elapsed:.1f} s"


class MarketPoller:
    """One poll of the market: the ticks of every symbol at one exchange-clock instant."""

    def __init__(self, settings: Settings, binance: BinanceClient, coingecko: CoinGeckoClient, clock: ExchangeClock,
                 stats: ProducerStats) -> None:
        self.settings = settings
        self.binance = binance
        self.coingecko = coingecko
        self.clock = clock
        self.stats = stats
        self.coin_ids = {symbol: coin_id_for_symbol(symbol) for symbol in settings.symbols}
        self._coingecko_last_attempt: datetime | None = None
        self._coingecko_good: dict[str, CoinMarket] = {}  # last good answer per coin, with its own last_updated
        self._bans_logged: set[tuple[str, int]] = set()
        for symbol, coin_id in self.coin_ids.items():
            if coin_id is None:
                log.warning("no CoinGecko id known for %s: its market cap fields stay null", symbol)

    def poll(self) -> list[Tick]:
        """Observe every symbol once; returns the ticks built (skips are counted in stats)."""
        symbols = self.settings.symbols
        if self.clock.last_sync_local is None or time.monotonic() - self.clock.last_sync_local >= CLOCK_RESYNC_S:
            try:
                self.clock.sync()
            except (RateLimited, SourceUnavailable, BadResponse) as error:
                log.warning("clock sync failed, keeping the previous offset: %s", error)
        before = time.monotonic()
        try:
            books = self.binance.book_tickers(symbols)
        except (RateLimited, SourceUnavailable, BadResponse) as error:
            reason = {RateLimited: "binance_rate_limited", SourceUnavailable: "binance_unavailable",
                      BadResponse: "binance_bad_response"}[type(error)]
            self.stats.skipped[reason] += len(symbols)
            self._warn(f"poll skipped for {','.join(symbols)}", error)
            return []
        event_time = self.clock.at((before + time.monotonic()) / 2)
        days = self._tickers_24h(symbols)
        markets = self._coingecko(event_time)
        ticks = []
        for symbol in symbols:
            book = books.get(symbol)
            if book is None:
                self.stats.skipped["symbol_missing_from_book_ticker"] += 1
                continue
            day = days.get(symbol)
            if day is None:
                self.stats.incomplete["ticker_24h_missing"] += 1
            ticks.append(self._tick(symbol, book, day, markets.get(self.coin_ids[symbol] or ""), event_time))
        return ticks

    def _tickers_24h(self, symbols: tuple[str, ...]) -> dict[str, Ticker24h]:
        try:
            return self.binance.tickers_24h(symbols)
        except (RateLimited, SourceUnavailable, BadResponse) as error:
            self._warn("24 h statistics unavailable, sending ticks without them", error)
            return {}

    def _coingecko(self, now: datetime) -> dict[str, CoinMarket]:
        ids = {coin_id for coin_id in self.coin_ids.values() if coin_id}
        due = self._coingecko_last_attempt is None or now - self._coingecko_last_attempt >= timedelta(
            seconds=self.settings.coingecko_min_interval_s)
        if ids and due:
            self._coingecko_last_attempt = now
            try:
                self._coingecko_good.update(self.coingecko.markets(ids))
            except (RateLimited, SourceUnavailable, BadResponse) as error:
                self._warn("CoinGecko unavailable, reusing its last good answer", error)
                self.stats.incomplete[f"coingecko_{type(error).__name__}"] += 1
        return self._coingecko_good

    def _warn(self, what: str, error: Exception) -> None:
        """Log a failure once per ban (a replay at speed polls many times while a host is cooling down)."""
        if isinstance(error, RateLimited):
            key = (error.host, round(error.until))
            if key in self._bans_logged:
                return
            self._bans_logged.add(key)
        log.warning("%s: %s", what, error)

    def _tick(self, symbol: str, book: BookTicker, day: Ticker24h | None, market: CoinMarket | None,
              event_time: datetime) -> Tick:
        if market is None and self.coin_ids[symbol]:
            self.stats.incomplete["coingecko_missing"] += 1
        if any(value is None for value in (book.bid_price, book.ask_price, book.bid_qty, book.ask_qty)):
            self.stats.incomplete["book_ticker_null_field"] += 1
        return quote_tick(symbol, event_time, book, day, market, feed="rest")


def run_feed(settings: Settings, feed: str | None = None, max_polls: int | None = None,
             stop_event: threading.Event | None = None) -> ProducerStats | WebSocketFeedStats:
    """Run the producer on `feed` (default `settings.feed`): "websocket" streams until `stop_event`
    is set, "rest" polls (`max_polls` applies to it only). Both results have `failed` and `pending`."""
    feed = feed or settings.feed
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {', '.join(FEEDS)}, got {feed!r}")
    if feed == "rest":
        return run_producer(settings, max_polls=max_polls, stop_event=stop_event)
    if max_polls is not None:
        raise ValueError("max_polls applies to the rest feed only; stop the websocket feed with stop_event")
    return run_websocket_feed(settings, stop_event)


def run_producer(settings: Settings, max_polls: int | None = None,
                 stop_event: threading.Event | None = None) -> ProducerStats:
    """Poll the exchange at `settings.binance_url` (and CoinGecko at `settings.coingecko_url`) and
    publish until `max_polls` polls are done or `stop_event` is set; returns the counts.

    Live or replay makes no difference here: for a replay, point the settings at the local exchange
    (`btcstream.exchange.replay_exchange(settings)`). Waits for Kafka if it is down; delivers every
    accepted tick before returning (trying for up to SHUTDOWN_FLUSH_TIMEOUT_S; `pending` counts
    what is left). Raises AccessDenied (451/403) at once: retrying cannot fix it.

    Example (a notebook; stop it from another cell with `stop.set()`):

        stop = threading.Event()
        worker = threading.Thread(target=run_producer, args=(settings,), kwargs={"stop_event": stop})
        worker.start()
    """
    stop = stop_event or threading.Event()
    stats = ProducerStats()
    with ExitStack() as resources:
        binance = BinanceClient(settings.binance_url)
        coingecko = CoinGeckoClient(settings.coingecko_url, api_key=settings.coingecko_api_key)
        resources.callback(binance.close)
        resources.callback(coingecko.close)
        publisher = TickPublisher(settings, stop)
        resources.callback(publisher.close)
        log.info("producing %s from %s to %s topic %s every %g s of exchange time", ",".join(settings.symbols),
                 settings.binance_url, settings.kafka_bootstrap, settings.topic, settings.poll_interval_s)
        if not publisher.connect():
            return stats
        clock = ExchangeClock(binance.server_time, sleep=stop.wait)
        if not calibrate_until_stopped(clock, settings.binance_url, stop):
            return stats
        log.info("exchange clock: %s, %.4g exchange seconds per local second", iso_utc(clock.now()), clock.rate)
        poller = MarketPoller(settings, binance, coingecko, clock, stats)
        try:
            _poll_loop(poller, publisher, clock, stats, stop, max_polls)
        finally:
            _finish(publisher, stats)
    return stats


def _poll_loop(poller: MarketPoller, publisher: TickPublisher, clock: ExchangeClock, stats: ProducerStats,
               stop: threading.Event, max_polls: int | None) -> None:
    last_report = time.monotonic()
    for _ in _slots(clock, poller.settings.poll_interval_s, stats, stop):
        for tick in poller.poll():
            publisher.publish(tick)
        publisher.drain()  # re-offer records held while the broker was away
        stats.polls += 1
        _copy_delivery_counts(publisher, stats)
        if time.monotonic() - last_report >= STATS_LOG_INTERVAL_S:
            log.info("producer: %s", stats.summary())
            last_report = time.monotonic()
        if max_polls is not None and stats.polls >= max_polls:
            return


def _slots(clock: ExchangeClock, interval_s: float, stats: ProducerStats, stop: threading.Event) -> Iterator[datetime]:
    """Exchange-clock instants first + k * interval, yielded when the exchange clock reaches each."""
    interval = timedelta(seconds=interval_s)
    first = clock.now()
    slot = 0
    while not stop.is_set():
        target = first + slot * interval
        wait = clock.wall_seconds_until(target)
        if wait > 0:
            stop.wait(min(wait, IDLE_WAIT_CAP_S))
            continue
        yield target
        slot += 1
        behind = (clock.now() - (first + slot * interval)) / interval
        if behind >= 1:  # this poll overran whole intervals: skip those slots rather than bunch polls
            stats.missed_slots += int(behind)
            slot += int(behind)


def _finish(publisher: TickPublisher, stats: ProducerStats) -> None:
    pending = publisher.pending
    if pending:
        log.info("flushing %d records to Kafka...", pending)
    if not publisher.flush(SHUTDOWN_FLUSH_TIMEOUT_S):
        log.error("Kafka did not acknowledge %d accepted records within %.0f s: they are NOT delivered",
                  publisher.pending, SHUTDOWN_FLUSH_TIMEOUT_S)
    _copy_delivery_counts(publisher, stats)
    stats.finished_at = time.monotonic()
    log.info("producer stopped: %s", stats.summary())


def _copy_delivery_counts(publisher: TickPublisher, stats: ProducerStats) -> None:
    with publisher.counts.lock:
        stats.sent, stats.failed, stats.resent = publisher.counts.sent, publisher.counts.failed, publisher.counts.resent
    stats.pending = publisher.pending


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set `stop` (the run then flushes and returns); a second signal exits at once."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("received %s: stopping after a flush (signal again to quit at once)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
