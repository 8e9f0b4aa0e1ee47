"""Faults the local exchange injects on request, so clients can rehearse every failure offline.

A `Fault` matches requests by API (`binance`, `coingecko` or `any`) and path prefix, hits the next
`count` of them (None: every one), each with probability `probability`. Kinds:

- `429`, `418`: rate limit / IP ban with `Retry-After: retry_after_s`; the server then really holds
  the ban, and a request arriving sooner is answered 418 (as Binance escalates).
- `500`, `503`: a server error with the API's JSON error body.
- `timeout`: the answer is held back for `delay_s` (longer than a client's read timeout).
- `html`: an HTML error page (status `status`, 200 by default) instead of JSON.
- `451`, `403`: restricted location / firewall block.
- `null_field`, `missing_field`: the JSON answer arrives with `field` set to null / removed.

A `StreamFault` does the same for the WebSocket streams (see `streams`): it hits the open
connections now (`target="current"`, the `connections` oldest, None = all) or the next `connections`
ones to connect (`target="next"`). Kinds:

- `abrupt_close`: the TCP connection is reset (RST), no close frame.
- `close_1006`: the TCP connection is closed (FIN) without a close frame: the client sees code 1006.
- `silence`: half-open: no data, no pings, nothing read (so no pongs) for `duration_s` (None: until cleared).
- `server_shutdown`: `{"e":"serverShutdown","E":..}`, data keeps flowing, close (1001) `delay_s` later.
- `cut_24h`: the 24 h cut now: close code 1001.
- `malformed`: `frames` extra frames that are not valid messages (`variant`: invalid_json, wrong_types,
  truncated, or mixed = those three in turn).
- `update_id_gap`, `trade_id_gap`: the connection misses the next `skip` bookTicker updates / aggTrades
  of `symbol` (None: every symbol); the trades stay on the tape, so `GET /api/v3/aggTrades` fills the gap.

Not for: real rate limiting (the server counts request weight itself, see `server`).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

STREAM_FAULT_KINDS = ("abrupt_close", "close_1006", "silence", "server_shutdown", "cut_24h", "malformed",
                      "update_id_gap", "trade_id_gap")
MALFORMED_VARIANTS = ("invalid_json", "wrong_types", "truncated")
STREAM_TARGETS = ("current", "next")
FAULT_KINDS = ("429", "418", "500", "503", "timeout", "html", "451", "403", "null_field", "missing_field")
APIS = ("binance", "coingecko", "any")


@dataclass
class Fault:
    """One injected fault rule (see the module docstring)."""

    kind: str
    api: str = "any"
    path: str = "/"  # path prefix, e.g. "/api/v3/ticker/bookTicker"
    count: int | None = 1  # requests it still hits; None = unlimited
    probability: float = 1.0
    retry_after_s: float = 1.0
    delay_s: float = 30.0
    status: int = 200  # for `html`
    field: str | None = None  # for `null_field` / `missing_field`

    def __post_init__(self) -> None:
        self.kind = str(self.kind)
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if self.api not in APIS:
            raise ValueError(f"unknown api {self.api!r}; expected one of {', '.join(APIS)}")
        if self.kind in ("null_field", "missing_field") and not self.field:
            raise ValueError(f"a {self.kind} fault needs `field`")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultPlan:
    """The active faults, consumed thread-safely by the request handlers."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = rng or random.Random()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, api: str, path: str) -> Fault | None:
        """The first fault that applies to this request (consuming one of its `count`), or None."""
        with self._lock:
            for fault in self._faults:
                if fault.api not in (api, "any") or not path.startswith(fault.path):
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                return fault
        return None


@dataclass
class StreamFault:
    """One injected WebSocket fault (see the module docstring); JSON body of POST /_control/ws-faults."""

    kind: str
    target: str = "current"  # "current": open connections; "next": connections still to come
    connections: int | None = None  # how many (oldest first for "current"); None = all open / 1 for "next"
    symbol: str | None = None  # gaps: which symbol (None: every symbol)
    skip: int = 5  # gaps: how many update / trade ids the connection misses
    frames: int = 3  # malformed: how many bad frames
    variant: str = "mixed"  # malformed: one of MALFORMED_VARIANTS, or "mixed"
    duration_s: float | None = None  # silence: how long (None: until DELETE /_control/ws-faults)
    delay_s: float = 5.0  # server_shutdown: wall seconds from the event to the close

    def __post_init__(self) -> None:
        if self.kind not in STREAM_FAULT_KINDS:
            raise ValueError(f"unknown stream fault kind {self.kind!r}; expected one of {', '.join(STREAM_FAULT_KINDS)}")
        if self.target not in STREAM_TARGETS:
            raise ValueError(f"unknown target {self.target!r}; expected one of {', '.join(STREAM_TARGETS)}")
        if self.connections is not None and int(self.connections) < 1:
            raise ValueError("connections must be >= 1 (or null for all)")
        if self.variant not in (*MALFORMED_VARIANTS, "mixed"):
            raise ValueError(f"unknown malformed variant {self.variant!r}; expected one of {', '.join(MALFORMED_VARIANTS)}, mixed")
        if int(self.skip) < 1 or int(self.frames) < 1:
            raise ValueError("skip and frames must be >= 1")
        if (self.duration_s is not None and self.duration_s < 0) or self.delay_s < 0:
            raise ValueError("duration_s and delay_s must be >= 0")
        self.symbol = self.symbol.upper() if self.symbol else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
