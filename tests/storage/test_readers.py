"""Readers of the Delta tables: one version's files only, exact partition pruning, time travel,
UTC timestamps, the same frame from every engine, quarantined bytes readable, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from btcstream.errors import LegacyLayout, StorageReadError
from btcstream.names import HOURLY_COLUMNS
from btcstream.settings import Settings
from btcstream.storage.readers import (
    HOURLY_TABLE_COLUMNS,
    QUARANTINE_TABLE_COLUMNS,
    RAW_COLUMNS,
    TimeRange,
    dataset_summary,
    latest_time,
    parse_as_of,
    read_head,
    read_hourly_metrics,
    read_quarantine,
    read_raw_ticks,
    scanned_files,
    table_history,
)
from helpers.delta_tables import quarantine_frame, raw_frame, write_stray_file, write_table
from helpers.file_sink import write_file_sink
from helpers.hourly import HOURLY_START as T0
from helpers.hourly import hourly_frame

ENGINES = ["pyarrow", "duckdb"]
INVALID_UTF8 = b"\xff\xfe"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}/store", spark_master="local[2]")


def expected(frame: pd.DataFrame, time_range: TimeRange, symbols=None, time_column: str = "window_start") -> pd.DataFrame:
    rows = frame
    if time_range.start is not None:
        rows = rows[rows[time_column] >= time_range.start]
    if time_range.end is not None:
        rows = rows[rows[time_column] < time_range.end]
    if symbols is not None:
        rows = rows[rows["symbol"].isin(symbols)]
    return rows.sort_values(["symbol", time_column]).reset_index(drop=True)


def hours(start: datetime, count: int, step: timedelta = timedelta(minutes=20)) -> list[datetime]:
    return [start + i * step for i in range(count)]


def corrupt(paths) -> None:
    """Make data files unreadable: a read that still succeeds never opened them."""
    for path in paths:
        Path(path).write_bytes(b"not a parquet file")


@pytest.mark.parametrize("engine", ENGINES)
def test_hourly_rows_read_back_exactly_in_utc(settings: Settings, engine: str) -> None:
    frame = hourly_frame()
    write_table(settings, "hourly_metrics", frame)

    got = read_hourly_metrics(settings, engine=engine)

    assert list(got.columns) == list(HOURLY_TABLE_COLUMNS)
    assert str(got["window_start"].dt.tz) == "UTC" and str(got["updated_at"].dt.tz) == "UTC"
    assert set(got["date"]) == {"2025-02-14", "2025-02-15"}
    assert got["is_final"].all() and (got["revision"] == 1).all()
    pd.testing.assert_frame_equal(got[list(HOURLY_COLUMNS)], expected(frame, TimeRange()), check_dtype=False)


def test_engines_return_the_same_frame_for_ranges_and_symbols(settings: Settings) -> None:
    ticks = raw_frame(hours(T0, 30))  # 21:00 .. 06:40 the next day, three ticks an hour, two symbols
    write_table(settings, "raw_data", ticks)
    ranges = [TimeRange(), TimeRange(T0 + timedelta(hours=2, minutes=20)),
              TimeRange(end=T0 + timedelta(hours=3)),
              TimeRange(T0 + timedelta(hours=2, minutes=40), T0 + timedelta(hours=5, minutes=20))]

    for window in ranges:
        for symbols in (None, ["ethusdt"], ["BTCUSDT", "ETHUSDT"]):
            frames = [read_raw_ticks(settings, window, symbols, engine=engine) for engine in ENGINES]
            want = expected(ticks, window, [s.upper() for s in symbols] if symbols else None, "event_time")
            assert len(frames[0]) == len(want) > 0, (window, symbols)
            assert list(frames[0]["event_time"]) == list(want["event_time"])
            assert list(frames[0]["symbol"]) == list(want["symbol"])
            pd.testing.assert_frame_equal(frames[0], frames[1])
    some = read_raw_ticks(settings, ranges[3], engine="pyarrow")
    assert list(some.columns) == list(RAW_COLUMNS)
    assert some["hour"].dtype == "int64" and some["date"].iloc[0] == "2025-02-14"
    assert str(some["event_time"].dt.tz) == "UTC" and str(some["trade_timestamp"].dt.tz) == "UTC"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_range_of_one_hour_opens_only_that_hours_files(settings: Settings, engine: str) -> None:
    ticks = raw_frame(hours(T0, 30))
    write_table(settings, "raw_data", ticks)
    window = TimeRange(datetime(2025, 2, 15, 1, tzinfo=timezone.utc), datetime(2025, 2, 15, 2, tzinfo=timezone.utc))

    files = scanned_files(settings, "raw_data", window)
    everything = scanned_files(settings, "raw_data")
    assert files and all("/date=2025-02-15/hour=1/" in path for path in files)
    corrupt(set(everything) - set(files))  # the scan must not even open the other hours

    got = read_raw_ticks(settings, window, engine=engine)

    assert list(got["event_time"].unique()) == [pd.Timestamp("2025-02-15 01:00", tz="UTC") + timedelta(minutes=m)
                                                for m in (0, 20, 40)]
    assert list(got["hour"].unique()) == [1]
    with pytest.raises(Exception):
        read_raw_ticks(settings, engine=engine)  # the corruption is real: a full read fails


@pytest.mark.parametrize("engine", ENGINES)
def test_files_not_in_the_table_are_never_read(settings: Settings, engine: str) -> None:
    frame = hourly_frame(hours=3)
    write_table(settings, "hourly_metrics", frame)
    stray = write_stray_file(settings, "hourly_metrics", frame.assign(avg_price=-1.0))  # an aborted write

    got = read_hourly_metrics(settings, engine=engine)

    assert len(got) == len(frame) and (got["avg_price"] > 0).all()
    from btcstream.commands.data import list_lines
    lines = list_lines(settings, "hourly_metrics/date=2025-02-14")
    assert [line for line in lines if "[not in table]" in line] == [line for line in lines if stray.name in line]
    assert sum("[in table]" in line for line in lines) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_time_travel_by_version_and_by_time_returns_the_earlier_rows(settings: Settings, engine: str) -> None:
    first, second = raw_frame(hours(T0, 3)), raw_frame(hours(T0 + timedelta(hours=1), 3))
    write_table(settings, "raw_data", first)
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    write_table(settings, "raw_data", second)

    newest = read_raw_ticks(settings, engine=engine)
    assert len(newest) == len(first) + len(second)
    for as_of in (0, "0", between, between.isoformat(), between.replace(tzinfo=None).isoformat()):
        earlier = read_raw_ticks(settings, engine=engine, as_of=as_of)
        pd.testing.assert_frame_equal(earlier[["symbol", "event_time"]],
                                      expected(first, TimeRange(), time_column="event_time")[["symbol", "event_time"]],
                                      check_dtype=False)
    assert len(read_raw_ticks(settings, engine=engine, as_of=1)) == len(newest)


def test_as_of_outside_the_tables_history_is_one_line_naming_its_range(settings: Settings, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_table(settings, "hourly_metrics", hourly_frame(hours=2))
    write_table(settings, "hourly_metrics", hourly_frame(hours=3))

    for as_of in (2, "2000-01-01T00:00", datetime.now(timezone.utc) + timedelta(days=1)):
        with pytest.raises(StorageReadError) as refused:
            read_hourly_metrics(settings, as_of=as_of)
        message = str(refused.value)
        assert "\n" not in message and "versions 0..1" in message, message
    with pytest.raises(StorageReadError, match="neither a table version"):
        read_hourly_metrics(settings, as_of="yesterday")
    with pytest.raises(StorageReadError, match="not a Delta table yet"):
        read_raw_ticks(settings, as_of=0)

    from btcstream.cli import main
    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)
    assert main(["data", "hourly", "--as-of", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no version 7" in err and "versions 0..1" in err


def test_parse_as_of_takes_notebook_parameters() -> None:
    assert parse_as_of("") is None and parse_as_of(None) is None
    assert parse_as_of(" 12 ") == 12 and parse_as_of(3) == 3
    assert parse_as_of("2025-02-15T10:00") == datetime(2025, 2, 15, 10, tzinfo=timezone.utc)
    assert parse_as_of("2025-02-15T11:00+01:00") == datetime(2025, 2, 15, 10, tzinfo=timezone.utc)
    assert parse_as_of("2025-02-15T10:00Z") == datetime(2025, 2, 15, 10, tzinfo=timezone.utc)
    with pytest.raises(StorageReadError):
        parse_as_of(-1)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_table_yet_gives_empty_frames_with_the_tables_columns(settings: Settings, engine: str) -> None:
    """An empty read has the columns of a full one (checked against Spark in tests/storage/test_table_columns.py)."""
    for read, columns in ((read_hourly_metrics, HOURLY_TABLE_COLUMNS), (read_raw_ticks, RAW_COLUMNS)):
        got = read(settings, engine=engine)
        assert got.empty and list(got.columns) == list(columns)
    got = read_quarantine(settings, engine=engine)
    assert got.empty and list(got.columns) == list(QUARANTINE_TABLE_COLUMNS)
    Path(settings.storage_url("raw_data").removeprefix("file://")).mkdir(parents=True)  # a folder, no Delta log
    assert read_raw_ticks(settings, engine=engine).empty
    assert latest_time(settings) is None


def test_old_file_sink_layout_is_refused_in_one_line(settings: Settings, tmp_path: Path, capsys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_file_sink(tmp_path / "store/hourly_metrics", hourly_frame(hours=2), "window_start")

    with pytest.raises(LegacyLayout, match="btcstream migrate"):
        read_hourly_metrics(settings)
    assert read_raw_ticks(settings).empty  # only the old folder is refused

    from btcstream.cli import main
    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)
    assert main(["data", "ls"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if "/hourly_metrics  [" in line]
    assert listed and "old file-sink layout: run `btcstream migrate`" in listed[0]
    assert main(["data", "head", "hourly_metrics"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "btcstream migrate" in err


@pytest.mark.parametrize("engine", ENGINES)
def test_quarantined_invalid_utf8_is_read_as_bytes(settings: Settings, engine: str) -> None:
    values = [INVALID_UTF8, b'{"symbol": "BTCUSDT"', "caf\u00e9".encode()]
    write_table(settings, "quarantine", quarantine_frame(values, T0))

    got = read_quarantine(settings, engine=engine)

    assert list(got["value"]) == values and all(type(value) is bytes for value in got["value"])
    assert list(got["value_preview"]) == ["\ufffd\ufffd", '{"symbol": "BTCUSDT"', "caf\u00e9"]
    assert str(got["kafka_timestamp"].dt.tz) == "UTC" and list(got["offset"]) == [0, 1, 2]


def test_data_head_quarantine_prints_a_record_of_invalid_utf8(settings: Settings) -> None:
    """The issue's bug: DuckDB stopped with "Invalid string encoding" and a traceback."""
    write_table(settings, "quarantine", quarantine_frame([INVALID_UTF8, b"not json"], T0))

    done = subprocess.run([sys.executable, "-m", "btcstream", "data", "head", "quarantine"], capture_output=True,
                          text=True, env={"BTCSTREAM_STORAGE_ROOT": settings.storage_root, "PATH": "/usr/bin:/bin"},
                          timeout=120)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "\ufffd\ufffd" in done.stdout and "not json" in done.stdout and "value_preview" in done.stdout


