"""The job's live forecasts: when an hour becomes final, each model's forecast of the next hour.

After a batch's hourly upsert has finalised (or revised) hours, `ForecastStage` reads the final
hourly rows, and for each symbol and each final hour H that has no forecast yet (the hours after
the newest `for_hour` of the symbol in `<root>/forecasts`, at most `CATCH_UP_HOURS` of them) it asks
every model of `Settings.forecast_models` for the variance of hour H + 1, from the final hours up to
H only (`btcstream.analytics.realized.hourly_from_metrics`: variance = realized_volatility^2). The
row stores value = sqrt(variance forecast): a volatility, in the units of realized_volatility.

A model is refitted every `forecast_refit_hours` new hours and only conditioned on the longer
history in between (`fit` / `update` of `btcstream.analytics.forecasters`). A model whose history
is still shorter than `MIN_HISTORY_HOURS` makes no forecast (counted, `waiting`).

Realized beside the forecast: every forecast row whose `for_hour` is final gets that hour's
realized_volatility (and a revision of the hour updates it), so value - realized is the error.

Written with one Delta MERGE (delta-rs, in the driver) keyed on (symbol, model, for_hour): a forecast is inserted once and
never changed, so a batch replayed after a crash, or a restart, writes each hour's forecast once.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from btcstream.names import FORECASTS_COLUMNS, FORECASTS_DATASET
from btcstream.settings import Settings
from btcstream.storage.readers import read_forecasts, read_hourly_metrics

if TYPE_CHECKING:
    from btcstream.analytics.forecasters import Forecaster

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
CATCH_UP_HOURS = 48  # a job that finds more final hours without forecasts forecasts only the newest this many
# Final hours of history a model needs before its first forecast (HAR-RV: its 168-hour mean plus 10
# observations to fit four coefficients; GARCH and the learned model: enough to fit, see forecasters).
MIN_HISTORY_HOURS = {"ewma": 2, "har_rv": 178, "garch11": 100, "gradient_boosting": 200}
COMMIT_RETRIES = 5


def _arrow_schema():
    """The forecasts table's Arrow schema (`btcstream.names.FORECASTS_COLUMNS`), times UTC."""
    import pyarrow as pa

    moment = pa.timestamp("us", tz="UTC")
    return pa.schema([("symbol", pa.string()), ("model", pa.string()), ("made_at", moment), ("for_hour", moment),
                      ("value", pa.float64()), ("realized", pa.float64()), ("updated_at", moment)])


@dataclass(frozen=True)
class ForecastCounts:
    """What one call wrote."""

    written: int = 0  # new forecast rows
    realized: int = 0  # rows whose realized value was filled or changed
    waiting: int = 0  # (symbol, model, hour) forecasts not made: history shorter than MIN_HISTORY_HOURS


@dataclass
class _Fitted:
    model: Forecaster
    fitted_on: int  # history length at the last fit


