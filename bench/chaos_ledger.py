"""What the replay exchange really sent: every bookTicker update id and aggTrade id written to a connection.

The exchange's own `state()` gives only the first and last id each stream sent, not which ids in
between went out (nobody subscribed while the producer was dead, a silenced connection gets nothing,
a gap fault skips ids). `SentLedger.attach(exchange)` observes the stream server's deliveries, in
this process, and records, per (symbol, kind), each id written to at least one connection and the
moment (time.monotonic()) it was written, so the checker knows exactly what a complete pipeline
had to store (`StreamServer.observe`: silenced connections get nothing, a connection with a gap to
skip misses the first ids).

Not for: changing what the exchange sends.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from btcstream.exchange.server import ExchangeServer

KINDS = {"bookTicker": "quote", "aggTrade": "trade"}


class SentLedger:
    """Ids the exchange wrote to at least one connection, per (symbol, "quote" | "trade"), with when."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def attach(self, exchange: ExchangeServer) -> None:
        """Record every later delivery of `exchange`'s WebSocket streams."""
        exchange.streams.observe(self._on_delivered)

    def _on_delivered(self, symbol: str, kind: str, ids: list[int]) -> None:
        if kind in KINDS:
            self._record(symbol, KINDS[kind], ids)

    def _record(self, symbol: str, kind: str, ids: list[int]) -> None:
        if not ids:
            return
        now = time.monotonic()
        with self._lock:
            self._ids[(symbol, kind)].extend(ids)
            self._times[(symbol, kind)].extend([now] * len(ids))

    def sent(self, symbol: str, kind: str) -> dict[int, float]:
        """{id: first moment it was written} for one symbol and kind ("quote" or "trade")."""
        with self._lock:
            ids, times = list(self._ids[(symbol, kind)]), list(self._times[(symbol, kind)])
        result: dict[int, float] = {}
        for identifier, moment in zip(ids, times):
            result.setdefault(identifier, moment)
        return result

    def total(self) -> int:
        with self._lock:
            return sum(len(set(ids)) for ids in self._ids.values())
