"""The forecasters against hand-computed values: EWMA recursion, HAR-RV design and OLS, GARCH(1,1) recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from arch import arch_model

from btcstream.analytics.forecasters import (Ewma, Garch11, GradientBoosting, HarRv, MODEL_NAMES,
                                             default_models)


def hourly(values, start: str = "2024-01-01") -> pd.Series:
    return pd.Series(np.asarray(values, dtype=float),
                     index=pd.date_range(start, periods=len(values), freq="h", tz="UTC"))


def test_ewma_follows_the_riskmetrics_recursion() -> None:
    # s0 = 4; s1 = 0.94 * 4 + 0.06 * 1 = 3.82; s2 = 0.94 * 3.82 + 0.06 * 9 = 4.1308
    assert Ewma().fit(hourly([4.0, 1.0, 9.0])).predict() == pytest.approx(4.1308, rel=1e-12)
    assert Ewma(decay=0.5).fit(hourly([1.0, 2.0, 3.0])).predict() == pytest.approx(2.25, rel=1e-12)
    assert Ewma().fit(hourly([7.0])).predict() == 7.0


def test_har_design_rows_are_the_trailing_means() -> None:
    model = HarRv(windows=(1, 2, 3))
    design = model._design(np.arange(1.0, 7.0))
    assert design.shape == (4, 4)
    np.testing.assert_allclose(design[0], [1.0, 3.0, 2.5, 2.0])  # t = 2: RV_2, mean(2, 3), mean(1, 2, 3)
    np.testing.assert_allclose(design[-1], [1.0, 6.0, 5.5, 5.0])


def test_har_recovers_its_coefficients_and_forecasts_with_them() -> None:
    generator = np.random.default_rng(7)
    values = [1.0] * 30
    for _ in range(3000):
        last = np.array(values)
        expected = 0.2 + 0.3 * last[-1] + 0.25 * last[-7:].mean() + 0.2 * last[-30:].mean()
        values.append(expected * generator.gamma(20.0, 1 / 20.0))  # mean-one multiplicative noise
    model = HarRv(windows=(1, 7, 30)).fit(hourly(values))
    np.testing.assert_allclose(model.coefficients_, [0.2, 0.3, 0.25, 0.2], atol=0.08)
    last = np.array(values)
    expected = model.coefficients_ @ [1.0, last[-1], last[-7:].mean(), last[-30:].mean()]
    assert model.predict() == pytest.approx(expected, rel=1e-12)


def simulate_garch(count: int, omega: float, alpha: float, beta: float, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    variance = omega / (1 - alpha - beta)
    returns = np.empty(count)
    for index in range(count):
        returns[index] = np.sqrt(variance) * generator.standard_normal()
        variance = omega + alpha * returns[index] ** 2 + beta * variance
    return returns


def test_garch_recovers_the_parameters_of_simulated_garch_data() -> None:
    omega, alpha, beta = 2e-6, 0.08, 0.90  # hourly-like scale: unconditional variance 1e-4
    returns = simulate_garch(3000, omega, alpha, beta, seed=11)
    index = pd.date_range("2024-01-01", periods=len(returns), freq="h", tz="UTC")
    model = Garch11().fit(pd.Series(returns ** 2, index=index), pd.DataFrame({"log_return": returns}, index=index))
    assert model.alpha_ == pytest.approx(alpha, abs=0.03)
    assert model.beta_ == pytest.approx(beta, abs=0.04)
    assert model.unscaled_omega / (1 - model.alpha_ - model.beta_) == pytest.approx(1e-4, rel=0.25)


def test_garch_forecast_equals_arch_one_step_forecast() -> None:
    returns = simulate_garch(800, 0.05, 0.1, 0.85, seed=3)
    index = pd.date_range("2024-01-01", periods=len(returns), freq="D", tz="UTC")
    model = Garch11().fit(pd.Series(returns ** 2, index=index), pd.DataFrame({"log_return": returns}, index=index))
    scaled = returns * model.scale_
    result = arch_model(scaled, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fit(disp="off")
    expected = float(result.forecast(horizon=1).variance.iloc[-1, 0]) / model.scale_ ** 2
    assert model.predict() == pytest.approx(expected, rel=1e-4)


def test_garch_needs_returns() -> None:
    with pytest.raises(ValueError, match="log_return"):
        Garch11().fit(hourly([1.0, 2.0, 3.0]))


def test_learned_features_at_t_use_values_up_to_t_only() -> None:
    generator = np.random.default_rng(5)
    history = hourly(generator.gamma(2.0, 1e-5, 400))
    covariates = pd.DataFrame({"volume": generator.gamma(2.0, 100.0, 400),
                               "spread_bps": generator.normal(1.0, 0.1, 400)}, index=history.index)
    model = GradientBoosting(windows=(1, 24, 168))
    changed = history.copy()
    changed.iloc[300:] *= 50.0
    changed_covariates = covariates.copy()
    changed_covariates.iloc[300:] *= 50.0
    pd.testing.assert_frame_equal(model.features(history, covariates).iloc[:300],
                                  model.features(changed, changed_covariates).iloc[:300])


def test_learned_model_updates_to_the_same_features_as_a_fit() -> None:
    generator = np.random.default_rng(9)
    history = hourly(generator.gamma(2.0, 1e-5, 500))
    fitted = GradientBoosting(windows=(1, 24, 168), max_iter=20).fit(history)
    updated = GradientBoosting(windows=(1, 24, 168), max_iter=20).fit(history.iloc[:450]).update(history)
    np.testing.assert_allclose(updated.last_features_, fitted.last_features_)
    assert updated.training_end_ == history.index[449]
    assert np.isfinite(fitted.predict()) and fitted.predict() > 0


def test_default_models_are_the_four_of_the_issue() -> None:
    assert [model.name for model in default_models("1h")] == list(MODEL_NAMES)
    assert default_models("1d")[1].windows == (1, 7, 30) and default_models("1h")[1].windows == (1, 24, 168)
