"""JSON over HTTP for the market-data sources: timeouts, classified retries, per-host rate-limit bans.

What each answer means, and what this module does about it:

- 2xx with a JSON body: returned.
- 2xx with a non-JSON body (a CDN's HTML page): `BadResponse`, not retried (the caller decides).
- 429 / 418: the host's `Retry-After` is recorded and `RateLimited` is raised; until it has passed,
  every call to that host (any client, any path) raises `RateLimited` again *without* touching the
  network, because calling sooner turns a 429 into a 418 ban.
- 451 / 403: `AccessDenied` naming the cause (restricted location, firewall); never retried.
- other 4xx: `BadResponse` carrying the API's own code and message; never retried.
- 5xx, timeouts, refused connections: retried up to `MAX_ATTEMPTS` with capped exponential backoff
  and jitter, then `SourceUnavailable`.

Not for: parsing payloads (each source module normalises its own) or scheduling polls.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import requests

from btcstream.errors import AccessDenied, BadResponse, RateLimited, SourceUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.05  # a little over a TCP retransmit window
READ_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 4  # first try + 3 retries, for 5xx and timeouts only
BACKOFF_BASE_S = 0.25  # delay before retry n is about BACKOFF_BASE_S * 2**n ...
BACKOFF_CAP_S = 4.0  # ... but never more than this
DEFAULT_RETRY_AFTER_S = {429: 60.0, 418: 120.0}  # when the header is missing (418: Binance's shortest ban)
ACCESS_DENIED_CAUSES = {
    451: "restricted location: the API refuses requests from this country or cloud region "
         "(Binance answers 451 to US and some cloud IPs); use an allowed network or another base URL",
    403: "forbidden by the API's firewall (WAF) or an invalid/unauthorised API key; "
         "check the key and the network you are calling from",
}


@dataclass(frozen=True)
class ApiResponse:
    """A decoded JSON answer with the headers it came with."""

    data: Any
    headers: Mapping[str, str]
    status: int


class HostCooldowns:
    """Per-host "do not call before" times, from Retry-After; shared by every client by default."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def ban(self, host: str, seconds: float, status: int) -> float:
        """Record that `host` may not be called for `seconds`; returns the monotonic end time."""
        until = self._clock() + seconds
        with self._lock:
            previous = self._until.get(host, (0.0, 0))[0]
            self._until[host] = (max(until, previous), status)
            return self._until[host][0]

    def remaining(self, host: str) -> tuple[float, int]:
        """Seconds left before `host` may be called (0 when free) and the status that banned it."""
        with self._lock:
            until, status = self._until.get(host, (0.0, 0))
        return max(0.0, until - self._clock()), status

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


SHARED_COOLDOWNS = HostCooldowns()


@dataclass
class JsonHttpClient:
    """GETs JSON from one base URL with the behaviour described in the module docstring."""

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold an API key: never logged
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    max_attempts: int = MAX_ATTEMPTS
    cooldowns: HostCooldowns = field(default_factory=lambda: SHARED_COOLDOWNS)
    sleep: Callable[[float], None] = time.sleep
    jitter: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        parsed = urlparse(self.base_url)
        self.host = parsed.netloc  # host[:port]: the unit Retry-After applies to
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": "btcstream"})
        self._session.headers.update(self.headers)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> ApiResponse:
        """GET base_url + path; raises a `SourceError` subclass for every answer that is not usable JSON."""
        url = self.base_url.rstrip("/") + path
        for attempt in range(1, self.max_attempts + 1):
            self._refuse_while_banned(path)
            try:
                response = self._session.get(url, params=params, timeout=(self.connect_timeout_s, self.read_timeout_s))
            except (requests.Timeout, requests.ConnectionError) as error:
                problem = f"{type(error).__name__} after {self.read_timeout_s:g} s read / {self.connect_timeout_s:g} s connect timeout"
                self._retry_or_raise(path, attempt, problem)
                continue
            status = response.status_code
            if status in (429, 418):
                raise self._record_ban(path, response)
            if status in ACCESS_DENIED_CAUSES:
                raise AccessDenied(self.host, path, status, ACCESS_DENIED_CAUSES[status])
            if status >= 500:
                self._retry_or_raise(path, attempt, f"HTTP {status} {_excerpt(response.text)}")
                continue
            if status >= 400:
                raise BadResponse(self.host, path, f"HTTP {status} rejected the request: {_excerpt(response.text)}")
            try:
                data = response.json()
            except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the decoder's stack
                kind = response.headers.get("Content-Type", "no content type")
                raise BadResponse(self.host, path, f"HTTP {status} body is not JSON ({kind}): {_excerpt(response.text)}") from None
            return ApiResponse(data=data, headers=response.headers, status=status)  # case-insensitive
        raise AssertionError("unreachable: the last attempt either returns or raises")

    def close(self) -> None:
        self._session.close()

    def _refuse_while_banned(self, path: str) -> None:
        remaining, status = self.cooldowns.remaining(self.host)
        if remaining > 0:
            raise RateLimited(self.host, path, status, remaining, time.monotonic() + remaining)

    def _record_ban(self, path: str, response: requests.Response) -> RateLimited:
        status = response.status_code
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        if seconds is None:
            seconds = DEFAULT_RETRY_AFTER_S[status]
        until = self.cooldowns.ban(self.host, seconds, status)
        log.warning("%s answered %d on %s: not calling it again for %g s (Retry-After)", self.host, status, path, seconds)
        return RateLimited(self.host, path, status, seconds, until)

    def _retry_or_raise(self, path: str, attempt: int, problem: str) -> None:
        if attempt >= self.max_attempts:
            raise SourceUnavailable(self.host, path, f"{problem}; gave up after {attempt} attempts")
        delay = backoff_delay(attempt, self.jitter)
        log.info("%s%s: %s; retry %d/%d in %.2f s", self.host, path, problem, attempt, self.max_attempts - 1, delay)
        self.sleep(delay)


def backoff_delay(attempt: int, jitter: random.Random) -> float:
    """Delay before retry `attempt` (1-based): capped exponential, "equal jitter" (half fixed, half random).

    delay = c / 2 + U(0, c / 2), with c = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)).
    """
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return ceiling / 2 + jitter.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP-date), or None when absent/invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
