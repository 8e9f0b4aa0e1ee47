"""Backfill of Binance klines: page `GET /api/v3/klines` over a past range within the request-weight limit.

A run, per symbol (`KlineBackfill.run`):

1. The exchange's clock (`GET /api/v3/time`) bounds the range: only closed bars are kept
   (close_time < the exchange's time), so a bar still in progress is never stored.
2. Plan: the open times already stored in [start, end) are read from the store; the missing ones form
   runs of consecutive bars, merged when less than a page apart. An interrupted run therefore resumes
   after the newest stored bar (and fills any hole before it); a rerun of a complete range asks only
   for the exchange's own gaps, one small request each, and writes nothing.
3. Each run is paged with `startTime`, `endTime` and `limit=1000`, the next page starting at the last
   open time + 1 ms. Before each request the weight used in the current minute (the last answer's
   `X-MBX-USED-WEIGHT-1M`) is checked against a safe share of Binance's 6000 per minute; above it the
   run waits for the exchange's next minute (`WeightPacer`). On 429/418 it waits the Retry-After the
   http client recorded (calling sooner turns a 429 into a ban), then asks again; a wait longer than
   `max_rate_limit_wait_s` stops the run after storing what it fetched (rerun later: it resumes).
4. Every row is checked (`kline_problem`): unparsable, non-numeric, price <= 0, high < low, open or
   close outside [low, high], negative volume, an open time outside the asked range or off the
   interval's grid, not closed yet. Bad rows are counted by reason and never stored.
5. Valid bars go to the store in batches of about `rows_per_commit` rows (a kill loses at most one
   batch; each batch is one or a few Delta commits, which cost about a second each on HDFS).
6. Bars still missing between the first and the last bar present are gaps in the exchange's own
   history (outages): reported with their span, not errors.

Not for: where the bars are stored (the store is passed in: `btcstream.storage.klines.KlinesTable`),
or the command line (`btcstream.commands.backfill`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Callable, Iterable, Protocol, Sequence, TypeVar

import numpy as np

from btcstream.errors import RateLimited
from btcstream.ingest.sources.binance import KLINES_MAX_LIMIT, BinanceClient, Kline, KlinePage

log = logging.getLogger(__name__)

INTERVAL_MS = {"1m": 60_000, "1h": 3_600_000}  # the intervals `btcstream backfill` stores
BACKFILL_INTERVALS: tuple[str, ...] = tuple(INTERVAL_MS)
WEIGHT_LIMIT_1M = 6000  # Binance's request weight per minute per IP
SAFE_WEIGHT_SHARE = 0.5  # the backfill uses at most half: the producer and anything else on this IP keep the rest
KLINES_WEIGHT = 2  # GET /api/v3/klines, any limit up to 1000
TIME_WEIGHT = 1  # GET /api/v3/time
ROWS_PER_COMMIT = 50_000  # about 50 pages per batch handed to the store
MAX_RATE_LIMIT_WAIT_S = 300.0  # a longer Retry-After (a 418 ban lasts 2 minutes to 3 days) stops the run
PROBE_SLEEP_CAP_S = 60.0  # longest sleep before looking at the exchange's minute again (less for a fast test clock)
MINUTE_MS = 60_000
RETRY_AFTER_MARGIN_S = 0.05  # waited beyond Retry-After, so the next call is never early
PROGRESS_EVERY_PAGES = 10
SHOWN_GAPS = 20  # gaps logged one per line; more are summed up

T = TypeVar("T")


class KlineStore(Protocol):
    """Where backfilled bars go (`btcstream.storage.klines.KlinesTable`)."""

    def stored_open_times(self, symbol: str, interval: str, start: datetime, end: datetime) -> np.ndarray:
        """Epoch-ms open times of the stored bars with open_time in [start, end), sorted."""

    def append_new(self, symbol: str, interval: str, bars: Sequence[Kline]) -> int:
        """Store the bars whose (symbol, interval, open_time) is not stored yet; returns how many were added."""


@dataclass(frozen=True)
class HistoryGap:
    """Bars the exchange does not have between two bars it has (an outage), [start, end)."""

    symbol: str
    interval: str
    start: datetime
    end: datetime
    bars: int

    def describe(self) -> str:
        return (f"{self.symbol} {self.interval}: no bars from {_iso(self.start)} to {_iso(self.end)} "
                f"({self.bars} missing)")


@dataclass
class SymbolReport:
    """What a backfill did for one symbol."""

    symbol: str
    interval: str
    start: datetime  # first open time asked for
    end: datetime  # exclusive: the asked end, or the exchange's time if earlier (only closed bars)
    stored_before: int = 0  # bars of the range already stored when the run began
    pages: int = 0
    rows_received: int = 0
    rows_written: int = 0
    already_stored: int = 0  # valid rows received again (pages crossing stored bars between merged runs)
    bad_rows: Counter[str] = field(default_factory=Counter)
    gaps: list[HistoryGap] = field(default_factory=list)
    first_bar: datetime | None = None  # first and last bar stored in the range after the run
    last_bar: datetime | None = None
    weight_waits: int = 0
    rate_limit_waits: int = 0
    max_used_weight: int = 0  # highest X-MBX-USED-WEIGHT-1M seen after a page
    seconds: float = 0.0

    @property
    def gap_bars(self) -> int:
        return sum(gap.bars for gap in self.gaps)

    def line(self) -> str:
        """One line: rows written, pages, bad rows by reason, gaps, the span stored."""
        bad = sum(self.bad_rows.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.bad_rows.items()))
        span = (f"stored {_iso(self.first_bar)} .. {_iso(self.last_bar)}" if self.first_bar is not None
                else "nothing stored in this range")
        rate = f"{self.rows_written / self.seconds:,.0f} rows/s" if self.seconds > 0 and self.rows_written else "-"
        return (f"{self.symbol} {self.interval} [{_iso(self.start)}, {_iso(self.end)}): {self.rows_written:,} new rows "
                f"({self.stored_before:,} stored before), {_count(self.pages, 'page')}, "
                f"{_count(bad, 'bad row')}{f' ({reasons})' if bad else ''}, "
                f"{_count(len(self.gaps), 'gap')} in the exchange's history ({_count(self.gap_bars, 'bar')}); "
                f"{span}; {self.seconds:.1f} s, {rate}")


class WeightPacer:
    """Keeps this client's request weight per minute under `share` of `limit`, on the exchange's own minute.

    Binance counts weight per IP in fixed minutes of its clock and reports the running total in every
    answer's `X-MBX-USED-WEIGHT-1M`. Before a page, `before(weight)` waits while the last reported total
    plus `weight` would pass the budget: it sleeps until the exchange's next minute (estimated from its
    clock as last read, at most `probe_sleep_cap_s`) and looks again with `GET /api/v3/time`, whose
    answer carries the new total. So pages never take a minute's total past the budget; each look costs
    weight 1, and on an exchange whose clock runs at wall speed there is one look per wait, in the new
    minute. (A replay exchange with a fast clock needs a small cap: its minutes are shorter than estimated.)
    """

    def __init__(self, client: BinanceClient, limit: int = WEIGHT_LIMIT_1M, share: float = SAFE_WEIGHT_SHARE,
                 probe_sleep_cap_s: float = PROBE_SLEEP_CAP_S, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"weight share must be in (0, 1], got {share}")
        self.client = client
        self.budget = max(KLINES_WEIGHT + TIME_WEIGHT, int(limit * share))
        self.probe_sleep_cap_s = probe_sleep_cap_s
        self.sleep = sleep
        self.clock = clock
        self.waits = 0
        self.max_used = 0  # the highest total reported after a page
        self._server_ms: int | None = None
        self._server_seen_at = 0.0

    def server_now(self) -> datetime:
        """The exchange's time (`GET /api/v3/time`); also where its current minute stands."""
        moment = self.client.server_time()
        self._server_ms, self._server_seen_at = _epoch_ms(moment), self.clock()
        return moment

    def before(self, weight: int) -> None:
        """Wait until a request of `weight` keeps the minute's total within the budget."""
        while self.client.used_weight_1m is not None and self.client.used_weight_1m + weight > self.budget:
            pause = min(self.probe_sleep_cap_s, self._seconds_to_next_minute())
            self.waits += 1
            log.info("request weight %d of a budget of %d this minute: waiting %.1f s for the exchange's next minute",
                     self.client.used_weight_1m, self.budget, pause)
            self.sleep(pause)
            self.server_now()

    def observe(self) -> None:
        """Note the total reported by the answer to a page."""
        if self.client.used_weight_1m is not None:
            self.max_used = max(self.max_used, self.client.used_weight_1m)

    def _seconds_to_next_minute(self) -> float:
        if self._server_ms is None:
            return self.probe_sleep_cap_s
        now_ms = self._server_ms + (self.clock() - self._server_seen_at) * 1000.0  # the exchange's clock, estimated
        return (MINUTE_MS - now_ms % MINUTE_MS) / 1000.0 + RETRY_AFTER_MARGIN_S