def test_dataset_summary_comes_from_the_delta_log(settings: Settings) -> None:
    write_table(settings, "raw_data", raw_frame(hours(T0, 6)))  # 2 hours x 2 symbols
    write_table(settings, "raw_data", raw_frame(hours(T0 + timedelta(hours=4), 3)))  # one more hour
    write_table(settings, "quarantine", quarantine_frame([INVALID_UTF8], T0))
    files = scanned_files(settings, "raw_data")
    corrupt(files + scanned_files(settings, "quarantine"))  # no data file is read

    summary = dataset_summary(settings).set_index("dataset")

    assert summary.loc["raw_data", "version"] == 1 and summary.loc["raw_data", "files"] == len(files) == 3
    assert summary.loc["raw_data", "rows"] == 2 * (6 + 3)
    assert (summary.loc["quarantine", "version"], summary.loc["quarantine", "rows"]) == (0, 1)
    assert pd.isna(summary.loc["hourly_metrics", "version"]) and summary.loc["hourly_metrics", "files"] == 0
    assert summary.loc["raw_data", "url"] == settings.storage_url("raw_data")


def test_latest_time_is_exact_and_opens_only_the_newest_files(settings: Settings) -> None:
    last = T0 + timedelta(hours=5, minutes=59, seconds=59, microseconds=999_999)  # below Delta's ms statistics
    write_table(settings, "raw_data", raw_frame(hours(T0, 9) + [last], symbols=("BTCUSDT",)))
    newest = [path for path in scanned_files(settings, "raw_data") if "/date=2025-02-15/hour=2/" in path]
    corrupt(set(scanned_files(settings, "raw_data")) - set(newest))

    assert latest_time(settings) == pd.Timestamp(last)


