"""Readers of the live forecasts and alerts tables: exact rows in UTC, filters, newest alerts first,
and a typed empty frame while the job has not written a table yet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btcstream.names import ALERTS_COLUMNS, FORECASTS_COLUMNS
from btcstream.settings import Settings
from btcstream.storage.readers import (ALERTS_TABLE_COLUMNS, FORECASTS_TABLE_COLUMNS, TimeRange, read_alerts,
                                       read_forecasts, read_latest_alerts, scanned_files)
from helpers.hourly import HOURLY_START
from helpers.live_tables import alerts_frame, forecasts_frame, utc, write_alerts, write_forecasts

ENGINES = ["pyarrow", "duckdb"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}/store")


@pytest.mark.parametrize("engine", ENGINES)
def test_forecasts_read_back_exactly_in_utc(settings: Settings, engine: str) -> None:
    written = forecasts_frame(HOURLY_START, hours=4, symbols=("BTCUSDT", "ETHUSDT"))
    write_forecasts(settings, written.sample(frac=1.0, random_state=3))

    got = read_forecasts(settings, engine=engine)

    assert list(got.columns) == list(FORECASTS_COLUMNS)
    assert all(str(got[c].dt.tz) == "UTC" for c in ("made_at", "for_hour", "updated_at"))
    want = written.sort_values(["symbol", "for_hour", "model"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert got["realized"].isna().sum() == 2 * 4  # the hour in progress of each symbol, every model


def test_forecasts_filter_by_hour_symbol_and_model(settings: Settings) -> None:
    write_forecasts(settings, forecasts_frame(HOURLY_START, hours=5, symbols=("BTCUSDT", "ETHUSDT")))
    window = TimeRange(HOURLY_START + pd.Timedelta(hours=1), HOURLY_START + pd.Timedelta(hours=3))

    got = read_forecasts(settings, window, symbols=["btcusdt"], models=["har_rv", "ewma"])

    assert set(got["symbol"]) == {"BTCUSDT"} and set(got["model"]) == {"ewma", "har_rv"}
    assert sorted(got["for_hour"].unique()) == [HOURLY_START + pd.Timedelta(hours=h) for h in (1, 2)]
    assert len(got) == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_alerts_read_back_with_their_date_partition_and_filters(settings: Settings, engine: str) -> None:
    times = [utc("2025-02-14T23:58"), utc("2025-02-15T00:01"), utc("2025-02-15T00:02"), utc("2025-02-15T02:00")]
    written = alerts_frame(times)
    write_alerts(settings, written)

    got = read_alerts(settings, engine=engine)

    assert list(got.columns) == list(ALERTS_TABLE_COLUMNS)
    assert str(got["time"].dt.tz) == "UTC" and list(got["date"]) == ["2025-02-14"] + ["2025-02-15"] * 3
    pd.testing.assert_frame_equal(got[list(ALERTS_COLUMNS)], written, check_dtype=False)

    window = TimeRange(utc("2025-02-15T00:00"), utc("2025-02-15T01:00"))
    assert list(read_alerts(settings, window, engine=engine)["time"]) == times[1:3]
    assert len(scanned_files(settings, "alerts", window)) == 1  # the other day's partition is not opened
    only = read_alerts(settings, metrics=["volatility_1m"], symbols=["ETHUSDT", "BTCUSDT"], engine=engine)
    assert list(only["time"]) == [times[1]]


def test_latest_alerts_are_the_newest_first(settings: Settings) -> None:
    times = [utc("2025-02-13T10:00"), utc("2025-02-14T09:00"), utc("2025-02-15T00:01"), utc("2025-02-15T03:00")]
    write_alerts(settings, alerts_frame(times))
    write_alerts(settings, alerts_frame([utc("2025-02-15T01:00")], symbol="ETHUSDT"))

    got = read_latest_alerts(settings, rows=3)

    assert list(got["time"]) == [times[3], utc("2025-02-15T01:00"), times[2]]
    assert list(got["symbol"]) == ["BTCUSDT", "ETHUSDT", "BTCUSDT"]
    np.testing.assert_allclose(got["z"], (got["value"] - got["baseline"]) / (1.4826 * got["mad"]))


@pytest.mark.parametrize("reader", [read_forecasts, read_alerts, read_latest_alerts])
def test_no_table_yet_reads_as_a_typed_empty_frame(settings: Settings, reader) -> None:
    got = reader(settings)

    assert got.empty
    expected = FORECASTS_TABLE_COLUMNS if reader is read_forecasts else ALERTS_TABLE_COLUMNS
    assert list(got.columns) == list(expected)
    assert str(got["symbol"].dtype) == "object" and str(got["value"].dtype) == "float64"
    time_column = "for_hour" if reader is read_forecasts else "time"
    assert str(got[time_column].dt.tz) == "UTC"  # .dt works: a notebook can filter or plot it unchanged
