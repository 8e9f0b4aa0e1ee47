"""The WebSocket feed's counters and its status document `<state_dir>/feed/<quotes topic>.json`.

The producer rewrites the document every few seconds (write to a temporary file, then an atomic
rename: a reader never sees half a document) and once more when it stops; `btcstream status`
reads it with `read_feed_status(settings)`. Layout (version 1):

    {"version": 1, "feed": "websocket", "state": "running" | "stopped",
     "started_at": iso, "written_at": iso, "url": ws base URL, "symbols": [...],
     "topic": quotes topic, "trades_topic": ...,
     "counts": {"received": {"quote", "ticker", "trade"}, "sent": {"quote", "trade", "trade_rest"},
                "conflated": n, "held": n, "overflowed": {"quote", "trade"},
                "duplicates": {"quote", "ticker", "trade", "trade_rest"}, "malformed": {reason: n}},
     "kafka": {"acknowledged", "failed", "resent", "pending"},
     "buffer": {"capacity", "used"},
     "connections": {"open", "attempts", "failed_attempts", "handovers", "pings_received",
                     "reconnects": {reason: n}},
     "gap_fill": {"requests", "errors": {..}, "weight_waits"},
     "gaps": {"total": {kind: n}, "unfilled_trade_gaps", "missing_trade_ids",
              "recent": [{"symbol", "kind", "from_id", "to_id", "start", "end", "duration_s", "filled",
                          "missing", "recovered", "unrecoverable", "reason"}, ...]},
     "update_id_jumps": {symbol: {"count", "ids_skipped", "last": {"from_id", "to_id", "at"}}},
     "last_message": {symbol: iso}, "latency_ms": {"quote" | "trade": {"n", "p50", "p99", "max"}}}

The counts add up: received.quote = sent.quote + conflated + overflowed.quote + held (`held`: quotes
waiting for the end of their conflation interval, 0 once stopped); received.trade = sent.trade +
overflowed.trade (overflowed trades are fetched again from REST, counted in sent.trade_rest).
"sent" means handed to the Kafka sender; Kafka's acknowledgements are under "kafka". Duplicates
(overlap of two connections, trades already filled) and malformed frames are counted apart.

Not for: deciding anything (see `ws_feed` and `gaps`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from btcstream.settings import Settings

log = logging.getLogger(__name__)

FEED_STATUS_VERSION = 1
LATENCY_SAMPLES_KEPT = 20_000  # per kind: the most recent frame-received -> Kafka-acknowledged latencies


def feed_status_path(settings: Settings) -> Path:
    """`<state_dir>/feed/<quotes topic>.json`."""
    return Path(settings.state_dir) / "feed" / f"{settings.topic}.json"


def write_feed_status(settings: Settings, document: dict[str, Any]) -> Path:
    """Replace the feed-status document atomically; returns its path."""
    path = feed_status_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as sink:
            json.dump(document, sink, indent=1, sort_keys=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_feed_status(settings: Settings) -> dict[str, Any] | None:
    """The last document the producer wrote for `settings.topic`, or None when there is none (or it is unreadable)."""
    path = feed_status_path(settings)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("cannot read the feed status %s: %s", path, error)
        return None
    return document if isinstance(document, dict) else None


class LatencyRecorder:
    """Frame received -> Kafka acknowledged, in ms, per kind (written from Kafka's I/O thread)."""

    def __init__(self, kept: int = LATENCY_SAMPLES_KEPT) -> None:
        self._samples: dict[str, deque[float]] = {"quote": deque(maxlen=kept), "trade": deque(maxlen=kept)}
        self._lock = threading.Lock()

    def record(self, kind: str, milliseconds: float) -> None:
        with self._lock:
            self._samples[kind].append(milliseconds)

    def samples(self, kind: str) -> list[float]:
        with self._lock:
            return list(self._samples[kind])

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        result: dict[str, dict[str, float | int | None]] = {}
        for kind in self._samples:
            values = sorted(self.samples(kind))
            result[kind] = {"n": len(values), "p50": _quantile(values, 0.50), "p99": _quantile(values, 0.99),
                            "max": round(values[-1], 3) if values else None}
        return result


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


@dataclass
class FeedCounters:
    """What the feed did with every message (see the module docstring for how they add up)."""

    received: Counter[str] = field(default_factory=Counter)  # quote, ticker, trade
    sent: Counter[str] = field(default_factory=Counter)  # quote, trade, trade_rest
    conflated: int = 0
    overflowed: Counter[str] = field(default_factory=Counter)  # quote, trade
    duplicates: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)  # by reason
    last_message: dict[str, float] = field(default_factory=dict)  # symbol -> epoch s
    coingecko_errors: int = 0
    clock_sync_errors: int = 0
    started_at: float = field(default_factory=lambda: datetime.now(timezone.utc).timestamp())

    def counts_document(self, held: int) -> dict[str, Any]:
        return {"received": _kinds(self.received, ("quote", "ticker", "trade")),
                "sent": _kinds(self.sent, ("quote", "trade", "trade_rest")),
                "conflated": self.conflated, "held": held,
                "overflowed": _kinds(self.overflowed, ("quote", "trade")),
                "duplicates": dict(self.duplicates), "malformed": dict(self.malformed)}

    def last_message_document(self) -> dict[str, str]:
        return {symbol: iso_from_epoch(moment) for symbol, moment in sorted(self.last_message.items())}


def _kinds(counts: Counter[str], kinds: tuple[str, ...]) -> dict[str, int]:
    return {kind: counts.get(kind, 0) for kind in kinds}


def iso_from_epoch(epoch_s: float) -> str:
    """Epoch seconds as UTC ISO-8601 with offset."""
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat()
