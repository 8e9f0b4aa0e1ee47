"""What the replay exchange really sent: every bookTicker update id and aggTrade id written to a connection.

The exchange's own `state()` gives only the first and last id each stream sent, not which ids in
between went out (nobody subscribed while the producer was dead, a silenced connection gets nothing,
a gap fault skips ids). `SentLedger.attach(exchange)` wraps the stream server's delivery step, in
this process, and records, per (symbol, kind), each id written to at least one connection and the
moment (time.monotonic()) it was written, so the checker knows exactly what a complete pipeline
had to store. It reads the stream server's private subscriber state (the same rules `_deliver`
applies: silenced connections get nothing, a connection with a gap to skip misses the first ids).

Not for: changing what the exchange sends.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

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
        streams = exchange.streams
        deliver = streams._deliver

        def recording_deliver(symbol: str, kind: str, frames: list[tuple[int, bytes]]) -> None:
            if kind in KINDS and frames:
                self._record(symbol, KINDS[kind], self._written_ids(streams, symbol, kind, frames))
            deliver(symbol, kind, frames)

        streams._deliver = recording_deliver  # type: ignore[method-assign]

    @staticmethod
    def _written_ids(streams: Any, symbol: str, kind: str, frames: list[tuple[int, bytes]]) -> list[int]:
        """The ids of `frames` that `_deliver` writes to at least one connection."""
        written: set[int] = set()
        for client in streams._subscribers[streams._names[(symbol, kind)]]:
            if client.silenced_until is not None:
                continue
            skip = client.skips.get((kind, symbol)) or 0
            written.update(n for n, _ in frames[skip:])
            if len(written) == len(frames):
                break
        return sorted(written)

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
