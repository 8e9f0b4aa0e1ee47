"""One micro-batch into Delta: each tick once in raw_data whatever its lateness, each refused record
once in quarantine, and a replayed batch (same batch id after a crash) writes nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from btcstream.clients.spark import DELTA_EXTENSION
from btcstream.ingest.tick import Tick
from btcstream.streaming.delta_batches import RAW_STRATEGIES, DeltaBatchWriter
from helpers.ticks import kafka_frame, random_ticks

pytestmark = pytest.mark.spark

BAD_RECORDS = [b"{not json", b"\xff\xfe", None]


def values(ticks: list[Tick]) -> list[bytes | None]:
    return [t.to_json() for t in ticks]


def stored(spark, url: str):
    return spark.read.format("delta").load(url)


@pytest.mark.parametrize("strategy", RAW_STRATEGIES)
def test_batches_store_every_tick_once_in_any_order_and_replays_write_nothing(spark, tmp_path: Path,
                                                                              strategy: str) -> None:
    assert DELTA_EXTENSION in spark.conf.get("spark.sql.extensions", ""), \
        "Delta Lake is not on the classpath: run `btcstream infra resolve`"
    ticks = sorted(random_ticks(300), key=lambda t: t.event_time)  # 600 ticks over three hours
    late, early = ticks[:200], ticks[200:]  # the early-hour ticks arrive last: hours out of order
    writer = DeltaBatchWriter(raw_url=f"file://{tmp_path}/raw_data", quarantine_url=f"file://{tmp_path}/quarantine",
                              app_id="test-writer", raw_strategy=strategy)

    first = writer(kafka_frame(spark, values(early) + BAD_RECORDS), 0)
    assert (first.records, first.quarantined, first.valid, first.inserted) == (403, 3, 400, 400)

    replay = writer(kafka_frame(spark, values(early) + BAD_RECORDS), 0)  # the same batch after a crash
    assert (replay.quarantined, replay.inserted) == (3, 0)

    # Batch 1: hours older than everything stored so far, plus 50 ticks already stored.
    second = writer(kafka_frame(spark, values(late + early[:50] + late[:10])), 1)
    assert (second.valid, second.inserted, second.duplicates) == (260, 200, 60)

    raw = stored(spark, writer.raw_url)
    assert raw.count() == len(ticks)
    assert raw.select("symbol", "event_time").distinct().count() == len(ticks)
    quarantine = stored(spark, writer.quarantine_url)
    assert quarantine.count() == len(BAD_RECORDS)
    assert quarantine.select("offset").distinct().count() == len(BAD_RECORDS)
    assert quarantine.where("reason IS NULL").count() == 0
