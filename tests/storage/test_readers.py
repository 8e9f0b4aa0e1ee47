"""Readers: committed files only, partition pruning, UTC timestamps, same frame from every engine."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btcstream.errors import StorageReadError
from btcstream.settings import Settings
from btcstream.storage.readers import (
    HOURLY_COLUMNS,
    HOURLY_TABLE_COLUMNS,
    RAW_COLUMNS,
    TimeRange,
    committed_partition_files,
    partition_values,
    read_hourly_metrics,
    read_raw_ticks,
)
from helpers.file_sink import write_file_sink
from helpers.hourly import HOURLY_START as T0
from helpers.hourly import hourly_frame


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}/store", spark_master="local[2]")


def expected(frame: pd.DataFrame, time_range: TimeRange, symbols=None) -> pd.DataFrame:
    rows = frame
    if time_range.start is not None:
        rows = rows[rows["window_start"] >= time_range.start]
    if time_range.end is not None:
        rows = rows[rows["window_start"] < time_range.end]
    if symbols is not None:
        rows = rows[rows["symbol"].isin(symbols)]
    return rows.sort_values(["symbol", "window_start"]).reset_index(drop=True)


@pytest.mark.parametrize("engine", ["pyarrow", "duckdb"])
@pytest.mark.parametrize("naive", [True, False])
def test_hourly_metrics_read_back_exactly_in_utc(settings: Settings, tmp_path: Path, engine: str, naive: bool) -> None:
    frame = hourly_frame()
    write_file_sink(tmp_path / "store/hourly_metrics", frame, "window_start", naive_timestamps=naive)

    got = read_hourly_metrics(settings, engine=engine)

    assert str(got["window_start"].dt.tz) == "UTC" and str(got["window_end"].dt.tz) == "UTC"
    assert set(got["date"]) == {"2025-02-14", "2025-02-15"}
    pd.testing.assert_frame_equal(got[list(HOURLY_COLUMNS)], expected(frame, TimeRange()), check_dtype=False)


@pytest.mark.parametrize("engine", ["pyarrow", "duckdb"])
def test_half_written_files_are_never_read(settings: Settings, tmp_path: Path, engine: str) -> None:
    frame = hourly_frame(hours=3)
    ghost = hourly_frame(hours=3).assign(avg_price=-1.0)
    write_file_sink(tmp_path / "store/hourly_metrics", frame, "window_start", uncommitted=ghost)
    assert len(list((tmp_path / "store/hourly_metrics").rglob("*.parquet"))) > len(
        committed_partition_files(settings, "hourly_metrics"))

    got = read_hourly_metrics(settings, engine=engine)

    assert len(got) == len(frame) and (got["avg_price"] > 0).all()


@pytest.mark.parametrize("engine", ["pyarrow", "duckdb"])
def test_time_range_and_symbols_select_rows(settings: Settings, tmp_path: Path, engine: str) -> None:
    frame = hourly_frame(hours=8)
    write_file_sink(tmp_path / "store/hourly_metrics", frame, "window_start")
    window = TimeRange(T0 + timedelta(hours=2), T0 + timedelta(hours=5))

    got = read_hourly_metrics(settings, window, symbols=["ethusdt"], engine=engine)

    pd.testing.assert_frame_equal(got[list(HOURLY_COLUMNS)], expected(frame, window, ["ETHUSDT"]),
                                  check_dtype=False)


def test_partitions_outside_the_range_are_not_opened(settings: Settings, tmp_path: Path) -> None:
    frame = hourly_frame(hours=30, symbols=("BTCUSDT",))  # 2025-02-14 21:00 .. 2025-02-16 02:00
    write_file_sink(tmp_path / "store/raw_data", frame.rename(columns={"window_start": "event_time"}),
                    "event_time", by_hour=True)
    window = TimeRange(datetime(2025, 2, 15, 10, tzinfo=timezone.utc), datetime(2025, 2, 15, 12, tzinfo=timezone.utc))

    files = committed_partition_files(settings, "raw_data", window)
    hours = sorted(int(partition_values(f, str(tmp_path / "store/raw_data"))["hour"]) for f in files)

    assert hours == [9, 10, 11, 12]  # the two hours plus one hour of slack either side
    got = read_raw_ticks(settings, window)
    assert list(got["event_time"]) == [pd.Timestamp("2025-02-15 10:00", tz="UTC"),
                                       pd.Timestamp("2025-02-15 11:00", tz="UTC")]
    assert list(got["hour"]) == [10, 11]


def test_partition_values_parses_hive_segments() -> None:
    assert partition_values("/r/raw_data/date=2025-02-14/hour=7/part-0.parquet", "/r/raw_data") == {
        "date": "2025-02-14", "hour": "7"}
    assert partition_values("/r/raw_data/part-0.parquet", "/r/raw_data") == {}


def test_missing_dataset_gives_empty_frame_with_the_tables_columns(settings: Settings) -> None:
    """An empty read has the columns of a full one (checked against Spark in tests/storage/test_table_columns.py)."""
    got = read_hourly_metrics(settings)
    assert got.empty and list(got.columns) == list(HOURLY_TABLE_COLUMNS)
    assert read_raw_ticks(settings).empty and list(read_raw_ticks(settings).columns) == list(RAW_COLUMNS)


def test_naive_or_reversed_ranges_are_refused() -> None:
    with pytest.raises(StorageReadError):
        TimeRange(datetime(2025, 1, 1))
    with pytest.raises(StorageReadError):
        TimeRange(T0, T0 - timedelta(hours=1))


def test_duckdb_refuses_hdfs() -> None:
    with pytest.raises(StorageReadError):
        read_hourly_metrics(Settings(storage_root="hdfs://localhost:1/x"), engine="duckdb")


@pytest.mark.spark
def test_spark_engine_reads_the_same_committed_rows(settings: Settings, tmp_path: Path) -> None:
    frame = hourly_frame(hours=4)
    ghost = hourly_frame(hours=4).assign(avg_price=-1.0)
    write_file_sink(tmp_path / "store/hourly_metrics", frame, "window_start", uncommitted=ghost)

    got = read_hourly_metrics(settings, TimeRange(T0 + timedelta(hours=1)), engine="spark")
    reference = read_hourly_metrics(settings, TimeRange(T0 + timedelta(hours=1)), engine="pyarrow")

    assert str(got["window_start"].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(got[reference.columns.tolist()], reference, check_dtype=False)
    assert not math.isclose(got["avg_price"].min(), -1.0) and np.isfinite(got["realized_volatility"]).all()

    from btcstream.storage.readers import spark_dataset

    frame = spark_dataset(settings, "hourly_metrics", "window_start", TimeRange(T0 + timedelta(hours=1)), ["BTCUSDT"])
    assert frame.count() == 3 and frame.agg({"avg_price": "min"}).first()[0] > 0


def test_data_command_lists_committed_state_and_prints_rows(settings: Settings, tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from btcstream.cli import main
    from btcstream.commands.data import list_lines

    frame = hourly_frame(hours=3)
    write_file_sink(tmp_path / "store/hourly_metrics", frame, "window_start", uncommitted=frame.head(1))
    lines = list_lines(settings, "hourly_metrics/date=2025-02-14")
    assert sum("UNCOMMITTED" in line for line in lines) == 1 and sum(" committed " in line for line in lines) == 1

    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)
    assert main(["data", "hourly", "--symbols", "ETHUSDT", "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "2025-02-14 22:00:00+00:00" in out and "2025-02-14 21:00:00+00:00" not in out and "BTCUSDT" not in out
    assert main(["data", "head", "hourly_metrics", "-n", "1"]) == 0
    assert "2025-02-14 21:00:00+00:00" in capsys.readouterr().out


def upload_dataset(local: Path, settings: Settings, dataset: str) -> None:
    """Copy a dataset written by `write_file_sink` to the storage root, its sink log pointing at the copies."""
    from btcstream.storage.filesystem import storage_filesystem, storage_path

    fs = storage_filesystem(settings)
    remote = storage_path(settings, dataset)
    for path in local.rglob("*.parquet"):
        fs.put_file(str(path), f"{remote}/{path.relative_to(local)}")
    log_text = (local / "_spark_metadata" / "0").read_text().replace(f"file://{local}", settings.storage_url(dataset))
    with fs.open(f"{remote}/_spark_metadata/0", "wb") as handle:
        handle.write(log_text.encode())


@pytest.mark.integration
def test_hdfs_reads_without_a_jvm_and_with_spark_agree(test_settings: Settings, tmp_path: Path) -> None:
    frame = hourly_frame(hours=6)
    write_file_sink(tmp_path / "hourly_metrics", frame, "window_start",
                    uncommitted=frame.head(2).assign(avg_price=-1.0))
    upload_dataset(tmp_path / "hourly_metrics", test_settings, "hourly_metrics")
    window = TimeRange(T0 + timedelta(hours=1), T0 + timedelta(hours=5))

    over_webhdfs = read_hourly_metrics(test_settings, window, engine="pyarrow")
    with_spark = read_hourly_metrics(test_settings.replace(spark_master="local[2]"), window, engine="spark")

    pd.testing.assert_frame_equal(over_webhdfs[list(HOURLY_COLUMNS)], expected(frame, window), check_dtype=False)
    pd.testing.assert_frame_equal(with_spark[over_webhdfs.columns.tolist()], over_webhdfs, check_dtype=False)
    assert (over_webhdfs["avg_price"] > 0).all()
