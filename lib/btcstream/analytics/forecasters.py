"""Variance forecasters with one interface: `fit(history)` estimates, `update(history)` conditions, `predict()` forecasts.

`history` is the realized-variance series up to and including the last closed period (a pd.Series on a
UTC index, see `btcstream.analytics.realized`); `covariates` (optional) a frame on the same index with
`log_return` (GARCH needs it) and `spread_bps`, `trade_imbalance`, `volume` (the learned model uses those
present). `predict()` returns the variance of the next period. A forecaster only ever sees what it is
given: the walk-forward evaluation (`btcstream.analytics.evaluation`) passes the past only.

- `Ewma`: RiskMetrics, s_0 = RV_0, s_t = lambda s_{t-1} + (1 - lambda) RV_t, forecast s_T (lambda 0.94).
- `HarRv`: RV_{t+1} = b0 + b1 RV_t + b2 mean(RV_{t-w2+1..t}) + b3 mean(RV_{t-w3+1..t}), OLS (numpy lstsq);
  windows (1, 7, 30) days at the daily horizon, (1, 24, 168) hours at the hourly one.
- `Garch11`: r_t = e_t, sigma2_t = omega + alpha r_{t-1}^2 + beta sigma2_{t-1}, fitted by `arch` (normal
  likelihood) on returns scaled to unit training variance; forecast omega + alpha r_T^2 + beta sigma2_T.
- `GradientBoosting`: scikit-learn HistGradientBoostingRegressor on ln RV_{t+1} from lagged ln RV, HAR-style
  trailing means and the covariates; forecast exp(y_hat + s^2 / 2), s^2 the training residual variance.

HAR-RV and gradient-boosting forecasts are floored at `FORECAST_FLOOR` times the training mean (an OLS line
can cross zero, QLIKE cannot); EWMA and GARCH are positive by construction.
Not for: losses or the walk-forward loop (`evaluation`), reading data (`realized`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Protocol

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from btcstream.names import FORECAST_MODELS

log = logging.getLogger(__name__)

RISKMETRICS_LAMBDA = 0.94
FORECAST_FLOOR = 1e-3  # of the training mean variance
HAR_WINDOWS: dict[str, tuple[int, int, int]] = {"1h": (1, 24, 168), "1d": (1, 7, 30)}
LEARNED_LAGS = 3


class Forecaster(Protocol):
    """What the walk-forward evaluation needs of a model."""

    name: str

    def fit(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "Forecaster":
        """Estimate the parameters on `history` and condition on it."""

    def update(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "Forecaster":
        """Keep the parameters, condition on a longer `history` (cheap; between refits)."""

    def predict(self) -> float:
        """The variance forecast for the period after the last one of `history`."""


def _values(history: pd.Series) -> np.ndarray:
    values = np.asarray(history, dtype=np.float64)
    if len(values) == 0 or not np.all(np.isfinite(values)):
        raise ValueError("history must be a non-empty series of finite variances")
    return values


class Ewma:
    """RiskMetrics exponentially weighted variance: s_t = lambda s_{t-1} + (1 - lambda) RV_t, s_0 = RV_0."""

    name = "ewma"

    def __init__(self, decay: float = RISKMETRICS_LAMBDA) -> None:
        self.decay = decay
        self.level_: float = float("nan")

    def fit(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "Ewma":
        values = _values(history)
        # lfilter runs y_t = decay y_{t-1} + (1 - decay) x_t; zi starts it so that y_0 = RV_0.
        smoothed, _ = lfilter([1.0 - self.decay], [1.0, -self.decay], values[1:], zi=[self.decay * values[0]])
        self.level_ = float(smoothed[-1]) if len(smoothed) else float(values[0])
        return self

    update = fit

    def predict(self) -> float:
        return self.level_


class HarRv:
    """Heterogeneous autoregressive model of realized variance (Corsi 2009), on variances, by OLS.

    Regressors at t: RV_t, mean of the last w2 and of the last w3 values; target RV_{t+1}.
    """

    name = "har_rv"

    def __init__(self, windows: tuple[int, int, int] = HAR_WINDOWS["1d"]) -> None:
        self.windows = windows
        self.coefficients_: np.ndarray | None = None
        self.floor_: float = 0.0
        self.regressors_: np.ndarray | None = None

    def _design(self, values: np.ndarray) -> np.ndarray:
        """Rows t = w3-1 .. n-1: [1, mean of the last w of RV up to t for each window]."""
        cumulative = np.r_[0.0, np.cumsum(values)]
        start = max(self.windows) - 1
        ends = np.arange(start, len(values)) + 1
        columns = [np.ones(len(ends))] + [(cumulative[ends] - cumulative[ends - w]) / w for w in self.windows]
        return np.column_stack(columns)

    def fit(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "HarRv":
        values = _values(history)
        if len(values) < max(self.windows) + 10:
            raise ValueError(f"HAR-RV needs at least {max(self.windows) + 10} observations, got {len(values)}")
        design = self._design(values)
        self.coefficients_, *_ = np.linalg.lstsq(design[:-1], values[max(self.windows):], rcond=None)
        self.floor_ = FORECAST_FLOOR * float(values.mean())
        return self.update(history)

    def update(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "HarRv":
        values = _values(history)[-max(self.windows):]
        self.regressors_ = self._design(values)[-1]
        return self

    def predict(self) -> float:
        if self.coefficients_ is None or self.regressors_ is None:
            raise RuntimeError("fit the model first")
        return max(float(self.regressors_ @ self.coefficients_), self.floor_)


class Garch11:
    """GARCH(1,1) with zero mean and normal errors, estimated by `arch` on returns scaled to unit variance."""

    name = "garch11"

    def __init__(self) -> None:
        self.omega_ = self.alpha_ = self.beta_ = float("nan")
        self.scale_ = 1.0
        self.initial_variance_ = float("nan")
        self.variance_ = float("nan")

    @staticmethod
    def _returns(history: pd.Series, covariates: pd.DataFrame | None) -> np.ndarray:
        if covariates is None or "log_return" not in covariates.columns:
            raise ValueError("GARCH(1,1) needs covariates with a log_return column")
        # A missing return (after a gap) counts as zero: no news, the variance decays towards omega / (1 - beta).
        return np.nan_to_num(covariates["log_return"].reindex(history.index).to_numpy(dtype=np.float64))

    def fit(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "Garch11":
        from arch import arch_model  # imported here: arch pulls in statsmodels, slow to load for other commands

        returns = self._returns(history, covariates)
        self.scale_ = 1.0 / float(np.std(returns)) if np.std(returns) > 0 else 1.0
        scaled = returns * self.scale_
        model = arch_model(scaled, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; a failed fit is checked below
            result = model.fit(disp="off", show_warning=False)
        self.omega_, self.alpha_, self.beta_ = (float(result.params[name]) for name in ("omega", "alpha[1]", "beta[1]"))
        backcast = float(model.volatility.backcast(scaled))  # arch's start: sigma2_0 from backcast values
        self.initial_variance_ = self.omega_ + (self.alpha_ + self.beta_) * backcast
        return self._condition(scaled)

    def update(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "Garch11":
        return self._condition(self._returns(history, covariates) * self.scale_)

    def _condition(self, scaled: np.ndarray) -> "Garch11":
        """sigma2_{t+1} = omega + alpha r_t^2 + beta sigma2_t over the whole history, from arch's sigma2_0."""
        squared = scaled ** 2
        # IIR form of the recursion: y_t = beta y_{t-1} + alpha x_t, plus the constant omega / (1 - beta) part.
        persistence = self.beta_
        constant = self.omega_ / (1.0 - persistence) if persistence < 1 else 0.0
        start = self.initial_variance_ - constant
        filtered, _ = lfilter([self.alpha_], [1.0, -persistence], squared, zi=[persistence * start])
        self.variance_ = float(filtered[-1] + constant)
        return self

    def predict(self) -> float:
        return self.variance_ / self.scale_ ** 2

    @property
    def unscaled_omega(self) -> float:
        """omega in the units of the returns (the fit ran on returns times `scale_`)."""
        return self.omega_ / self.scale_ ** 2


