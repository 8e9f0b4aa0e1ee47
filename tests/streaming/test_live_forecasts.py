"""Live forecasts: each final hour gets the next hour's forecast once (across restarts of the stage),
from the final hours before it only, and the realized value lands beside it when that hour is final."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btcstream.names import FORECASTS_COLUMNS, HOURLY_DATASET
from btcstream.settings import Settings
from btcstream.streaming.forecasts import ForecastStage
from helpers.delta_tables import write_table
from helpers.hourly import HOURLY_START, hourly_frame
from helpers.stream_job import read_table


def ewma_variance(volatilities: list[float], decay: float = 0.94) -> float:
    """RiskMetrics by hand: s_0 = RV_0, s_t = decay s_{t-1} + (1 - decay) RV_t (RV = volatility^2)."""
    level = volatilities[0] ** 2
    for value in volatilities[1:]:
        level = decay * level + (1 - decay) * value ** 2
    return level


def test_forecasts_once_per_final_hour_across_restarts_with_realized_beside(tmp_path: Path) -> None:
    settings = Settings(storage_root=f"file://{tmp_path}", forecast_models="ewma,har_rv")
    hourly = hourly_frame(hours=6, symbols=("BTCUSDT",))
    hourly["is_final"] = [True] * 5 + [False]  # hours 0-4 final, hour 5 live
    write_table(settings, HOURLY_DATASET, hourly)

    counts = ForecastStage(settings)(finalised=0, revised=0)  # first call after a start: catches up
    # Hours 1..4 have the two hours of history EWMA needs (hour 0 alone does not); HAR-RV waits (178 hours).
    assert (counts.written, counts.waiting) == (4, 1 + 5)
    forecasts = read_table(settings, "forecasts")
    assert list(forecasts.columns) == list(FORECASTS_COLUMNS)
    forecasts["for_hour"] = pd.to_datetime(forecasts["for_hour"], utc=True)
    assert set(forecasts.model) == {"ewma"}
    expected_hours = [HOURLY_START + pd.Timedelta(hours=h) for h in range(2, 6)]
    assert sorted(forecasts.for_hour) == expected_hours
    volatility = hourly.realized_volatility.tolist()
    for row in forecasts.itertuples():
        known = int((row.for_hour - HOURLY_START) / pd.Timedelta(hours=1))  # hours 0..known-1 are the history
        assert row.value == pytest.approx(math.sqrt(ewma_variance(volatility[:known])), rel=1e-12)
    # Realized beside the forecast for the final hours 2-4; hour 5 is live: none yet.
    realized = forecasts.set_index("for_hour").realized
    assert realized[expected_hours[:3]].tolist() == pytest.approx(volatility[2:5])
    assert np.isnan(realized[expected_hours[3]])

    # A restarted job (a new stage) finds nothing new to forecast.
    again = ForecastStage(settings)(finalised=0, revised=0)
    assert (again.written, again.realized) == (0, 0)

    # Hour 5 becomes final (revised values), hour 6 arrives final too: two forecasts, hour 5's realized value.
    later = hourly_frame(hours=7, symbols=("BTCUSDT",)).iloc[5:].copy()
    later["realized_volatility"] = [0.02, 0.03]
    later["is_final"] = True
    write_table(settings, HOURLY_DATASET, pd.concat([hourly.iloc[:5], later]), mode="overwrite")
    stage = ForecastStage(settings)
    stage(finalised=0, revised=0)
    assert stage(finalised=0, revised=0).written == 0  # nothing finalised since: no read, no write
    forecasts = read_table(settings, "forecasts")
    forecasts["for_hour"] = pd.to_datetime(forecasts["for_hour"], utc=True)
    assert not forecasts.duplicated(["symbol", "model", "for_hour"]).any()
    by_hour = forecasts.set_index("for_hour")
    assert sorted(by_hour.index) == [HOURLY_START + pd.Timedelta(hours=h) for h in range(2, 8)]
    assert by_hour.loc[HOURLY_START + pd.Timedelta(hours=5), "realized"] == pytest.approx(0.02)
    assert by_hour.loc[HOURLY_START + pd.Timedelta(hours=6), "realized"] == pytest.approx(0.03)
    seven = by_hour.loc[HOURLY_START + pd.Timedelta(hours=7)]
    assert np.isnan(seven.realized)
    assert seven.value == pytest.approx(math.sqrt(ewma_variance(volatility[:5] + [0.02, 0.03])), rel=1e-12)
