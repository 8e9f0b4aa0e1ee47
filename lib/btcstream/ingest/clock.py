"""The exchange's clock as seen from here: offset and rate measured with `GET /api/v3/time`.

Like careful Binance clients, the producer stamps observations on the exchange's clock, not its own.
Each sync takes the midpoint of the request's round trip as the moment the server read its clock.
The rate (exchange seconds per local second) is measured too, from samples at least
`RATE_BASELINE_S` apart: live it is 1 (estimates within `RATE_SNAP` of 1 are taken as exactly 1),
and against the local exchange replaying at `--speed 3600` it is 3600, so one code path schedules
polls in exchange time for both. Not for: scheduling itself (see `producer`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Callable

log = logging.getLogger(__name__)

RATE_BASELINE_S = 0.2  # least local seconds between the two samples of a rate estimate
RATE_WINDOW_S = 30.0  # the rate is measured over the samples of the last RATE_WINDOW_S local seconds
RATE_SNAP = 0.02  # |rate - 1| below this is clock noise: take the rate as exactly 1
SAMPLES_KEPT = 64
JUMP_TOLERANCE_S = 1.0  # a sample further than this (and than round-trip noise) from the model resets it


class ExchangeClock:
    """Maps local monotonic time onto the exchange's clock: exchange = anchor + rate * (local - local_anchor)."""

    def __init__(self, read_server_time: Callable[[], datetime], monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._read = read_server_time
        self._monotonic = monotonic
        self._sleep = sleep
        self._samples: deque[tuple[float, float]] = deque(maxlen=SAMPLES_KEPT)  # (local s, exchange epoch s)
        self._lock = threading.Lock()
        self.rate = 1.0
        self._rate_measured = False
        self.last_sync_local: float | None = None
        self.round_trip_s: float | None = None

    @property
    def synced(self) -> bool:
        return bool(self._samples)

    def calibrate(self) -> None:
        """Two syncs `RATE_BASELINE_S` apart: offset and rate, before the first poll is scheduled."""
        self.sync()
        self._sleep(RATE_BASELINE_S)
        self.sync()

    def sync(self) -> None:
        """Read the server's clock once and update offset and rate (raises the source's errors)."""
        before = self._monotonic()
        server = self._read()
        after = self._monotonic()
        sample = ((before + after) / 2, server.timestamp())
        with self._lock:
            if self._rate_measured and self._jumped(sample, after - before):
                log.info("exchange clock jumped (new replay speed or restarted server): measuring it afresh")
                self._samples.clear()
                self._rate_measured = False
            self._samples.append(sample)
            self.round_trip_s = after - before
            self.last_sync_local = after
            # a long baseline makes round-trip noise negligible; a bounded one follows a change of replay speed
            while len(self._samples) > 2 and sample[0] - self._samples[1][0] >= RATE_WINDOW_S:
                self._samples.popleft()
            oldest = self._samples[0]
            if sample[0] - oldest[0] >= RATE_BASELINE_S:
                rate = (sample[1] - oldest[1]) / (sample[0] - oldest[0])
                self.rate = 1.0 if abs(rate - 1.0) < RATE_SNAP else max(rate, 1e-9)
                self._rate_measured = True

    def _jumped(self, sample: tuple[float, float], round_trip_s: float) -> bool:
        """True when `sample` is further from the model's prediction than the round trip can explain."""
        anchor_local, anchor_exchange = self._samples[-1]
        predicted = anchor_exchange + self.rate * (sample[0] - anchor_local)
        tolerance = max(JUMP_TOLERANCE_S, self.rate * (round_trip_s + 0.05 * (sample[0] - anchor_local)))
        return abs(sample[1] - predicted) > tolerance

    def at(self, local: float) -> datetime:
        """The exchange time at local monotonic time `local` (aware UTC)."""
        with self._lock:
            if not self._samples:
                raise RuntimeError("ExchangeClock used before its first sync")
            anchor_local, anchor_exchange = self._samples[-1]
            rate = self.rate
        return datetime.fromtimestamp(anchor_exchange + rate * (local - anchor_local), tz=timezone.utc)

    def now(self) -> datetime:
        return self.at(self._monotonic())

    def wall_seconds_until(self, moment: datetime) -> float:
        """Local seconds until the exchange clock shows `moment` (negative when already past)."""
        return (moment - self.now()).total_seconds() / self.rate

    def local_span(self, exchange_span: timedelta) -> float:
        """How many local seconds an exchange-time span lasts."""
        return exchange_span.total_seconds() / self.rate


def calibrate_until_stopped(clock: ExchangeClock, url: str, stop: threading.Event) -> bool:
    """Measure the exchange clock, waiting (1 s doubling to 30 s, or a 429's Retry-After) while the
    exchange at `url` is unreachable; False if `stop` was set first. Both feeds start with it."""
    from btcstream.errors import BadResponse, RateLimited, SourceUnavailable

    delay = 1.0
    while not stop.is_set():
        try:
            clock.calibrate()
            return True
        except (RateLimited, SourceUnavailable, BadResponse) as error:
            wait = max(delay, error.retry_after_s) if isinstance(error, RateLimited) else delay
            log.warning("cannot read the exchange clock at %s (%s); retrying in %.0f s", url, error, wait)
            stop.wait(wait)
            delay = min(30.0, delay * 2)
    return False
