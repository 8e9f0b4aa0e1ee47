"""Walk-forward evaluation of variance forecasters: expanding window, refit every k steps, losses and a DM test.

At each origin i (from `min_train` to the end) every model sees the periods 0..i-1 only and forecasts
period i; it is refitted (`fit`) at the first origin and every `refit_every` origins after, and between
refits only conditioned on the longer history (`update`). Forecasts are compared with the realized
variance RV of the period (both variances):

- QLIKE:  L = RV / F - ln(RV / F) - 1   (0 for a perfect forecast; robust to noise in RV, Patton 2011)
- MSE:    L = (RV - F)^2
- Mincer-Zarnowitz R^2: the R^2 of the OLS regression RV_t = a + b F_t + e_t (= corr(RV, F)^2)
- Diebold-Mariano against HAR-RV on QLIKE: d_t = L_model,t - L_har,t, DM = mean(d) / sqrt(S / T), S the
  Newey-West long-run variance of d with Bartlett weights 1 - j / (L + 1), j = 1..L,
  L = floor(4 (T / 100)^(2/9)); p-value two-sided from the normal, 2 (1 - Phi(|DM|)). DM < 0: the model's
  losses are lower than HAR-RV's.

Not for: the models themselves (`forecasters`) or reading data (`realized`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from btcstream.analytics.forecasters import Forecaster, HarRv
from btcstream.analytics.realized import PERIOD, ForecastDataError, RealizedSeries

log = logging.getLogger(__name__)

FORECAST_COLUMNS: tuple[str, ...] = ("model", "made_at", "target_time", "forecast", "realized")
METRIC_COLUMNS: tuple[str, ...] = ("model", "qlike", "mse", "mz_r2", "dm_stat", "dm_pvalue")
BENCHMARK_MODEL = HarRv.name
PROGRESS_EVERY_S = 10.0


def qlike(realized: np.ndarray | float, forecast: np.ndarray | float) -> np.ndarray:
    """QLIKE loss RV / F - ln(RV / F) - 1 per forecast (variances, both > 0)."""
    ratio = np.asarray(realized, dtype=float) / np.asarray(forecast, dtype=float)
    return ratio - np.log(ratio) - 1.0


def squared_error(realized: np.ndarray | float, forecast: np.ndarray | float) -> np.ndarray:
    """(RV - F)^2 per forecast."""
    return (np.asarray(realized, dtype=float) - np.asarray(forecast, dtype=float)) ** 2


def mincer_zarnowitz_r2(realized: np.ndarray, forecast: np.ndarray) -> float:
    """R^2 of the OLS regression RV = a + b F + e: 1 - SSR / SST (NaN when either is constant)."""
    realized, forecast = np.asarray(realized, dtype=float), np.asarray(forecast, dtype=float)
    design = np.column_stack([np.ones(len(forecast)), forecast])
    coefficients, *_ = np.linalg.lstsq(design, realized, rcond=None)
    residual = realized - design @ coefficients
    total = float(((realized - realized.mean()) ** 2).sum())
    if total == 0.0 or np.ptp(forecast) == 0.0:
        return float("nan")
    return 1.0 - float((residual ** 2).sum()) / total


def newey_west_lags(count: int) -> int:
    """The usual bandwidth floor(4 (T / 100)^(2/9))."""
    return int(math.floor(4.0 * (count / 100.0) ** (2.0 / 9.0)))


def diebold_mariano(differences: np.ndarray, lags: int | None = None) -> tuple[float, float]:
    """(DM statistic, two-sided normal p-value) of loss differentials d_t: mean(d) / sqrt(S / T), with
    S = gamma_0 + 2 sum_{j=1..L} (1 - j / (L + 1)) gamma_j, gamma_j = mean((d_t - dbar)(d_{t-j} - dbar))."""
    d = np.asarray(differences, dtype=float)
    count = len(d)
    if count < 2:
        return float("nan"), float("nan")
    lags = newey_west_lags(count) if lags is None else lags
    centred = d - d.mean()
    long_run = float(centred @ centred) / count
    for lag in range(1, min(lags, count - 1) + 1):
        long_run += 2.0 * (1.0 - lag / (lags + 1.0)) * float(centred[lag:] @ centred[:-lag]) / count
    if long_run <= 0.0:
        return float("nan"), float("nan")
    statistic = float(d.mean() / math.sqrt(long_run / count))
    return statistic, float(math.erfc(abs(statistic) / math.sqrt(2.0)))  # 2 (1 - Phi(|DM|))


@dataclass
class WalkForward:
    """Every forecast (`FORECAST_COLUMNS`), the time each model spent, and how many refits it had."""

    forecasts: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    refits: dict[str, int] = field(default_factory=dict)
    steps: int = 0


def walk_forward(series: RealizedSeries | pd.DataFrame, models: Sequence[Forecaster], min_train: int,
                 refit_every: int | dict[str, int] = 24, horizon: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> WalkForward:
    """Forecast every period from `min_train` on with each model, from the periods before it only.

    `series` a RealizedSeries (or its frame: `variance` plus covariates on a UTC index); `refit_every` one
    k for all, or per model name (a model missing from the dict: the smallest value given). made_at is the
    end of the last period the model saw, target_time the start of the period forecast (both UTC).
    """
    frame = series.frame if isinstance(series, RealizedSeries) else series
    horizon = series.horizon if isinstance(series, RealizedSeries) else (horizon or "1h")
    if len(frame) <= min_train:
        raise ForecastDataError(f"{len(frame)} periods cannot be evaluated with --min-train {min_train}: "
                             f"give a longer history or a smaller --min-train")
    variance = frame["variance"].astype(float)
    covariates = frame.drop(columns="variance")
    period = PERIOD[horizon]
    models = [copy.deepcopy(model) for model in models]
    every = ({model.name: refit_every for model in models} if isinstance(refit_every, int)
             else {model.name: refit_every.get(model.name, min(refit_every.values())) for model in models})
    seconds = {model.name: 0.0 for model in models}
    refits = {model.name: 0 for model in models}
    rows: list[tuple[str, pd.Timestamp, pd.Timestamp, float, float]] = []
    steps = len(frame) - min_train
    last_report = time.monotonic()
    for step, origin in enumerate(range(min_train, len(frame))):
        history, known = variance.iloc[:origin], covariates.iloc[:origin]
        made_at, target_time, realized = history.index[-1] + period, frame.index[origin], variance.iloc[origin]
        for model in models:
            started = time.perf_counter()
            if step % every[model.name] == 0:
                model.fit(history, known)
                refits[model.name] += 1
            else:
                model.update(history, known)
            rows.append((model.name, made_at, target_time, model.predict(), realized))
            seconds[model.name] += time.perf_counter() - started
        if progress is not None:
            progress(step + 1, steps)
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            log.info("walk-forward: %d of %d origins (%.0f%%)", step + 1, steps, 100.0 * (step + 1) / steps)
            last_report = time.monotonic()
    forecasts = pd.DataFrame(rows, columns=list(FORECAST_COLUMNS))
    return WalkForward(forecasts=forecasts, seconds=seconds, refits=refits, steps=steps)


def metrics(forecasts: pd.DataFrame, benchmark: str = BENCHMARK_MODEL) -> pd.DataFrame:
    """One row per model (`METRIC_COLUMNS`): mean QLIKE, MSE, MZ R^2, and DM against `benchmark` on QLIKE
    (NaN for the benchmark itself or when it is absent). Forecasts are matched on target_time."""
    losses = forecasts.assign(loss=qlike(forecasts["realized"], forecasts["forecast"]))
    reference = losses[losses["model"] == benchmark].set_index("target_time")["loss"]
    rows = []
    for name, group in losses.groupby("model", sort=False):
        statistic = pvalue = float("nan")
        if name != benchmark and len(reference):
            paired = group.set_index("target_time")["loss"].to_frame("model").join(reference.rename("bench"),
                                                                                   how="inner")
            statistic, pvalue = diebold_mariano((paired["model"] - paired["bench"]).to_numpy())
        rows.append((name, float(group["loss"].mean()),
                     float(squared_error(group["realized"], group["forecast"]).mean()),
                     mincer_zarnowitz_r2(group["realized"].to_numpy(), group["forecast"].to_numpy()),
                     statistic, pvalue))
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


# --- for the notebook and the live forecasts table ------------------------------------------------

LOSS_COLUMNS: tuple[str, ...] = ("model", "target_time", "loss", "cumulative_loss")
SLOW_MODELS: tuple[str, ...] = ("garch11", "gradient_boosting")  # a fit costs 0.1-2 s: refitted less often


def evaluate_recent(series: RealizedSeries, models: Sequence[Forecaster], forecasts: int, min_train: int,
                    refit_every: int = 24, slow_refit_every: int = 168) -> WalkForward:
    """Walk-forward over the newest `forecasts` periods of `series` (0: every period after the first `min_train`).

    The evaluation starts `min_train` periods before the first of them (the window then expands), so
    each model is fitted on exactly `min_train` periods first. HAR-RV (and EWMA, whose refit is its
    update) are re-estimated every `refit_every` periods, the `SLOW_MODELS` every `slow_refit_every`.
    Native thread pools (scikit-learn's OpenMP) are held to one thread meanwhile: each step predicts
    one row, and OpenMP threads spinning for a busy CPU made 2,000 steps take 9 min instead of 23 s
    (measured on 2 CPUs at load 9; 12 s on a quiet machine either way).
    """
    import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime now: the limit applies to loaded libraries only
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    if forecasts < 0 or min_train < 1 or refit_every < 1 or slow_refit_every < 1:
        raise ForecastDataError(f"forecasts {forecasts}, min_train {min_train}, refit_every {refit_every}, "
                                f"slow_refit_every {slow_refit_every}: expected forecasts >= 0 and the others >= 1")
    frame = series.frame.iloc[-(forecasts + min_train):] if forecasts else series.frame
    every = {model.name: slow_refit_every if model.name in SLOW_MODELS else refit_every for model in models}
    with threadpool_limits(limits=1):
        return walk_forward(RealizedSeries(frame, series.horizon, series.problems), models, min_train, every)


def from_forecasts_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The live forecasts table's rows (`btcstream.names.FORECASTS_COLUMNS`) as `FORECAST_COLUMNS`.

    The table holds volatilities; here they are variances like the walk-forward's (forecast = value^2,
    realized = realized^2, NaN while the hour is not final), target_time = for_hour. Sorted by
    target_time, then model in the order of `FORECAST_MODELS` (others after, by name), as the
    walk-forward orders them.
    """
    from btcstream.names import FORECAST_MODELS

    rank = {name: index for index, name in enumerate(FORECAST_MODELS)}
    frame = pd.DataFrame({"model": rows["model"].astype(object), "made_at": rows["made_at"],
                          "target_time": rows["for_hour"],
                          "forecast": rows["value"].astype(float) ** 2,
                          "realized": rows["realized"].astype(float) ** 2})
    frame["rank"] = frame["model"].map(lambda name: rank.get(name, len(rank)))
    frame = frame.sort_values(["target_time", "rank", "model"], kind="stable")
    return frame.drop(columns="rank").reset_index(drop=True)


def cumulative_loss(forecasts: pd.DataFrame, common: bool = True) -> pd.DataFrame:
    """Per model and target time, the QLIKE loss and its running sum (`LOSS_COLUMNS`), in time order.

    Only forecasts with a realized value count (both variances > 0). With `common`, only the target
    times every model in `forecasts` has a scored forecast for, so the sums compare like with like:
    the lowest curve is the model with the lowest total loss over the same periods.
    """
    realized, forecast = forecasts["realized"].astype(float), forecasts["forecast"].astype(float)
    scored = forecasts[(realized > 0) & (forecast > 0)]
    if common and len(scored):
        models_per_time = scored.groupby("target_time")["model"].nunique()
        complete = models_per_time[models_per_time == forecasts["model"].nunique()].index
        scored = scored[scored["target_time"].isin(complete)]
    scored = scored.sort_values(["model", "target_time"], kind="stable")
    losses = scored[["model", "target_time"]].assign(loss=qlike(scored["realized"], scored["forecast"]))
    losses["cumulative_loss"] = losses.groupby("model", sort=False)["loss"].cumsum()
    return losses.reset_index(drop=True)[list(LOSS_COLUMNS)]