class GradientBoosting:
    """HistGradientBoostingRegressor on ln RV: features at t are ln RV_t .. ln RV_{t-LEARNED_LAGS+1}, ln of the
    trailing means over the HAR windows, and the covariates present (spread_bps, trade_imbalance, ln of volume
    over its trailing mean). Every statistic (the residual variance of the log bias correction) comes from
    the training window only; features at t use values up to t only.
    """

    name = "gradient_boosting"

    def __init__(self, windows: tuple[int, int, int] = HAR_WINDOWS["1d"], random_state: int = 0,
                 max_iter: int = 150) -> None:
        self.windows = windows
        self.random_state = random_state
        self.max_iter = max_iter
        self.model_ = None
        self.residual_variance_ = float("nan")
        self.training_end_: pd.Timestamp | None = None
        self.floor_ = 0.0
        self.last_features_: np.ndarray | None = None

    def features(self, history: pd.Series, covariates: pd.DataFrame | None) -> pd.DataFrame:
        """One row per time t of `history`, built from values at or before t only."""
        log_variance = np.log(history.astype(float))
        columns: dict[str, pd.Series] = {f"log_rv_lag{lag}": log_variance.shift(lag) for lag in range(LEARNED_LAGS)}
        for window in self.windows[1:]:
            columns[f"log_rv_mean{window}"] = np.log(history.rolling(window, min_periods=1).mean())
        if covariates is not None:
            aligned = covariates.reindex(history.index)
            for name in ("spread_bps", "trade_imbalance"):
                if name in aligned.columns and aligned[name].notna().any():
                    columns[name] = aligned[name].astype(float)
            if "volume" in aligned.columns and aligned["volume"].notna().any():
                volume = aligned["volume"].astype(float)
                trailing = volume.rolling(self.windows[-1], min_periods=1).mean()
                with np.errstate(divide="ignore", invalid="ignore"):
                    columns["log_volume_ratio"] = np.log(volume / trailing)
        return pd.DataFrame(columns, index=history.index).replace([np.inf, -np.inf], np.nan)

    def fit(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "GradientBoosting":
        from sklearn.ensemble import HistGradientBoostingRegressor

        values = _values(history)
        features = self.features(history, covariates)
        target = np.log(values[1:])
        model = HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=0.05, max_leaf_nodes=15,
                                              min_samples_leaf=50, l2_regularization=1.0,
                                              random_state=self.random_state, early_stopping=False)
        model.fit(features.iloc[:-1].to_numpy(), target)
        residuals = target - model.predict(features.iloc[:-1].to_numpy())
        self.model_ = model
        self.residual_variance_ = float(np.var(residuals))
        self.training_end_ = history.index[-1]
        self.floor_ = FORECAST_FLOOR * float(values.mean())
        self.last_features_ = features.iloc[-1:].to_numpy()
        return self

    def update(self, history: pd.Series, covariates: pd.DataFrame | None = None) -> "GradientBoosting":
        tail = max(self.windows) + LEARNED_LAGS
        recent = history.iloc[-tail:]
        self.last_features_ = self.features(recent, None if covariates is None else covariates.reindex(
            recent.index)).iloc[-1:].to_numpy()
        return self

    def predict(self) -> float:
        if self.model_ is None or self.last_features_ is None:
            raise RuntimeError("fit the model first")
        log_forecast = float(self.model_.predict(self.last_features_)[0])
        return max(float(np.exp(log_forecast + 0.5 * self.residual_variance_)), self.floor_)


MODEL_NAMES: tuple[str, ...] = (Ewma.name, HarRv.name, Garch11.name, GradientBoosting.name)
assert MODEL_NAMES == FORECAST_MODELS, "btcstream.names.FORECAST_MODELS must name the models in this order"


def default_models(horizon: str) -> list[Forecaster]:
    """EWMA, HAR-RV, GARCH(1,1) and the learned model, with the windows of `horizon` ("1h" or "1d")."""
    windows = HAR_WINDOWS[horizon]
    return [Ewma(), HarRv(windows), Garch11(), GradientBoosting(windows)]
