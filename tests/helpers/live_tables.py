"""The live forecasts and alerts tables as the streaming job writes them, written without a JVM.

Columns and types from `btcstream.names` (FORECASTS_COLUMNS, ALERTS_COLUMNS; the alerts table is
partitioned by the UTC date of `time`), for the reader, plot and notebook tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from btcstream.names import (ALERTS_COLUMNS, ALERTS_DATASET, ALERTS_PARTITION_COLUMNS, FORECAST_MODELS,
                             FORECASTS_COLUMNS, FORECASTS_DATASET)
from btcstream.settings import Settings
from helpers.delta_tables import UTC_MICROS

FORECASTS_SCHEMA = pa.schema([
    ("symbol", pa.string()), ("model", pa.string()), ("made_at", UTC_MICROS), ("for_hour", UTC_MICROS),
    ("value", pa.float64()), ("realized", pa.float64()), ("updated_at", UTC_MICROS)])
ALERTS_SCHEMA = pa.schema([
    ("symbol", pa.string()), ("time", UTC_MICROS), ("metric", pa.string()), ("value", pa.float64()),
    ("baseline", pa.float64()), ("mad", pa.float64()), ("z", pa.float64()), ("detected_at", UTC_MICROS),
    ("date", pa.date32())])
assert FORECASTS_SCHEMA.names == list(FORECASTS_COLUMNS)
assert ALERTS_SCHEMA.names == list(ALERTS_COLUMNS + ALERTS_PARTITION_COLUMNS)


def forecasts_frame(start: datetime, hours: int, symbols: Sequence[str] = ("BTCUSDT",),
                    models: Sequence[str] = FORECAST_MODELS, seed: int = 7) -> pd.DataFrame:
    """One forecast per symbol, model and hour from `start`; every hour realized except the last (in progress)."""
    generator = np.random.default_rng(seed)
    rows = []
    for symbol in symbols:
        for hour in range(hours):
            for_hour = start + timedelta(hours=hour)
            realized = float(generator.uniform(0.002, 0.01)) if hour < hours - 1 else None
            for model in models:
                rows.append({"symbol": symbol, "model": model, "made_at": for_hour - timedelta(minutes=2),
                             "for_hour": for_hour, "value": float(generator.uniform(0.002, 0.01)),
                             "realized": realized,
                             "updated_at": for_hour + timedelta(hours=1, minutes=3) if realized else for_hour})
    return pd.DataFrame(rows, columns=list(FORECASTS_COLUMNS))


def alerts_frame(times: Sequence[datetime], symbol: str = "BTCUSDT",
                 metrics: Sequence[str] = ("spread_bps", "volatility_1m", "trade_imbalance")) -> pd.DataFrame:
    """One alert per time, the metrics taken in turn; z = (value - baseline) / (1.4826 mad)."""
    rows = []
    for i, moment in enumerate(times):
        baseline, mad, value = 1.0 + i, 0.1, 3.0 + 2 * i
        rows.append({"symbol": symbol, "time": moment, "metric": metrics[i % len(metrics)], "value": value,
                     "baseline": baseline, "mad": mad, "z": (value - baseline) / (1.4826 * mad),
                     "detected_at": moment + timedelta(minutes=1, seconds=5)})
    return pd.DataFrame(rows, columns=list(ALERTS_COLUMNS))


def write_forecasts(settings: Settings, frame: pd.DataFrame, mode: str = "append") -> int:
    """Write forecast rows to `<root>/forecasts`; returns the table's new version."""
    from deltalake import DeltaTable, write_deltalake

    url = settings.storage_url(FORECASTS_DATASET)
    write_deltalake(url, pa.Table.from_pandas(frame[FORECASTS_SCHEMA.names], schema=FORECASTS_SCHEMA,
                                              preserve_index=False), mode=mode)
    return DeltaTable(url).version()


def write_alerts(settings: Settings, frame: pd.DataFrame, mode: str = "append") -> int:
    """Write alert rows to `<root>/alerts`, partitioned by the UTC date of `time`; returns the new version."""
    from deltalake import DeltaTable, write_deltalake

    rows = frame.assign(date=pd.to_datetime(frame["time"], utc=True).dt.date)
    url = settings.storage_url(ALERTS_DATASET)
    write_deltalake(url, pa.Table.from_pandas(rows[ALERTS_SCHEMA.names], schema=ALERTS_SCHEMA, preserve_index=False),
                    partition_by=list(ALERTS_PARTITION_COLUMNS), mode=mode)
    return DeltaTable(url).version()


def utc(text: str) -> datetime:
    """`"2025-02-14T21:05"` as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
