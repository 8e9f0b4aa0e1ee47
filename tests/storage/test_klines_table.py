"""The klines Delta table: its schema and partitions, appends that never store a key twice, and read_klines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from btcstream.errors import StorageReadError
from btcstream.ingest.sources.binance import Kline
from btcstream.settings import Settings
from btcstream.storage.klines import KLINES_COLUMNS, KlinesTable, read_klines

T0 = datetime(2021, 1, 1, tzinfo=timezone.utc)


def bars(count: int, start: datetime = T0, step: timedelta = timedelta(hours=1), price: float = 100.0) -> list[Kline]:
    return [Kline(open_time=start + i * step, open=price + i, high=price + i + 2, low=price + i - 1,
                  close=price + i + 1, volume=10.0 + i, close_time=start + (i + 1) * step - timedelta(milliseconds=1),
                  quote_volume=1000.0 + i, trades=50 + i, taker_buy_volume=4.0 + i, taker_buy_quote_volume=400.0 + i)
            for i in range(count)]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}/store")


def test_schema_partitions_and_values_as_written(settings: Settings) -> None:
    table = KlinesTable(settings)
    assert table.append_new("btcusdt", "1h", bars(3)) == 3

    delta = DeltaTable(settings.storage_url("klines"))
    assert list(delta.metadata().partition_columns) == ["interval", "date"]
    schema = pa.schema(delta.schema())
    assert schema.names == list(KLINES_COLUMNS)
    assert {name: str(schema.field(name).type) for name in ("open_time", "close_time", "ingested_at", "date",
                                                            "trade_count", "open")} == {
        "open_time": "timestamp[us, tz=UTC]", "close_time": "timestamp[us, tz=UTC]",
        "ingested_at": "timestamp[us, tz=UTC]", "date": "date32[day]", "trade_count": "int64", "open": "double"}

    frame = read_klines(settings)
    assert list(frame.columns) == list(KLINES_COLUMNS)
    assert frame["symbol"].tolist() == ["BTCUSDT"] * 3 and frame["interval"].tolist() == ["1h"] * 3
    assert frame["open_time"].tolist() == [pd.Timestamp(T0 + timedelta(hours=i)) for i in range(3)]
    assert str(frame["open_time"].dt.tz) == "UTC" and str(frame["ingested_at"].dt.tz) == "UTC"
    first = frame.iloc[0]
    assert (first["open"], first["high"], first["low"], first["close"], first["volume"], first["quote_volume"],
            first["trade_count"], first["taker_buy_volume"], first["taker_buy_quote_volume"]) == (
        100.0, 102.0, 99.0, 101.0, 10.0, 1000.0, 50, 4.0, 400.0)
    assert first["close_time"] == pd.Timestamp("2021-01-01T00:59:59.999Z") and first["date"] == "2021-01-01"


def test_appending_again_adds_no_duplicate_and_no_commit(settings: Settings) -> None:
    table = KlinesTable(settings)
    first = bars(48)
    assert table.append_new("BTCUSDT", "1h", first + first[:5]) == 48  # duplicates inside a batch: once
    version = DeltaTable(settings.storage_url("klines")).version()

    assert table.append_new("BTCUSDT", "1h", first) == 0
    assert DeltaTable(settings.storage_url("klines")).version() == version  # nothing new: no commit at all

    overlapping = bars(24, start=T0 + timedelta(hours=36))  # 12 stored, 12 new
    assert table.append_new("BTCUSDT", "1h", overlapping) == 12
    stored = read_klines(settings)
    assert len(stored) == 60 and not stored.duplicated(["symbol", "interval", "open_time"]).any()


def test_the_key_includes_symbol_and_interval(settings: Settings) -> None:
    table = KlinesTable(settings)
    assert table.append_new("BTCUSDT", "1h", bars(2)) == 2
    assert table.append_new("ETHUSDT", "1h", bars(2, price=10.0)) == 2
    assert table.append_new("BTCUSDT", "1m", bars(2, step=timedelta(minutes=1))) == 2
    assert len(read_klines(settings, interval=None)) == 6
    assert read_klines(settings, "ETHUSDT")["open"].tolist() == [10.0, 11.0]
    assert read_klines(settings, interval="1m")["open_time"].tolist() == [pd.Timestamp(T0),
                                                                         pd.Timestamp(T0 + timedelta(minutes=1))]
    assert table.stored_open_times("BTCUSDT", "1m", T0, T0 + timedelta(hours=1)).tolist() == [
        int(T0.timestamp() * 1000), int(T0.timestamp() * 1000) + 60_000]


def test_a_batch_over_many_days_is_split_into_concurrent_commits_of_disjoint_dates(settings: Settings) -> None:
    table = KlinesTable(settings, max_parallel_commits=4)
    days = 130  # 130 daily partitions: 4 appends of about 32 dates each
    assert table.append_new("BTCUSDT", "1h", bars(24 * days)) == 24 * days
    assert table.commits == 4
    delta = DeltaTable(settings.storage_url("klines"))
    assert delta.version() == 3 and len(delta.file_uris()) == days
    stored = read_klines(settings)
    assert len(stored) == 24 * days and stored["open_time"].is_monotonic_increasing
    assert table.append_new("BTCUSDT", "1h", bars(24 * days)) == 0 and table.commits == 4


def test_read_klines_range_is_half_open_and_empty_without_a_table(settings: Settings) -> None:
    empty = read_klines(settings)
    assert empty.empty and list(empty.columns) == list(KLINES_COLUMNS)

    KlinesTable(settings).append_new("BTCUSDT", "1h", bars(48))
    window = read_klines(settings, ["btcusdt"], "1h", T0 + timedelta(hours=23), pd.Timestamp(T0 + timedelta(hours=26)))
    assert window["open_time"].tolist() == [pd.Timestamp(T0 + timedelta(hours=h)) for h in (23, 24, 25)]
    assert read_klines(settings, "BTCUSDT", "1m").empty

    with pytest.raises(StorageReadError, match="naive"):
        read_klines(settings, start=datetime(2021, 1, 1))
