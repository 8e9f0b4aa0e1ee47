"""Ticks for the streaming tests: a seeded random walk, as Kafka rows, and as a pandas frame."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pandas as pd

from btcstream.ingest import tick
from btcstream.streaming.job import KAFKA_SCHEMA

TICKS_START = datetime(2025, 2, 14, 9, 0, tzinfo=timezone.utc)


def random_ticks(count: int, seed: int = 7) -> list[tick.Tick]:
    """Ticks of two symbols over three hours from TICKS_START, shuffled, with a random walk of the mid."""
    rng = random.Random(seed)
    ticks = []
    for symbol, base in (("BTCUSDT", 97_000.0), ("ETHUSDT", 2_700.0)):
        mid = base
        for _ in range(count):
            mid *= math.exp(rng.gauss(0, 0.001))
            spread = rng.uniform(0.0, 2.0)
            moment = TICKS_START + timedelta(seconds=rng.uniform(0, 3 * 3600))
            ticks.append(tick.Tick(
                symbol=symbol, event_time=tick.iso_utc(moment), timestamp=tick.iso_utc(moment + timedelta(seconds=1)),
                bid_price=mid - spread / 2, ask_price=mid + spread / 2,
                bid_qty=rng.uniform(0, 5), ask_qty=rng.uniform(0, 5),
                volume_24h=rng.uniform(1e4, 2e4), high_24h=base * 1.02, low_24h=base * 0.98,
            ))
    rng.shuffle(ticks)
    return ticks


def kafka_frame(spark, values: list[bytes | None]):
    """A static DataFrame shaped like the job's Kafka source (topic "ticks", partition 0), one row per value."""
    now = datetime.now(timezone.utc)
    rows = [(b"k", value, "ticks", 0, offset, now) for offset, value in enumerate(values)]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def mixed_frame(spark, records: list[tuple[str, bytes | None]]):
    """A Kafka-shaped static frame of (topic, value) records, offsets per topic."""
    now = datetime.now(timezone.utc)
    offsets: dict[str, int] = {}
    rows = []
    for topic, value in records:
        offsets[topic] = offsets.get(topic, -1) + 1
        rows.append((b"k", value, topic, 0, offsets[topic], now))
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def to_pandas_ticks(ticks: list[tick.Tick]) -> pd.DataFrame:
    """The ticks as a pandas frame with `event_time` as aware UTC timestamps."""
    frame = pd.DataFrame([t.__dict__ for t in ticks])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True, format="ISO8601")
    return frame
