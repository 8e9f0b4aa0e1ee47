"""Delivering records to Kafka without loss or duplication: idempotent producer, an outbox, patient reconnects.

Ticks (quotes) go to `settings.topic`, trades (WebSocket feed) to `settings.trades_topic`; both keyed by symbol.

- The kafka-python producer is idempotent (`enable_idempotence`, `acks=all`, unlimited retries), so
  its own retries after a lost acknowledgement never write a record twice.
- A tick handed to `publish` is *accepted*: it stays ours until Kafka acknowledges it. When the client
  cannot take it (no broker for `MAX_BLOCK_MS`) it stays in the outbox; when a delivery fails for any
  other reason than a rejection of the record (e.g. it expired: broker away longer than
  `DELIVERY_TIMEOUT_MS`) it goes back in and is sent again later, which can duplicate a record whose
  outcome was unknown but never loses one. Records Kafka rejects for good (too large, not authorised)
  are counted as failed and logged, never dropped silently.
- A broker that is down at start: `connect` waits and retries with a clear log line.
- The topics are created when missing, with the partitions and retention from settings.

Not for: building ticks or pacing polls (see `producer`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import (ClusterAuthorizationFailedError, InvalidRecordError, InvalidTopicError, KafkaError,
                          KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError,
                          TopicAlreadyExistsError, TopicAuthorizationFailedError, UnsupportedForMessageFormatError)

from btcstream.clients.kafka import kafka_python_options
from btcstream.settings import Settings
from btcstream.ingest.tick import Tick
from btcstream.ingest.trade import Trade

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_MS = 120_000  # then an undelivered record returns to the outbox
MAX_BLOCK_MS = 5_000  # how long send() may wait for metadata/buffer before the record stays in the outbox
REQUEST_TIMEOUT_MS = 15_000
BOOTSTRAP_TIMEOUT_MS = 5_000  # one connection attempt at start; `connect` then waits and tries again
RECONNECT_BACKOFF_S = (1.0, 30.0)  # first and longest wait between connection attempts at start
LINGER_MS = 5  # a poll's ticks for several symbols travel in one request
Record = Tick | Trade
# Kafka's answers that reject a record for good (resending cannot help): counted as failed.
PERMANENT_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, InvalidTopicError,
                    TopicAuthorizationFailedError, ClusterAuthorizationFailedError, UnsupportedForMessageFormatError)


@dataclass
class DeliveryCounts:
    """What happened to accepted records (updated from Kafka's I/O thread, hence the lock)."""

    sent: int = 0
    failed: int = 0  # rejected for good by Kafka (logged with the reason)
    resent: int = 0  # deliveries that failed without a rejection (e.g. expired) and went back to the outbox
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TickPublisher:
    """Sends ticks keyed by symbol to `settings.topic` and, with `with_trades`, trades to `settings.trades_topic`.

    `on_delivered(record)` (optional) is called from Kafka's I/O thread when a record is acknowledged.
    """

    def __init__(self, settings: Settings, stop: threading.Event | None = None,
                 delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS, with_trades: bool = False,
                 on_delivered: Callable[[Record], None] | None = None) -> None:
        self.settings = settings
        self.delivery_timeout_ms = delivery_timeout_ms
        self.counts = DeliveryCounts()
        self.topics = (settings.topic, settings.trades_topic) if with_trades else (settings.topic,)
        self._on_delivered = on_delivered
        self._stop = stop or threading.Event()
        self._outbox: deque[Record] = deque()
        self._in_flight = 0
        self._producer: KafkaProducer | None = None
        self._broker_down_logged = False

    @property
    def pending(self) -> int:
        """Accepted records not yet acknowledged (outbox + in flight)."""
        with self.counts.lock:
            return len(self._outbox) + self._in_flight

    def connect(self) -> bool:
        """Create the producer and the topic, waiting for the broker as long as needed; False if stopped first."""
        delay, longest = RECONNECT_BACKOFF_S
        while not self._stop.is_set():
            try:
                self._producer = self._new_producer()
                for topic in self.topics:
                    ensure_topic(self.settings, topic)
                log.info("connected to Kafka at %s, topic %s", self.settings.kafka_bootstrap, ", ".join(self.topics))
                return True
            except KafkaError as error:
                if self._producer is not None:
                    self._producer.close(timeout=1)
                    self._producer = None
                log.warning("Kafka at %s is not reachable (%s); retrying in %.0f s (Ctrl-C to stop)",
                            self.settings.kafka_bootstrap, type(error).__name__, delay)
                self._stop.wait(delay)
                delay = min(longest, delay * 2)
        return False

    def publish(self, record: Record) -> None:
        """Accept a tick or trade: it will reach Kafka (or be counted as failed), whatever the broker does meanwhile."""
        if isinstance(record, Trade) and self.settings.trades_topic not in self.topics:
            raise ValueError("this publisher was made for ticks only: pass with_trades=True to send trades")
        with self.counts.lock:
            self._outbox.append(record)
        self.drain()

    def drain(self) -> None:
        """Hand outbox records to the Kafka client until it cannot take more (broker unreachable)."""
        if self._producer is None and not self._replace_producer():
            return
        while True:
            with self.counts.lock:
                if not self._outbox:
                    return
                record = self._outbox.popleft()
                self._in_flight += 1
            topic = self.settings.trades_topic if isinstance(record, Trade) else self.settings.topic
            try:
                future = self._producer.send(topic, key=record.symbol.encode(), value=record.to_json())
            except KafkaTimeoutError as error:
                with self.counts.lock:
                    self._in_flight -= 1
                    self._outbox.appendleft(record)
                    held = len(self._outbox)
                if not self._broker_down_logged:
                    log.warning("Kafka at %s is not taking records (%s); holding %d accepted records and retrying",
                                self.settings.kafka_bootstrap, error, held)
                    self._broker_down_logged = True
                return
            except KafkaError as error:  # the client itself is broken (e.g. a fatal producer state)
                with self.counts.lock:
                    self._in_flight -= 1
                    self._outbox.appendleft(record)
                log.error("Kafka producer failed (%r): replacing it; accepted records are held", error)
                self._replace_producer()
                return
            future.add_callback(self._delivered, record)
            future.add_errback(self._undelivered, record)

    def flush(self, timeout_s: float) -> bool:
        """Deliver everything accepted, trying for up to `timeout_s`; True when nothing is left pending."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.drain()
            if self._producer is not None:
                try:
                    self._producer.flush(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                except KafkaTimeoutError:
                    pass
            if self.pending == 0:
                return True
            time.sleep(0.05)
        return self.pending == 0

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def _replace_producer(self) -> bool:
        """One attempt at a fresh producer (no waiting); True when there is one."""
        if self._producer is not None:
            self._producer.close(timeout=0)
            self._producer = None
        try:
            self._producer = self._new_producer()
        except KafkaError as error:
            log.warning("Kafka at %s is not reachable (%s); holding accepted records", self.settings.kafka_bootstrap, error)
            return False
        return True

    def _delivered(self, record: Record, metadata: object) -> None:
        with self.counts.lock:
            self._in_flight -= 1
            self.counts.sent += 1
        if self._on_delivered is not None:
            self._on_delivered(record)
        if self._broker_down_logged:
            log.info("Kafka at %s is taking records again", self.settings.kafka_bootstrap)
            self._broker_down_logged = False

    def _undelivered(self, record: Record, error: Exception) -> None:
        # Only a rejection of the record itself is final; any other failure (expiry while the broker was
        # away, a producer-epoch bump after sequence errors) goes back to the outbox: at worst a duplicate
        # of an unknown outcome, never a loss.
        retriable = not isinstance(error, PERMANENT_ERRORS)
        with self.counts.lock:
            self._in_flight -= 1
            if retriable:
                self._outbox.append(record)
                self.counts.resent += 1
            else:
                self.counts.failed += 1
        if retriable:
            log.warning("delivery of %s expired (%s): back in the outbox", describe(record), error)
        else:
            log.error("Kafka rejected %s for good: %r", describe(record), error)

    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, enable_idempotence=True, acks="all",
                             retries=2**31 - 1, delivery_timeout_ms=self.delivery_timeout_ms, max_block_ms=MAX_BLOCK_MS,
                             request_timeout_ms=min(REQUEST_TIMEOUT_MS, self.delivery_timeout_ms - LINGER_MS),
                             linger_ms=LINGER_MS,
                             max_in_flight_requests_per_connection=5, client_id="btcstream-producer",
                             bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                             **kafka_python_options(self.settings))


def describe(record: Record) -> str:
    """A record in a log line: `BTCUSDT 2025-02-14T10:58:31+00:00` (tick) or `BTCUSDT trade 26129`."""
    if isinstance(record, Trade):
        return f"{record.symbol} trade {record.trade_id}"
    return f"{record.symbol} {record.event_time}"


def ensure_topic(settings: Settings, topic: str | None = None) -> bool:
    """Create `topic` (default `settings.topic`) with the settings' partitions and retention if missing;
    True when it was created.

    Replication factor -1 takes the cluster's default (1 on the local single broker).
    """
    topic = topic or settings.topic
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS,
                             bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                             client_id="btcstream-admin", **kafka_python_options(settings))
    try:
        if topic in admin.list_topics():
            return False
        retention_ms = settings.topic_retention_hours * 3_600_000
        try:
            admin.create_topics({topic: {"num_partitions": settings.topic_partitions, "replication_factor": -1,
                                                  "configs": {"retention.ms": str(retention_ms)}}},
                                wait_for_metadata=True)
        except TopicAlreadyExistsError:
            return False
        log.info("created topic %s: %d partitions, retention %d h", topic, settings.topic_partitions,
                 settings.topic_retention_hours)
        return True
    finally:
        admin.close()