class ForecastStage:
    """Keeps the fitted models across batches; `__call__` after each batch's hourly upsert."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.storage_url(FORECASTS_DATASET)
        self.models = settings.forecast_model_names
        self.fitted: dict[tuple[str, str], _Fitted] = {}
        self.checked = False  # the tables were compared once since the start (catch-up after a restart)

    def __call__(self, finalised: int, revised: int) -> ForecastCounts:
        """Forecast the hours after newly final ones; fill realized values. Nothing to do: no read at all."""
        if not self.models or (self.checked and not finalised and not revised):
            return ForecastCounts()
        self.checked = True
        started = time.perf_counter()
        hourly = read_hourly_metrics(self.settings, engine="pyarrow")
        if hourly.empty:
            return ForecastCounts()
        final = hourly[hourly["is_final"].astype(bool)]
        stored = read_forecasts(self.settings, engine="pyarrow")
        now = datetime.now(timezone.utc)
        new_rows: list[dict] = []
        waiting = 0
        for symbol, rows in final.groupby("symbol"):
            made, skipped = self._forecast_symbol(str(symbol), rows, stored, now)
            new_rows.extend(made)
            waiting += skipped
        updates = _realized_updates(stored, final, now)
        for row in new_rows:  # a catch-up forecast whose hour is already final gets its realized value at once
            row["realized"] = _realized_of(final, row["symbol"], row["for_hour"])
        if new_rows or updates:
            self._merge(new_rows + updates)
        counts = ForecastCounts(written=len(new_rows), realized=len(updates), waiting=waiting)
        log.info("forecasts: %d written, %d realized values, %d waiting for history (%.2f s)", counts.written,
                 counts.realized, counts.waiting, time.perf_counter() - started)
        return counts

    def _forecast_symbol(self, symbol: str, final: pd.DataFrame, stored: pd.DataFrame,
                         now: datetime) -> tuple[list[dict], int]:
        """The new forecast rows of one symbol, and how many were not made for lack of history."""
        from btcstream.analytics.realized import hourly_from_metrics

        hours = sorted(pd.to_datetime(final["window_start"], utc=True))
        mine = stored[stored["symbol"] == symbol] if not stored.empty else stored
        newest = pd.to_datetime(mine["for_hour"], utc=True).max() if not mine.empty else None
        due = [hour for hour in hours if newest is None or hour + HOUR > newest][-CATCH_UP_HOURS:]
        if not due:
            return [], 0
        quiet = logging.getLogger("btcstream.analytics.realized")  # it warns of gaps: status reports those
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                series = hourly_from_metrics(final, symbol).frame
        finally:
            quiet.setLevel(level)
        rows, waiting = [], 0
        for hour in due:
            history = series[series.index <= hour]
            for name in self.models:
                if len(history) < MIN_HISTORY_HOURS[name]:
                    waiting += 1
                    continue
                variance = self._predict(symbol, name, history)
                if variance is None or not math.isfinite(variance) or variance < 0:
                    waiting += 1
                    continue
                rows.append({"symbol": symbol, "model": name, "made_at": now, "for_hour": (hour + HOUR).to_pydatetime(),
                             "value": math.sqrt(variance), "realized": None, "updated_at": now})
        return rows, waiting

    def _predict(self, symbol: str, name: str, history: pd.DataFrame) -> float | None:
        """The model's variance forecast after `history`: refitted every forecast_refit_hours, else updated."""
        import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime, so the thread limit below applies to it
        from threadpoolctl import threadpool_limits

        key = (symbol, name)
        variance, covariates = history["variance"], history.drop(columns="variance")
        fitted = self.fitted.get(key)
        try:
            # One thread: a forecast predicts one row, and OpenMP threads fighting the job's own for two
            # cores made the learned model's steps many times slower (see evaluation.evaluate_recent).
            with threadpool_limits(limits=1):
                return self._fit_or_update(key, name, fitted, variance, covariates, len(history))
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as error:
            log.info("forecasts: %s %s cannot forecast yet: %s", symbol, name, error)
            return None

    def _fit_or_update(self, key: tuple[str, str], name: str, fitted: _Fitted | None, variance: pd.Series,
                       covariates: pd.DataFrame, length: int) -> float:
        from btcstream.analytics.forecasters import default_models

        """Refit when due (never fitted, or `forecast_refit_hours` more hours since the fit), else update; predict."""
        if fitted is None or length - fitted.fitted_on >= self.settings.forecast_refit_hours:
            model = fitted.model if fitted is not None else copy.deepcopy(_model(default_models("1h"), name))
            model.fit(variance, covariates)
            self.fitted[key] = _Fitted(model, length)
        else:
            fitted.model.update(variance, covariates)
        return float(self.fitted[key].model.predict())

    def _merge(self, rows: list[dict]) -> None:
        """Insert new forecasts; set realized where it is missing or changed. Keyed on (symbol, model, for_hour).

        A delta-rs MERGE in the driver: the rows are few (models x symbols per hour), and a Spark MERGE
        (three jobs) cost seconds of the batch where this costs a file write. Retried when a concurrent
        commit (an OPTIMIZE by `btcstream compact`) conflicts: the MERGE is idempotent.
        """
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import CommitFailedError

        source = pa.Table.from_pylist([{column: row[column] for column in FORECASTS_COLUMNS} for row in rows],
                                      schema=_arrow_schema())
        for attempt in range(1, COMMIT_RETRIES + 1):
            try:
                if not DeltaTable.is_deltatable(self.url):
                    write_deltalake(self.url, source, mode="append")
                    return
                (DeltaTable(self.url)
                 .merge(source, "t.symbol = s.symbol AND t.model = s.model AND t.for_hour = s.for_hour",
                        source_alias="s", target_alias="t")
                 .when_matched_update({"realized": "s.realized", "updated_at": "s.updated_at"},
                                      predicate="s.realized IS NOT NULL AND (t.realized IS NULL OR t.realized <> s.realized)")
                 .when_not_matched_insert_all()
                 .execute())
                return
            except CommitFailedError:
                if attempt == COMMIT_RETRIES:
                    raise
                log.info("forecasts: MERGE conflicted with a concurrent commit; retrying (%d/%d)", attempt, COMMIT_RETRIES)
                time.sleep(0.2 * attempt)


def _model(models: list[Forecaster], name: str) -> Forecaster:
    return next(model for model in models if model.name == name)


def _realized_of(final: pd.DataFrame, symbol: str, hour: datetime) -> float | None:
    match = final[(final["symbol"] == symbol) & (final["window_start"] == pd.Timestamp(hour))]
    value = None if match.empty else match["realized_volatility"].iloc[-1]
    return float(value) if value is not None and pd.notna(value) else None


def _realized_updates(stored: pd.DataFrame, final: pd.DataFrame, now: datetime) -> list[dict]:
    """Stored forecast rows whose hour is final and whose realized value is missing or differs."""
    if stored.empty:
        return []
    realized = (final[["symbol", "window_start", "realized_volatility"]].dropna()
                .rename(columns={"window_start": "for_hour"}))
    joined = stored.merge(realized, on=["symbol", "for_hour"], how="inner")
    changed = joined[joined["realized"].isna() | (joined["realized"] != joined["realized_volatility"])]
    return [{"symbol": row.symbol, "model": row.model, "made_at": row.made_at.to_pydatetime(),
             "for_hour": row.for_hour.to_pydatetime(), "value": float(row.value),
             "realized": float(row.realized_volatility), "updated_at": now} for row in changed.itertuples()]