class KlineBackfill:
    """Fetches one interval's closed klines of past ranges into a `KlineStore` (see the module docstring)."""

    def __init__(self, client: BinanceClient, store: KlineStore, interval: str = "1h", *,
                 weight_limit: int = WEIGHT_LIMIT_1M, weight_share: float = SAFE_WEIGHT_SHARE,
                 rows_per_commit: int = ROWS_PER_COMMIT, max_rate_limit_wait_s: float = MAX_RATE_LIMIT_WAIT_S,
                 probe_sleep_cap_s: float = PROBE_SLEEP_CAP_S, page_limit: int = KLINES_MAX_LIMIT,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        if interval not in INTERVAL_MS:
            raise ValueError(f"interval {interval!r}: expected one of {', '.join(BACKFILL_INTERVALS)}")
        if rows_per_commit < 1:
            raise ValueError(f"rows_per_commit must be >= 1, got {rows_per_commit}")
        self.client = client
        self.store = store
        self.interval = interval
        self.step_ms = INTERVAL_MS[interval]
        self.rows_per_commit = rows_per_commit
        self.max_rate_limit_wait_s = max_rate_limit_wait_s
        self.page_limit = page_limit
        self.sleep = sleep
        self.clock = clock
        self.pacer = WeightPacer(client, weight_limit, weight_share, probe_sleep_cap_s, sleep, clock)
        self.rate_limit_waits = 0  # 429/418 answers waited out, over every symbol

    def run(self, symbols: Iterable[str], start: datetime, end: datetime) -> list[SymbolReport]:
        """Backfill every symbol over [start, end) (aware UTC), one after the other."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware (UTC)")
        if end <= start:
            raise ValueError(f"empty range: end {_iso(end)} is not after start {_iso(start)}")
        return [self.symbol(symbol.upper(), start, end) for symbol in symbols]

    def symbol(self, symbol: str, start: datetime, end: datetime) -> SymbolReport:
        """Backfill one symbol over [start, end): plan the missing bars, page them, store them, report."""
        began = self.clock()
        waits_before, limited_before = self.pacer.waits, self.rate_limit_waits
        now_ms = _epoch_ms(self._patiently(self.pacer.server_now))
        first_ms = -(-_epoch_ms(start) // self.step_ms) * self.step_ms  # first open time >= start
        end_ms = min(_epoch_ms(end), now_ms // self.step_ms * self.step_ms)  # bars open before this are closed
        report = SymbolReport(symbol, self.interval, _utc(first_ms), _utc(max(first_ms, end_ms)))
        run = _SymbolRun(report, now_ms)
        if end_ms <= first_ms:
            log.info("%s %s: no closed bar opens in [%s, %s) on the exchange's clock (%s)", symbol, self.interval,
                     _iso(start), _iso(end), _iso(_utc(now_ms)))
            report.seconds = self.clock() - began
            return report
        grid = np.arange(first_ms, end_ms, self.step_ms, dtype=np.int64)
        stored = self.store.stored_open_times(symbol, self.interval, _utc(first_ms), _utc(end_ms))
        report.stored_before = len(stored)
        runs = missing_runs(grid, stored, self.step_ms, self.page_limit)
        log.info("%s %s: %d bars in [%s, %s), %d stored already, %d missing, asked for in %d run(s)", symbol,
                 self.interval, len(grid), _iso(report.start), _iso(report.end), len(stored),
                 len(np.setdiff1d(grid, stored)), len(runs))
        try:
            for run_start, run_end in runs:
                self._page_run(run, run_start, run_end)
            self._flush(run)
        except BaseException:
            if run.buffer and not run.store_failed:  # keep what was fetched: a rerun resumes after it
                log.warning("%s %s: stopping; storing the %d rows fetched so far first", symbol, self.interval,
                            len(run.buffer))
                try:
                    self._flush(run)
                except Exception as error:  # the original failure is the one to report
                    log.warning("%s %s: could not store them (%s)", symbol, self.interval, error)
            raise
        finally:
            report.weight_waits = self.pacer.waits - waits_before
            report.rate_limit_waits = self.rate_limit_waits - limited_before
            report.max_used_weight = self.pacer.max_used
            report.seconds = self.clock() - began
        present = np.union1d(stored, np.asarray(run.fetched, dtype=np.int64))
        self._account_gaps(report, grid, present, np.asarray(run.bad_open_ms, dtype=np.int64))
        log.info("%s", report.line())
        for gap in report.gaps[:SHOWN_GAPS]:
            log.info("gap in the exchange's history: %s", gap.describe())
        if len(report.gaps) > SHOWN_GAPS:
            log.info("... and %d more gaps", len(report.gaps) - SHOWN_GAPS)
        return report

    # -- paging ------------------------------------------------------------------------------------------
    def _page_run(self, run: "_SymbolRun", run_start: int, run_end: int) -> None:
        """Page [run_start, run_end) from the exchange into the run's buffer."""
        report = run.report
        cursor = run_start
        while cursor < run_end:
            page = self._patiently(partial(self._request_page, report.symbol, cursor, run_end))
            report.pages += 1
            report.rows_received += len(page.klines) + page.unparsed_rows
            if page.unparsed_rows:
                report.bad_rows["unparsable"] += page.unparsed_rows
            newest = None
            for kline in page.klines:
                open_ms = _epoch_ms(kline.open_time)
                problem = kline_problem(kline, cursor, run_end, self.step_ms, run.now_ms)
                if problem is not None:
                    report.bad_rows[problem] += 1
                    if cursor <= open_ms < run_end:
                        run.bad_open_ms.append(open_ms)
                else:
                    run.buffer.append(kline)
                    run.fetched.append(open_ms)
                if cursor <= open_ms < run_end:
                    newest = open_ms if newest is None else max(newest, open_ms)
            if report.pages % PROGRESS_EVERY_PAGES == 0:
                log.info("%s %s: %d pages, %d rows received, up to %s", report.symbol, self.interval, report.pages,
                         report.rows_received, _iso(_utc(newest)) if newest is not None else _iso(_utc(cursor)))
            if len(run.buffer) >= self.rows_per_commit:
                self._flush(run)
            short = len(page.klines) + page.unparsed_rows < self.page_limit
            if newest is None or short:
                return  # the exchange has nothing more in this run (a gap up to its end, or the end reached)
            cursor = newest + 1  # Binance: the first open time >= startTime

    def _request_page(self, symbol: str, cursor: int, run_end: int) -> KlinePage:
        self.pacer.before(KLINES_WEIGHT)
        page = self.client.kline_page(symbol, self.interval, _utc(cursor), _utc(run_end - 1), self.page_limit)
        self.pacer.observe()
        return page

    def _patiently(self, call: Callable[[], T]) -> T:
        """`call()`, waiting out 429/418 Retry-After (up to `max_rate_limit_wait_s`) and asking again."""
        while True:
            try:
                return call()
            except RateLimited as error:
                wait = max(0.0, error.until - time.monotonic())  # `until` is on time.monotonic (http.HostCooldowns)
                if wait > self.max_rate_limit_wait_s:
                    log.error("%s; longer than %g s: stopping. Run the same command again after that, it resumes",
                              error, self.max_rate_limit_wait_s)
                    raise
                self.rate_limit_waits += 1
                log.warning("%s; waiting %.1f s, then asking again", error, wait)
                self.sleep(wait + RETRY_AFTER_MARGIN_S)

    def _flush(self, run: "_SymbolRun") -> None:
        if not run.buffer:
            return
        report = run.report
        run.store_failed = True
        written = self.store.append_new(report.symbol, self.interval, run.buffer)
        run.store_failed = False
        report.rows_written += written
        report.already_stored += len(run.buffer) - written
        newest = max(kline.open_time for kline in run.buffer)
        run.buffer = []
        log.info("%s %s: %d pages, %d rows stored (%d already there), up to %s", report.symbol, self.interval,
                 report.pages, report.rows_written, report.already_stored, _iso(newest))

    # -- after the run -------------------------------------------------------------------------------------
    def _account_gaps(self, report: SymbolReport, grid: np.ndarray, present: np.ndarray, bad: np.ndarray) -> None:
        """Gaps: grid points missing between the first and last bar present, not explained by a bad row."""
        present = present[(present >= grid[0]) & (present <= grid[-1])]
        if not len(present):
            log.info("%s %s: the exchange has no bar in this range", report.symbol, self.interval)
            return
        report.first_bar, report.last_bar = _utc(int(present[0])), _utc(int(present[-1]))
        if present[0] > grid[0]:
            log.info("%s %s: the exchange's first bar in the range opens at %s (none before: listing, or an outage)",
                     report.symbol, self.interval, _iso(report.first_bar))
        if present[-1] < grid[-1]:
            log.info("%s %s: the exchange has no bar after %s in the range", report.symbol, self.interval,
                     _iso(report.last_bar))
        inside = grid[(grid > present[0]) & (grid < present[-1])]
        missing = np.setdiff1d(np.setdiff1d(inside, present, assume_unique=True), bad)
        for first, last in _consecutive(missing, self.step_ms):
            report.gaps.append(HistoryGap(report.symbol, self.interval, _utc(first), _utc(last + self.step_ms),
                                          (last - first) // self.step_ms + 1))


@dataclass
class _SymbolRun:
    """The moving parts of one symbol's backfill."""

    report: SymbolReport
    now_ms: int  # the exchange's time when the symbol started: later bars are not closed
    buffer: list[Kline] = field(default_factory=list)
    fetched: list[int] = field(default_factory=list)  # open times of the valid bars received
    bad_open_ms: list[int] = field(default_factory=list)
    store_failed: bool = False


def kline_problem(kline: Kline, start_ms: int, end_ms: int, step_ms: int, now_ms: int) -> str | None:
    """Why a bar must not be stored (None: it is fine). Asked for open times in [start_ms, end_ms)."""
    open_ms = _epoch_ms(kline.open_time)
    if not start_ms <= open_ms < end_ms or open_ms % step_ms:
        return "outside the asked range"
    numbers = (kline.open, kline.high, kline.low, kline.close, kline.volume, kline.quote_volume, kline.trades,
               kline.taker_buy_volume, kline.taker_buy_quote_volume)
    if any(value is None for value in numbers) or kline.close_time is None:
        return "non-numeric"
    if min(kline.open, kline.high, kline.low, kline.close) <= 0:  # type: ignore[type-var]
        return "price <= 0"
    if kline.high < kline.low:  # type: ignore[operator]
        return "high < low"
    if not (kline.low <= kline.open <= kline.high and kline.low <= kline.close <= kline.high):  # type: ignore[operator]
        return "open/close outside [low, high]"
    if min(kline.volume, kline.quote_volume, kline.trades, kline.taker_buy_volume,  # type: ignore[type-var]
           kline.taker_buy_quote_volume) < 0:
        return "negative volume"
    if _epoch_ms(kline.close_time) >= now_ms:
        return "not closed yet"
    return None


def missing_runs(grid: np.ndarray, stored: np.ndarray, step_ms: int,
                 page_limit: int = KLINES_MAX_LIMIT) -> list[tuple[int, int]]:
    """[start, end) spans (epoch ms) covering the grid's open times not in `stored`.

    Consecutive missing bars form one span; spans less than a page apart are merged (paging through
    the stored bars between them costs no more than a request of its own).
    """
    missing = np.setdiff1d(grid, stored)
    runs: list[tuple[int, int]] = []
    for first, last in _consecutive(missing, step_ms):
        if runs and first - runs[-1][1] < page_limit * step_ms:
            runs[-1] = (runs[-1][0], last + step_ms)
        else:
            runs.append((first, last + step_ms))
    return runs


def _consecutive(values: np.ndarray, step: int) -> list[tuple[int, int]]:
    """(first, last) of each stretch of sorted `values` spaced exactly `step` apart."""
    if not len(values):
        return []
    breaks = np.flatnonzero(np.diff(values) != step)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(values) - 1]])
    return [(int(values[s]), int(values[e])) for s, e in zip(starts, ends)]


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _utc(epoch_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=epoch_ms)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    text = moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return (text[:-3] if text.endswith(":00") else text) + "Z"
