"""The readers and the JVM-free test tables agree with the Delta tables the streaming job writes.

An empty read is built from `btcstream.names`, and the reader tests write their tables with
`helpers.delta_tables`; a full read returns whatever the job wrote. This runs the job's own
writers (`DeltaBatchWriter` for raw_data and quarantine, `upsert_hours` for hourly_metrics) on a
tiny batch and checks both against the tables they produced, so a column added to a transform
cannot drift away from what the readers return when nothing is stored yet, nor from what the
reader tests read.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from pyspark.sql import functions as F

from btcstream.ingest.tick import Tick, iso_utc
from btcstream.ingest.trade import Trade
from btcstream.settings import Settings
from btcstream.storage.readers import TABLE_COLUMNS, read_dataset, read_quarantine
from btcstream.streaming.delta_batches import DeltaBatchWriter
from btcstream.streaming.hourly_upserts import upsert_hours
from helpers.delta_tables import SCHEMAS
from helpers.ticks import kafka_frame

pytestmark = pytest.mark.spark

INVALID_UTF8 = b"\xff\xfe"
MOMENT = datetime(2025, 2, 14, 9, 30, tzinfo=timezone.utc)


def stored_schema(url: str) -> pa.Schema:
    from deltalake import DeltaTable

    return pa.schema(DeltaTable(url).schema().to_arrow())


def types(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(field.name, str(field.type)) for field in schema]


def test_readers_and_test_tables_match_the_tables_the_job_writes(spark, tmp_path: Path) -> None:
    settings = Settings(storage_root=f"file://{tmp_path}/store")
    urls = {dataset: settings.storage_url(dataset) for dataset in TABLE_COLUMNS}
    tick = Tick(symbol="BTCUSDT", event_time=iso_utc(MOMENT), timestamp=iso_utc(MOMENT + timedelta(seconds=1)),
                bid_price=97_000.0, ask_price=97_000.5, bid_qty=1.0, ask_qty=2.0, volume_24h=18_000.0)
    writer = DeltaBatchWriter(urls["raw_data"], urls["quarantine"], app_id="test-table-columns",
                              trades_url=urls["trades"], trades_topic="trades")
    trade = Trade(symbol="BTCUSDT", trade_id=7, price=97_000.2, qty=0.5, quote_qty=48_500.1, trade_time=iso_utc(MOMENT),
                  buyer_is_maker=True, first_trade_id=10, last_trade_id=11, event_time=iso_utc(MOMENT),
                  received_at=iso_utc(MOMENT))
    frame = kafka_frame(spark, [tick.to_json(), INVALID_UTF8, trade.to_json()])
    frame = frame.withColumn("topic", F.when(F.col("offset") == 2, F.lit("trades")).otherwise(F.col("topic")))

    writer(frame, 0)
    upsert_hours(spark, urls["raw_data"], urls["hourly_metrics"], [("BTCUSDT", MOMENT.replace(minute=0))],
                 event_clock=MOMENT, allowed_lateness=timedelta(minutes=10), trades_url=urls["trades"])

    for dataset, url in urls.items():
        written = stored_schema(url)
        empty = read_dataset(Settings(storage_root=f"file://{tmp_path}/empty"), dataset, None,
                             empty_columns=TABLE_COLUMNS[dataset])
        assert list(empty.columns) == written.names, dataset
        assert types(SCHEMAS[dataset]) == types(written), dataset
        assert len(read_dataset(settings, dataset, None)) == 1, dataset
    assert list(read_quarantine(settings)["value"]) == [INVALID_UTF8]
