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

Not for: real rate limiting (the server counts request weight itself, see `server`).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

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
