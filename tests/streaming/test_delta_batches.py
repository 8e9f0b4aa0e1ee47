"""One micro-batch into Delta: each tick once in raw_data whatever its lateness, each refused record
once in quarantine, and a replayed batch (same batch id after a crash) writes nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable

from btcstream.clients.spark import DELTA_EXTENSION
from btcstream.ingest.tick import Tick
from btcstream.streaming.delta_batches import (RAW_STATS_COLUMNS, RAW_STRATEGIES, STATS_COLUMNS_PROPERTY,
                                                TRADES_STATS_COLUMNS, DeltaBatchWriter)
from helpers.ticks import kafka_frame, mixed_frame, random_ticks

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


def test_websocket_quotes_are_told_apart_by_update_id_and_trades_by_trade_id(spark, tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from btcstream.ingest.tick import iso_utc
    from btcstream.ingest.trade import Trade

    moment = datetime(2025, 2, 14, 10, 0, 0, 123000, tzinfo=timezone.utc)

    def quote(update_id: int, received: timedelta = timedelta(0)) -> bytes:
        return Tick("BTCUSDT", iso_utc(moment + received), iso_utc(moment), 100.0, 100.1, 1.0, 1.0,
                    feed="websocket", update_id=update_id, received_at=iso_utc(moment)).to_json()

    def trade(trade_id: int, **changes: object) -> bytes:
        fields = dict(symbol="BTCUSDT", trade_id=trade_id, price=100.05, qty=0.5, quote_qty=50.025,
                      trade_time=iso_utc(moment + timedelta(seconds=trade_id)), buyer_is_maker=trade_id % 2 == 0,
                      first_trade_id=trade_id * 3, last_trade_id=trade_id * 3 + 2)
        fields.update(changes)
        return Trade(**fields).to_json()  # type: ignore[arg-type]

    writer = DeltaBatchWriter(raw_url=f"file://{tmp_path}/raw_data", quarantine_url=f"file://{tmp_path}/quarantine",
                              app_id="test-ws", trades_url=f"file://{tmp_path}/trades", trades_topic="trades")
    # Three quotes in one millisecond (distinct update ids), one id again with a later receive time
    # (a reconnect's overlap); trades 1-3, trade 2 twice; three bad trades.
    first = writer(mixed_frame(spark, [("ticks", quote(7)), ("ticks", quote(8)), ("ticks", quote(9)),
                                       ("ticks", quote(8, timedelta(milliseconds=40))),
                                       ("trades", trade(1)), ("trades", trade(2)), ("trades", trade(2)),
                                       ("trades", trade(3)), ("trades", trade(4, qty=0.0)),
                                       ("trades", trade(5, trade_time="yesterday")), ("trades", b"[1, 2")]), 0)
    assert (first.valid, first.inserted, first.duplicates) == (4, 3, 1)
    assert (first.trades_valid, first.trades_inserted, first.trade_duplicates) == (4, 3, 1)
    assert first.quarantined == 3 and first.records == 11
    # A later batch repeats trade 3 (a gap fill from REST) and brings trade 6.
    second = writer(mixed_frame(spark, [("trades", trade(3)), ("trades", trade(6))]), 1)
    assert (second.trades_valid, second.trades_inserted) == (2, 1)

    raw = stored(spark, writer.raw_url)
    assert sorted(r.update_id for r in raw.collect()) == [7, 8, 9]
    trades = stored(spark, f"file://{tmp_path}/trades").toPandas()
    assert sorted(trades.trade_id) == [1, 2, 3, 6]
    assert {"quote_qty", "buyer_is_maker", "first_trade_id", "last_trade_id", "date", "hour"} <= set(trades.columns)
    reasons = sorted(r.reason for r in stored(spark, writer.quarantine_url).collect())
    assert reasons == sorted(["qty not finite or <= 0", "missing or unparseable trade_time", "unparseable JSON"])

    # File statistics only for the columns the readers prune on (cheaper appends), and those present.
    for url, columns in ((writer.raw_url, RAW_STATS_COLUMNS), (f"file://{tmp_path}/trades", TRADES_STATS_COLUMNS)):
        table = DeltaTable(url)
        assert table.metadata().configuration[STATS_COLUMNS_PROPERTY] == ",".join(columns)
        stats = {name.split(".", 1)[1] for name in table.get_add_actions(flatten=True).column_names
                 if name.startswith("max.")}
        assert stats == set(columns)


def test_the_batch_summary_gives_the_one_minute_bars_of_its_valid_records(spark, tmp_path: Path) -> None:
    """The partial bars counted in the batch's one summary job equal the bars computed from the stored rows."""
    import random
    from datetime import timedelta

    import pandas as pd

    from btcstream.analytics.alerts import merge_bars, minute_bars
    from btcstream.ingest.tick import iso_utc
    from btcstream.ingest.trade import Trade
    from helpers.ticks import TICKS_START

    rng = random.Random(9)
    ticks = random_ticks(150)
    trades = [Trade(symbol=rng.choice(["BTCUSDT", "ETHUSDT"]), trade_id=i, price=100.0, qty=rng.uniform(0.1, 2.0),
                    quote_qty=1.0, trade_time=iso_utc(TICKS_START + timedelta(seconds=rng.uniform(0, 3 * 3600))),
                    buyer_is_maker=rng.random() < 0.4, first_trade_id=i, last_trade_id=i) for i in range(200)]
    writer = DeltaBatchWriter(raw_url=f"file://{tmp_path}/raw_data", quarantine_url=f"file://{tmp_path}/quarantine",
                              app_id="test-bars", trades_url=f"file://{tmp_path}/trades", trades_topic="trades")
    records = ([("ticks", t.to_json()) for t in ticks] + [("trades", t.to_json()) for t in trades]
               + [("ticks", b"{not json"), ("trades", b"[")])
    counts = writer(mixed_frame(spark, records), 0)
    got = merge_bars(counts.bars)

    quotes = stored(spark, writer.raw_url).toPandas()
    trade_rows = stored(spark, f"file://{tmp_path}/trades").toPandas()
    for frame, column in ((quotes, "event_time"), (trade_rows, "trade_time")):
        frame[column] = pd.to_datetime(frame[column]).dt.tz_localize("UTC")
    want = minute_bars(quotes, trade_rows)
    assert sorted(got) == [(bar.symbol, bar.minute) for bar in want]
    for bar in want:
        other = got[(bar.symbol, bar.minute)]
        assert (other.quotes, other.trades) == (bar.quotes, bar.trades)
        assert other.metrics() == pytest.approx(bar.metrics(), rel=1e-9)
    assert sum(bar.quotes for bar in want) == len(ticks) and sum(bar.trades for bar in want) == len(trades)