def test_head_reads_only_the_partitions_it_shows(settings: Settings) -> None:
    write_table(settings, "raw_data", raw_frame(hours(T0, 12), symbols=("BTCUSDT",)))  # hours 21 .. 0, 3 ticks each
    files = scanned_files(settings, "raw_data")
    oldest = [path for path in files if "/hour=21/" in path or "/hour=22/" in path]
    corrupt(set(files) - set(oldest))

    got = read_head(settings, "raw_data", rows=4)

    assert list(got["event_time"]) == [pd.Timestamp(T0) + timedelta(minutes=20 * i) for i in range(4)]
    with pytest.raises(Exception):
        read_head(settings, "raw_data", rows=4, latest=True)


def test_data_commands_print_rows_history_and_time_travel(settings: Settings, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from btcstream.cli import main

    write_table(settings, "hourly_metrics", hourly_frame(hours=3))
    write_table(settings, "hourly_metrics", hourly_frame(hours=4).tail(2).assign(is_final=False))
    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)

    assert main(["data", "ls"]) == 0
    assert "hourly_metrics  [Delta v1, 3 files, 8 rows]" in capsys.readouterr().out
    assert main(["data", "hourly", "--symbols", "ETHUSDT", "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "2025-02-15 00:00:00+00:00" in out and "2025-02-14 21:00:00+00:00" not in out and "BTCUSDT" not in out
    assert "is_final" in out and "False" in out
    assert main(["data", "hourly", "--symbols", "ETHUSDT", "--as-of", "0"]) == 0
    out = capsys.readouterr().out
    assert "2025-02-15 00:00:00+00:00" not in out and "(3 rows; 1 symbols)" in out
    assert main(["data", "head", "hourly_metrics", "-n", "1", "--latest"]) == 0
    assert "2025-02-15 00:00:00+00:00" in capsys.readouterr().out
    assert main(["data", "history", "hourly_metrics"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert history[0].split() == ["version", "timestamp", "operation", "rows_added", "rows_updated"]
    assert [line.split()[0] for line in history[1:]] == ["1", "0"] and history[1].split()[3:5] == ["WRITE", "2"]
    assert list(table_history(settings, "hourly_metrics")["rows_added"]) == [2, 6]


def test_unreachable_hdfs_is_one_line_naming_the_table(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from btcstream.cli import main

    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", "hdfs://localhost:1/nothing-listens-here")
    for command in (["data", "head", "raw_data"], ["data", "hourly"], ["data", "history", "quarantine"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "hdfs://localhost:1/nothing-listens-here/" in err, err
        assert "Connection refused" in err and "\x1b[" not in err and "btcstream infra status" in err


def test_naive_or_reversed_ranges_are_refused() -> None:
    with pytest.raises(StorageReadError):
        TimeRange(datetime(2025, 1, 1))
    with pytest.raises(StorageReadError):
        TimeRange(T0, T0 - timedelta(hours=1))


@pytest.mark.spark
def test_spark_written_table_reads_the_same_with_deltalake_and_spark(spark, settings: Settings) -> None:
    from btcstream.storage.readers import spark_dataset
    from helpers.delta_tables import as_table

    url = settings.storage_url("raw_data")
    parts = [raw_frame(hours(T0, 4)), raw_frame(hours(T0 + timedelta(hours=2), 6))]
    for part in parts:  # two appends: versions 0 and 1
        spark.createDataFrame(as_table("raw_data", part)).write.format("delta").mode("append") \
            .partitionBy("date", "hour").save(url)
    window = TimeRange(T0 + timedelta(minutes=40))

    for as_of, stored in ((None, pd.concat(parts)), (0, parts[0])):
        jvm_free = read_raw_ticks(settings, window, ["BTCUSDT"], engine="pyarrow", as_of=as_of)
        with_spark = read_raw_ticks(settings, window, ["BTCUSDT"], engine="spark", as_of=as_of)
        want = expected(stored, window, ["BTCUSDT"], "event_time")
        assert list(jvm_free["event_time"]) == list(want["event_time"]) and len(want) > 0
        pd.testing.assert_frame_equal(with_spark, jvm_free, check_dtype=False)
        frame = spark_dataset(settings, "raw_data", "event_time", window, ["BTCUSDT"], as_of=as_of)
        assert frame.count() == len(jvm_free)


@pytest.mark.integration
def test_hdfs_reads_without_a_jvm_and_with_spark_agree(test_settings: Settings) -> None:
    frame = hourly_frame(hours=6)
    write_table(test_settings, "hourly_metrics", frame.head(4))
    write_table(test_settings, "hourly_metrics", frame.tail(len(frame) - 4))
    window = TimeRange(T0 + timedelta(hours=1), T0 + timedelta(hours=5))

    over_hdfs = {engine: read_hourly_metrics(test_settings, window, engine=engine) for engine in ENGINES}
    with_spark = read_hourly_metrics(test_settings.replace(spark_master="local[2]"), window, engine="spark")

    pd.testing.assert_frame_equal(over_hdfs["pyarrow"][list(HOURLY_COLUMNS)], expected(frame, window),
                                  check_dtype=False)
    pd.testing.assert_frame_equal(over_hdfs["duckdb"], over_hdfs["pyarrow"])
    pd.testing.assert_frame_equal(with_spark[over_hdfs["pyarrow"].columns.tolist()], over_hdfs["pyarrow"],
                                  check_dtype=False)
    assert len(read_hourly_metrics(test_settings, window, as_of=0)) == len(expected(frame.head(4), window))
