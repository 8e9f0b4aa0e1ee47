"""The producer's WebSocket feed: Binance streams -> quote ticks and trades -> a bounded buffer -> Kafka.

Per symbol three streams (`binance_ws`): `@bookTicker` gives the quotes, `@ticker` the 24 h
statistics merged into them, `@aggTrade` the trades. CoinGecko stays a REST poll at its own
interval (`coingecko_min_interval_s` of exchange time, at most once a wall second), merged into
the quotes; the exchange clock is synced with `GET /api/v3/time` about once a minute.

- A quote (Tick, schema 2, `feed="websocket"`) carries the book's `update_id`, `received_at` (the
  producer's clock when the frame arrived) and `event_time`: bookTicker has no event time, so the
  receive moment on the exchange's clock. Quotes are conflated per symbol to at most
  `ws_max_quotes_hz` (`QuoteConflator`): a book that comes too soon waits for its slot, a newer
  one replaces it (counted as conflated), and the waiting one is sent when the slot comes, never
  dropped for good.
- A trade (Trade, `feed="websocket"`) goes to `trades_topic`; trades are never conflated. Trades
  fetched from REST to fill a gap (`gaps`) carry `feed="rest"`.
- Continuity (`gaps.ContinuityTracker`): duplicate update/trade ids (the overlap of a handover) are
  dropped and counted; jumps and downtime are recorded; trade gaps are filled from REST.

Threads: the event loop (in the thread that calls `run_websocket_feed`) runs the connections,
parsing, conflation, continuity, the gap filler, clock and CoinGecko polls and the status
document; it never waits on Kafka, so the library keeps answering the server's pings. Records
go into a queue of `ws_buffer_size`; a sender thread hands them to the Kafka publisher and stops
taking more while the publisher holds `ws_buffer_size` unacknowledged ones. A record that finds
the queue full is counted as overflowed (a trade is then fetched again from REST), never dropped
silently. Blocking REST calls run in worker threads.

Not for: the REST poll (`producer`), the socket's life (`sources.binance_ws`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol

from btcstream.errors import BadResponse, RateLimited, SourceUnavailable
from btcstream.ingest.clock import ExchangeClock, calibrate_until_stopped
from btcstream.ingest.feed_status import FeedCounters, LatencyRecorder, iso_from_epoch, write_feed_status
from btcstream.ingest.gaps import FILL_WEIGHT_CEILING, PROBE_DELAY_S, ContinuityTracker, GapFiller
from btcstream.ingest.publisher import DeliveryCounts, Record, TickPublisher
from btcstream.ingest.quote_ticks import quote_tick
from btcstream.ingest.sources.binance import AggTrade, BinanceClient
from btcstream.ingest.sources.binance_ws import (ATTEMPT_WINDOW_S, ATTEMPTS_PER_WINDOW, BACKOFF_BASE_S, BACKOFF_CAP_S,
                                                 HANDOVER_TIMEOUT_S, HEALTHY_AFTER_S, MAX_CONNECTION_AGE_S,
                                                 MAX_STREAMS_PER_CONNECTION, AttemptLimiter, Backoff,
                                                 BookTickerEvent, StreamConnection, TickerEvent,
                                                 combined_stream_urls, parse_agg_trade_event, parse_book_ticker_event,
                                                 parse_ticker_event)
from btcstream.ingest.sources.coingecko import CoinGeckoClient, CoinMarket
from btcstream.ingest.tick import Tick, iso_utc
from btcstream.ingest.trade import Trade
from btcstream.settings import Settings
from btcstream.symbols import coin_id_for_symbol

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2.0  # local seconds between feed-status documents
STATS_LOG_INTERVAL_S = 30.0
CLOCK_RESYNC_S = 60.0  # local seconds between exchange-clock syncs on this feed
COINGECKO_MIN_WALL_S = 1.0  # a fast replay still polls CoinGecko at most once a wall second
COINGECKO_LOG_INTERVAL_S = 60.0
SHUTDOWN_FLUSH_TIMEOUT_S = 60.0
OVERFLOW_LOG_INTERVAL_S = 10.0
STOP_POLL_S = 0.1


@dataclass(frozen=True)
class FeedOptions:
    """Tunables of the WebSocket feed that are not settings (tests and benchmarks shrink them)."""

    max_connection_age_s: float = MAX_CONNECTION_AGE_S  # exchange seconds before a planned handover
    handover_timeout_s: float = HANDOVER_TIMEOUT_S
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S
    healthy_after_s: float = HEALTHY_AFTER_S
    attempts_per_window: int = ATTEMPTS_PER_WINDOW
    attempt_window_s: float = ATTEMPT_WINDOW_S
    probe_delay_s: float = PROBE_DELAY_S
    fill_weight_ceiling: int = FILL_WEIGHT_CEILING
    status_interval_s: float = STATUS_INTERVAL_S
    clock_resync_s: float = CLOCK_RESYNC_S
    coingecko_min_wall_s: float = COINGECKO_MIN_WALL_S


class Publisher(Protocol):
    """What the sender needs from a Kafka publisher (`TickPublisher`; tests pass fakes)."""

    counts: DeliveryCounts

    @property
    def pending(self) -> int: ...

    def connect(self) -> bool: ...

    def publish(self, record: Record) -> None: ...

    def drain(self) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PendingQuote:
    """A book update waiting for the end of its conflation interval, with when it arrived."""

    event: BookTickerEvent
    received_monotonic: float
    received_wall: float


class QuoteConflator:
    """At most `max_hz` quotes per symbol; a book that comes too soon waits, replaced by newer ones (the latest
    book wins), and is sent when its slot comes.

    The pacing is a virtual schedule (GCRA): each send books the next slot one interval later; a book
    may go up to half an interval early, so quotes arriving at about the limit (with network jitter)
    are not held back, while sends stay at least half an interval apart and average at most `max_hz`
    (any one second holds at most `max_hz` + 1). `schedule(delay_s, callback)` runs `callback` later
    (the event loop's `call_later`).
    """

    def __init__(self, max_hz: float, emit: Callable[[str, PendingQuote], None],
                 schedule: Callable[[float, Callable[[], None]], Any], counters: FeedCounters,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = 1.0 / max_hz
        self.tolerance_s = self.interval_s / 2
        self._emit = emit
        self._schedule = schedule
        self._counters = counters
        self._monotonic = monotonic
        self._next_slot: dict[str, float] = {}  # per symbol: the theoretical time of the next send
        self._pending: dict[str, PendingQuote] = {}

    @property
    def held(self) -> int:
        """Quotes waiting for their slot (at most one per symbol)."""
        return len(self._pending)

    def offer(self, symbol: str, quote: PendingQuote) -> None:
        if symbol in self._pending:
            self._counters.conflated += 1  # the waiting book is replaced by a newer one
            self._pending[symbol] = quote
            return
        now = self._monotonic()
        slot = self._next_slot.get(symbol, now)
        if now >= slot - self.tolerance_s:
            self._send(symbol, quote, now)
            return
        self._pending[symbol] = quote
        self._schedule(slot - self.tolerance_s - now, lambda: self._release(symbol))

    def flush_all(self) -> None:
        """Send every waiting quote now (at shutdown)."""
        for symbol in list(self._pending):
            self._release(symbol)

    def _release(self, symbol: str) -> None:
        quote = self._pending.pop(symbol, None)
        if quote is not None:
            self._send(symbol, quote, self._monotonic())

    def _send(self, symbol: str, quote: PendingQuote, now: float) -> None:
        self._next_slot[symbol] = max(self._next_slot.get(symbol, now), now) + self.interval_s
        self._emit(symbol, quote)


class WebSocketFeed:
    """The feed's state on the event loop: a `StreamSink` that turns messages into records for the buffer."""

    def __init__(self, settings: Settings, clock: ExchangeClock, buffer: "queue.Queue[Record]",
                 counters: FeedCounters | None = None, tracker: ContinuityTracker | None = None,
                 schedule: Callable[[float, Callable[[], None]], Any] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.buffer = buffer
        self.counters = counters or FeedCounters()
        self.tracker = tracker or ContinuityTracker(settings.symbols)
        self.conflator = QuoteConflator(settings.ws_max_quotes_hz, self._send_quote,
                                        schedule or (lambda delay, callback: asyncio.get_running_loop().call_later(
                                            delay, callback)), self.counters, monotonic)
        self.coin_ids = {symbol: coin_id_for_symbol(symbol) for symbol in settings.symbols}
        self.markets: dict[str, CoinMarket] = {}  # last good CoinGecko answer per coin
        self.tickers: dict[str, TickerEvent] = {}  # last 24 h statistics per symbol
        self.filler_wake: Callable[[], None] = lambda: None
        self._by_stream_symbol = {symbol.lower(): symbol for symbol in settings.symbols}
        self._overflow_logged_at = -OVERFLOW_LOG_INTERVAL_S
        self.tracker.on_trade_gap = lambda gap: self.filler_wake()

    # StreamSink ---------------------------------------------------------------------------------------------

    def on_message(self, stream: str, data: dict[str, Any], received_monotonic: float, received_wall: float) -> None:
        stream_symbol, _, kind = stream.partition("@")
        symbol = self._by_stream_symbol.get(stream_symbol)
        if symbol is None:
            self.counters.malformed["unknown_stream"] += 1
        elif kind == "bookTicker":
            self._on_book_ticker(symbol, data, received_monotonic, received_wall)
        elif kind == "aggTrade":
            self._on_agg_trade(symbol, data, received_wall)
        elif kind == "ticker":
            self._on_ticker(symbol, data, received_wall)
        else:
            self.counters.malformed["unknown_stream"] += 1

    def on_malformed(self, reason: str) -> None:
        self.counters.malformed[reason] += 1

    def on_down(self, connection: StreamConnection, reason: str, since_monotonic: float) -> None:
        since_wall = time.time() - (time.monotonic() - since_monotonic)
        self.tracker.connection_down(connection.symbols, since_wall, reason)

    def on_up(self, connection: StreamConnection, at_monotonic: float) -> None:
        at_wall = time.time() - (time.monotonic() - at_monotonic)
        self.tracker.connection_up(connection.symbols, at_wall)
        self.filler_wake()

    # Messages ------------------------------------------------------------------------------------------------

    def _on_book_ticker(self, symbol: str, data: dict[str, Any], received_monotonic: float,
                        received_wall: float) -> None:
        event = parse_book_ticker_event(data)
        if event is None or event.symbol != symbol:
            self.counters.malformed["bad_book_ticker"] += 1
            return
        if not self.tracker.quote(symbol, event.update_id, received_wall):
            self.counters.duplicates["quote"] += 1
            return
        self.counters.received["quote"] += 1
        self.counters.last_message[symbol] = received_wall
        self.conflator.offer(symbol, PendingQuote(event, received_monotonic, received_wall))

    def _on_agg_trade(self, symbol: str, data: dict[str, Any], received_wall: float) -> None:
        event = parse_agg_trade_event(data)
        if event is None or event.trade.symbol != symbol:
            self.counters.malformed["bad_agg_trade"] += 1
            return
        trade = event.trade
        if not self.tracker.trade(symbol, trade.trade_id, received_wall):
            self.counters.duplicates["trade"] += 1
            return
        self.counters.received["trade"] += 1
        self.counters.last_message[symbol] = received_wall
        record = trade_record(trade, feed="websocket", event_time=iso_utc(event.event_time),
                              received_at=iso_from_epoch(received_wall))
        if self._offer(record):
            self.counters.sent["trade"] += 1
        else:
            self.counters.overflowed["trade"] += 1
            self.tracker.trade_overflowed(symbol, trade.trade_id, received_wall)

    def _on_ticker(self, symbol: str, data: dict[str, Any], received_wall: float) -> None:
        event = parse_ticker_event(data)
        if event is None or event.stats.symbol != symbol:
            self.counters.malformed["bad_ticker"] += 1
            return
        last = self.tickers.get(symbol)
        if last is not None and event.event_time_ms <= last.event_time_ms:
            self.counters.duplicates["ticker"] += 1
            return
        self.counters.received["ticker"] += 1
        self.counters.last_message[symbol] = received_wall
        self.tickers[symbol] = event

    def _send_quote(self, symbol: str, quote: PendingQuote) -> None:
        if self._offer(self.quote_record(symbol, quote)):
            self.counters.sent["quote"] += 1
        else:
            self.counters.overflowed["quote"] += 1

    def quote_record(self, symbol: str, quote: PendingQuote) -> Tick:
        """The tick of one book update, merged with the symbol's latest 24 h statistics and CoinGecko answer."""
        book = quote.event
        ticker = self.tickers.get(symbol)
        day = ticker.stats if ticker is not None else None
        coin_id = self.coin_ids.get(symbol)
        market = self.markets.get(coin_id) if coin_id else None
        return quote_tick(symbol, self.clock.at(quote.received_monotonic), book, day, market, feed="websocket",
                          update_id=book.update_id, received_at=iso_from_epoch(quote.received_wall))

    def _offer(self, record: Record) -> bool:
        """Put a record in the buffer without waiting; False (and a throttled warning) when it is full."""
        try:
            self.buffer.put_nowait(record)
            return True
        except queue.Full:
            now = time.monotonic()
            if now - self._overflow_logged_at >= OVERFLOW_LOG_INTERVAL_S:
                self._overflow_logged_at = now
                log.warning("the buffer of %d records to Kafka is full: records are dropped and counted "
                            "(overflowed so far: %s; trades are fetched again from REST)",
                            self.settings.ws_buffer_size, dict(self.counters.overflowed) or "none")
            return False

    async def send_filled(self, trade: AggTrade, stop: asyncio.Event | None = None) -> None:
        """Send a trade fetched from REST, waiting for room in the buffer (gap fills are worth waiting for)."""
        record = trade_record(trade, feed="rest", event_time=None, received_at=iso_from_epoch(time.time()))
        while True:
            try:
                self.buffer.put_nowait(record)
                self.counters.sent["trade_rest"] += 1
                return
            except queue.Full:
                if stop is not None and stop.is_set():  # shutting down with Kafka stuck: missing again, recorded
                    self.counters.overflowed["trade_rest"] += 1
                    self.tracker.trade_overflowed(trade.symbol, trade.trade_id, time.time())
                    return
                await asyncio.sleep(0.02)


def trade_record(trade: AggTrade, feed: str, event_time: str | None, received_at: str) -> Trade:
    """The Trade record of an aggregate trade."""
    return Trade(symbol=trade.symbol, trade_id=trade.trade_id, price=trade.price, qty=trade.qty,
                 quote_qty=trade.price * trade.qty, trade_time=iso_utc(trade.trade_time),
                 buyer_is_maker=trade.buyer_is_maker, first_trade_id=trade.first_trade_id,
                 last_trade_id=trade.last_trade_id, event_time=event_time, received_at=received_at, feed=feed)


class KafkaSender(threading.Thread):
    """Moves records from the buffer to the publisher; stops taking while the publisher holds `backlog_limit`."""

    def __init__(self, buffer: "queue.Queue[Record]", publisher: Publisher, backlog_limit: int) -> None:
        super().__init__(name="btcstream-kafka-sender", daemon=True)
        self.buffer = buffer
        self.publisher = publisher
        self.backlog_limit = backlog_limit
        self._finishing = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                if not self._finishing.is_set() and self.publisher.pending >= self.backlog_limit:
                    self.publisher.drain()  # Kafka is behind: let the buffer fill (and overflow, counted)
                    time.sleep(0.005)
                    continue
                try:
                    record = self.buffer.get(timeout=0.05)
                except queue.Empty:
                    if self._finishing.is_set():
                        return
                    self.publisher.drain()
                    continue
                self.publisher.publish(record)
        except BaseException as error:  # noqa: BLE001 - reported by finish()
            self.error = error
            log.exception("the Kafka sender failed")

    def finish(self, timeout_s: float = SHUTDOWN_FLUSH_TIMEOUT_S) -> None:
        """Hand everything still buffered to the publisher, then return."""
        self._finishing.set()
        self.join(timeout_s)


@dataclass
class WebSocketFeedStats:
    """The outcome of a run: its final feed-status document and the latencies measured."""

    document: dict[str, Any] = field(default_factory=dict)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)

    @property
    def failed(self) -> int:
        return int(self.document.get("kafka", {}).get("failed", 0))

    @property
    def pending(self) -> int:
        return int(self.document.get("kafka", {}).get("pending", 0))

    @property
    def acknowledged(self) -> int:
        return int(self.document.get("kafka", {}).get("acknowledged", 0))

    def summary(self) -> str:
        if not self.document:
            return "not started"
        counts, kafka, connections = self.document["counts"], self.document["kafka"], self.document["connections"]
        gaps = self.document["gaps"]
        return (f"received quotes={counts['received']['quote']} trades={counts['received']['trade']} "
                f"tickers={counts['received']['ticker']}; sent quotes={counts['sent']['quote']} "
                f"trades={counts['sent']['trade']}+{counts['sent']['trade_rest']} from REST; "
                f"conflated={counts['conflated']} overflowed={sum(counts['overflowed'].values())} "
                f"malformed={sum(counts['malformed'].values())} duplicates={sum(counts['duplicates'].values())}; "
                f"kafka acknowledged={kafka['acknowledged']} failed={kafka['failed']} pending={kafka['pending']}; "
                f"reconnects={sum(connections['reconnects'].values())} gaps={gaps['total'] or 0} "
                f"missing trade ids={gaps['missing_trade_ids']}")


def _latency_hook(latency: LatencyRecorder) -> Callable[[Record], None]:
    """Record frame received -> Kafka acknowledged for stream records (called from Kafka's I/O thread)."""

    def delivered(record: Record) -> None:
        if record.feed != "websocket" or record.received_at is None:
            return
        received = datetime.fromisoformat(record.received_at).timestamp()
        latency.record("trade" if isinstance(record, Trade) else "quote", (time.time() - received) * 1000.0)

    return delivered


def run_websocket_feed(settings: Settings, stop_event: threading.Event | None = None, *,
                       options: FeedOptions | None = None, publisher: Publisher | None = None,
                       binance: BinanceClient | None = None, coingecko: CoinGeckoClient | None = None,
                       latency: LatencyRecorder | None = None) -> WebSocketFeedStats:
    """Stream `settings.symbols` from `settings.binance_ws_url` into Kafka until `stop_event` is set.

    REST (clock, gap fills) uses `settings.binance_url`, CoinGecko `settings.coingecko_url`. Waits for
    Kafka at start; on stop, sends the quotes still held by conflation, hands the buffer to Kafka
    and waits up to SHUTDOWN_FLUSH_TIMEOUT_S for acknowledgements (`pending` counts what is left).
    The feed-status document is written every `status_interval_s` and at the end. Runs an event
    loop in the calling thread (from a notebook: in a worker thread, as `run_producer`). `latency`
    (optional) keeps more samples than the default recorder (benchmarks).
    """
    stop = stop_event or threading.Event()
    options = options or FeedOptions()
    stats = WebSocketFeedStats(latency=latency or LatencyRecorder())
    with ExitStack() as resources:
        if binance is None:
            binance = BinanceClient(settings.binance_url)
            resources.callback(binance.close)
        if coingecko is None:
            coingecko = CoinGeckoClient(settings.coingecko_url, api_key=settings.coingecko_api_key)
            resources.callback(coingecko.close)
        if publisher is None:
            publisher = TickPublisher(settings, stop, with_trades=True, on_delivered=_latency_hook(stats.latency))
            resources.callback(publisher.close)
        log.info("streaming %s from %s (REST %s) to %s: quotes -> %s (at most %g/s per symbol), trades -> %s",
                 ",".join(settings.symbols), settings.binance_ws_url, settings.binance_url, settings.kafka_bootstrap,
                 settings.topic, settings.ws_max_quotes_hz, settings.trades_topic)
        if not publisher.connect():
            return stats
        clock = ExchangeClock(binance.server_time, sleep=stop.wait)
        if not calibrate_until_stopped(clock, settings.binance_url, stop):
            return stats
        log.info("exchange clock: %s, %.4g exchange seconds per local second", iso_utc(clock.now()), clock.rate)
        buffer: queue.Queue[Record] = queue.Queue(maxsize=settings.ws_buffer_size)
        feed = WebSocketFeed(settings, clock, buffer)
        sender = KafkaSender(buffer, publisher, backlog_limit=settings.ws_buffer_size)
        sender.start()
        runner = _FeedRunner(settings, options, feed, binance, coingecko, publisher, stats.latency, sender)
        try:
            asyncio.run(runner.run(stop))
        finally:
            sender.finish()
            if publisher.pending:
                log.info("flushing %d records to Kafka...", publisher.pending)
            if not publisher.flush(SHUTDOWN_FLUSH_TIMEOUT_S):
                log.error("Kafka did not acknowledge %d accepted records within %.0f s: they are NOT delivered",
                          publisher.pending, SHUTDOWN_FLUSH_TIMEOUT_S)
            stats.document = runner.document("stopped")
            stats.document["latency_ms"] = stats.latency.summary()
            write_feed_status(settings, stats.document)
            log.info("producer stopped: %s", stats.summary())
        if sender.error is not None:  # it failed while finishing (earlier, the runner raised it already)
            raise sender.error
    return stats


class _FeedRunner:
    """The asyncio side of a run: connections, gap filler, clock and CoinGecko polls, status document."""

    def __init__(self, settings: Settings, options: FeedOptions, feed: WebSocketFeed, binance: BinanceClient,
                 coingecko: CoinGeckoClient, publisher: Publisher, latency: LatencyRecorder,
                 sender: KafkaSender) -> None:
        self.settings = settings
        self.options = options
        self.feed = feed
        self.binance = binance
        self.coingecko = coingecko
        self.publisher = publisher
        self.latency = latency
        self.sender = sender
        self.feed.tracker.probe_delay_s = options.probe_delay_s
        limiter = AttemptLimiter(options.attempts_per_window, options.attempt_window_s)
        self.connections = [
            StreamConnection(url, feed, name=f"stream-{index}", symbols=symbols,
                             stale_after_s=settings.ws_stale_after_s, max_age_s=options.max_connection_age_s,
                             exchange_rate=lambda: feed.clock.rate,
                             backoff=Backoff(options.backoff_base_s, options.backoff_cap_s), limiter=limiter,
                             healthy_after_s=options.healthy_after_s, handover_timeout_s=options.handover_timeout_s)
            for index, (url, symbols) in enumerate(
                combined_stream_urls(settings.binance_ws_url, settings.symbols, options.max_streams_per_connection))]
        self.filler: GapFiller | None = None
        self._stop: asyncio.Event | None = None

    async def run(self, stop_event: threading.Event) -> None:
        stop = self._stop = asyncio.Event()
        self.filler = GapFiller(self.feed.tracker, self.binance, lambda trade: self.feed.send_filled(trade, stop),
                                clock=self.feed.clock, weight_ceiling=self.options.fill_weight_ceiling)
        self.feed.filler_wake = self.filler.wake
        tasks = {asyncio.create_task(connection.run(stop), name=connection.name) for connection in self.connections}
        tasks |= {asyncio.create_task(self.filler.run(stop), name="gap-filler"),
                  asyncio.create_task(self._clock_syncs(stop), name="clock"),
                  asyncio.create_task(self._coingecko_polls(stop), name="coingecko"),
                  asyncio.create_task(self._status_documents(stop), name="status")}
        failure: BaseException | None = None
        try:
            while not stop_event.is_set():
                if not self.sender.is_alive():  # it logged why; nothing would reach Kafka any more
                    failure = self.sender.error or RuntimeError("the Kafka sender thread stopped")
                    break
                if not tasks:
                    await asyncio.sleep(STOP_POLL_S)
                    continue
                done, _ = await asyncio.wait(tasks, timeout=STOP_POLL_S)
                for task in done:
                    tasks.discard(task)
                    if task.exception() is not None:
                        failure = task.exception()
                        log.error("feed task %s failed: %r", task.get_name(), failure)
                if failure is not None:
                    break
        finally:
            stop.set()
            if tasks:
                await asyncio.wait(tasks, timeout=SHUTDOWN_FLUSH_TIMEOUT_S)
            self.feed.conflator.flush_all()
        if failure is not None:
            raise failure

    async def _clock_syncs(self, stop: asyncio.Event) -> None:
        while not await _stopped_within(stop, self.options.clock_resync_s):
            try:
                await asyncio.to_thread(self.feed.clock.sync)
            except (RateLimited, SourceUnavailable, BadResponse) as error:
                self.feed.counters.clock_sync_errors += 1
                log.warning("clock sync failed, keeping the previous offset: %s", error)

    async def _coingecko_polls(self, stop: asyncio.Event) -> None:
        ids = {coin_id for coin_id in self.feed.coin_ids.values() if coin_id}
        if not ids:
            return
        for symbol, coin_id in self.feed.coin_ids.items():
            if coin_id is None:
                log.warning("no CoinGecko id known for %s: its market cap fields stay null", symbol)
        logged_at: dict[str, float] = {}  # a fast replay polls every second: one line per kind of failure a minute
        while True:
            try:
                self.feed.markets.update(await asyncio.to_thread(self.coingecko.markets, ids))
            except (RateLimited, SourceUnavailable, BadResponse) as error:
                self.feed.counters.coingecko_errors += 1
                kind = type(error).__name__
                if time.monotonic() - logged_at.get(kind, -COINGECKO_LOG_INTERVAL_S) >= COINGECKO_LOG_INTERVAL_S:
                    logged_at[kind] = time.monotonic()
                    log.warning("CoinGecko unavailable, reusing its last good answer (%d failures so far): %s",
                                self.feed.counters.coingecko_errors, error)
            interval = max(self.options.coingecko_min_wall_s,
                           self.settings.coingecko_min_interval_s / max(self.feed.clock.rate, 1e-9))
            if await _stopped_within(stop, interval):
                return

    async def _status_documents(self, stop: asyncio.Event) -> None:
        last_log = time.monotonic()
        while not await _stopped_within(stop, self.options.status_interval_s):
            document = self.document("running")
            await asyncio.to_thread(self._write, document)
            if time.monotonic() - last_log >= STATS_LOG_INTERVAL_S:
                last_log = time.monotonic()
                log.info("producer: %s", WebSocketFeedStats(document).summary())

    def _write(self, document: dict[str, Any]) -> None:
        document["latency_ms"] = self.latency.summary()
        try:
            write_feed_status(self.settings, document)
        except OSError as error:
            log.warning("cannot write the feed status: %s", error)

    def document(self, state: str) -> dict[str, Any]:
        """The feed-status document (layout: `feed_status`)."""
        counters = self.feed.counters
        with self.publisher.counts.lock:
            kafka = {"acknowledged": self.publisher.counts.sent, "failed": self.publisher.counts.failed,
                     "resent": self.publisher.counts.resent}
        kafka["pending"] = self.publisher.pending
        reconnects: Counter[str] = Counter()
        for connection in self.connections:
            reconnects.update(connection.counters.reconnects)
        filler = self.filler
        document: dict[str, Any] = {
            "version": 1, "feed": "websocket", "state": state, "started_at": iso_from_epoch(counters.started_at),
            "written_at": iso_from_epoch(time.time()), "url": self.settings.binance_ws_url,
            "rest_url": self.settings.binance_url, "symbols": list(self.settings.symbols),
            "topic": self.settings.topic, "trades_topic": self.settings.trades_topic,
            "counts": counters.counts_document(self.feed.conflator.held),
            "kafka": kafka,
            "buffer": {"capacity": self.settings.ws_buffer_size, "used": self.feed.buffer.qsize()},
            "connections": {
                "open": sum(c.counters.open for c in self.connections),
                "attempts": sum(c.counters.attempts for c in self.connections),
                "failed_attempts": sum(c.counters.failed_attempts for c in self.connections),
                "handovers": sum(c.counters.handovers for c in self.connections),
                "pings_received": sum(c.counters.pings_received for c in self.connections),
                "overlap_frames_discarded": sum(c.counters.overlap_frames_discarded for c in self.connections),
                "reconnects": dict(reconnects)},
            "gap_fill": {"requests": filler.requests if filler else 0,
                         "errors": dict(filler.errors) if filler else {},
                         "weight_waits": filler.weight_waits if filler else 0},
            "clock": {"rate": self.feed.clock.rate, "sync_errors": counters.clock_sync_errors},
            "coingecko_errors": counters.coingecko_errors,
            **self.feed.tracker.document(),
            "last_message": counters.last_message_document(),
        }
        return document


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds`; True when `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False
