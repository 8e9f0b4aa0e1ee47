"""Realized-variance series to forecast: hourly and daily, from a Binance kline CSV or the hourly_metrics frame.

Every series here is a `RealizedSeries`: a frame indexed by the UTC start of each period (hour or day)
with `variance` (the period's realized variance, the quantity the forecasters predict and the losses
compare), `log_return` (the period's close-to-close log return, for GARCH) and, where the source has
them, the covariates `spread_bps`, `trade_imbalance`, `volume`.

- Hourly, from klines (only OHLC exists): the Garman-Klass variance of the bar,
  RV_h = 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2 (or Parkinson, ln(H/L)^2 / (4 ln 2)); see `ohlc_volatility`.
- Hourly, from hourly_metrics: RV_h = realized_volatility^2 (sum of squared mid log returns of the hour).
- Daily, from klines: RV_d = sum over the UTC day's hours of r_h^2, r_h = ln(C_h / C_{h-1}) (hourly
  close-to-close returns); from hourly_metrics: RV_d = sum of the day's RV_h. A day with fewer than
  `MIN_HOURS_PER_DAY` usable hours is dropped; one with n of 24 is scaled by 24 / n.

Bad kline rows never raise: `read_kline_csv` counts them by reason (`non_numeric`, `bad_bar`,
`duplicate_time`, `spike`) and drops them; hours absent from the hourly grid are counted as
`missing_hour` (their returns are NaN: a two-hour return is not an hourly one). Not for: reading Delta
tables (`btcstream.storage.readers`) or forecasting (`btcstream.analytics.forecasters`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from btcstream.analytics.ohlc_volatility import bad_bars, close_to_close, garman_klass, parkinson
from btcstream.errors import BtcstreamError

log = logging.getLogger(__name__)

Horizon = Literal["1h", "1d"]
HORIZONS: tuple[str, ...] = ("1h", "1d")
PERIOD: dict[str, pd.Timedelta] = {"1h": pd.Timedelta(hours=1), "1d": pd.Timedelta(days=1)}
KLINE_COLUMNS: tuple[str, ...] = ("open_time", "open", "high", "low", "close", "volume", "close_time",
                                  "quote_volume", "count")
# Binance's raw kline rows (no header) carry three more columns after `count`.
RAW_KLINE_EXTRA: tuple[str, ...] = ("taker_buy_volume", "taker_buy_quote_volume", "ignore")
SPIKE_LOG_DEVIATION = 0.4  # |ln(price / median of the 7 closes around it)| above this (~49%) is a bad print; real max 0.22
SPIKE_WINDOW = 7
MIN_HOURS_PER_DAY = 20
COVARIATES: tuple[str, ...] = ("spread_bps", "trade_imbalance", "volume")


class ForecastDataError(BtcstreamError):
    """The data to forecast from cannot be used at all (missing file, no usable columns, too short); bad rows are
    counted and dropped instead."""


@dataclass(frozen=True)
class Klines:
    """Usable hourly bars (indexed by UTC open_time) and how many rows were dropped or missing, by reason."""

    bars: pd.DataFrame
    problems: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RealizedSeries:
    """A realized-variance series at one horizon and the data-quality counts behind it."""

    frame: pd.DataFrame  # index: UTC period start; variance, log_return[, spread_bps, trade_imbalance, volume]
    horizon: str
    problems: dict[str, int] = field(default_factory=dict)


def read_kline_csv(path: Path | str) -> Klines:
    """Read a Binance kline CSV: with the header `open_time,open,high,low,close,volume,close_time,quote_volume,count`
    (the shipped history) or Binance's raw 12-column rows without header. Times in ms (or us) since the epoch.

    Rows that are not numbers, bars that break low <= open/close <= high, repeated open times and spikes
    (a price more than SPIKE_LOG_DEVIATION in log from the median of the 7 closes around it) are dropped
    and counted; hours of the grid that no row has are counted as `missing_hour`.
    """
    path = Path(path)
    if not path.is_file():
        raise ForecastDataError(f"kline file {path} does not exist")
    first = path.open(encoding="utf-8", errors="replace").readline()
    has_header = "open_time" in first
    raw = pd.read_csv(path, header=0 if has_header else None, dtype=str, keep_default_na=False,
                      on_bad_lines="skip", engine="python")
    if not has_header:
        names = (*KLINE_COLUMNS, *RAW_KLINE_EXTRA)[: raw.shape[1]]
        raw = raw.iloc[:, : len(names)]
        raw.columns = list(names)
    missing = [name for name in ("open_time", "open", "high", "low", "close") if name not in raw.columns]
    if missing:
        raise ForecastDataError(f"kline file {path} lacks columns {missing}; expected {','.join(KLINE_COLUMNS)}")
    bars, problems = clean_klines(raw)
    _report(problems, len(raw), str(path))
    return Klines(bars=bars, problems=problems)


def clean_klines(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Typed, checked hourly bars from raw kline rows (strings or numbers) and the counts of what was dropped."""
    problems: Counter[str] = Counter()
    numbers = pd.DataFrame({name: pd.to_numeric(raw[name], errors="coerce")
                            for name in ("open_time", "open", "high", "low", "close") if name in raw.columns})
    for name in ("volume", "quote_volume", "count"):
        numbers[name] = pd.to_numeric(raw[name], errors="coerce") if name in raw.columns else np.nan
    non_numeric = numbers[["open_time", "open", "high", "low", "close"]].isna().any(axis=1).to_numpy()
    problems["non_numeric"] = int(non_numeric.sum())
    numbers = numbers[~non_numeric]
    bad = bad_bars(numbers["open"], numbers["high"], numbers["low"], numbers["close"])
    problems["bad_bar"] = int(bad.sum())
    numbers = numbers[~bad]
    unit = "us" if len(numbers) and numbers["open_time"].median() > 1e14 else "ms"
    numbers.index = pd.DatetimeIndex(pd.to_datetime(numbers["open_time"].astype("int64"), unit=unit, utc=True),
                                     name="open_time")
    numbers = numbers.drop(columns="open_time").sort_index(kind="stable")
    duplicated = numbers.index.duplicated(keep="first")
    problems["duplicate_time"] = int(duplicated.sum())
    numbers = numbers[~duplicated]
    spikes = _spikes(numbers)
    problems["spike"] = int(spikes.sum())
    numbers = numbers[~spikes]
    problems["missing_hour"] = _absent_hours(numbers, pd.to_numeric(raw["open_time"], errors="coerce"), unit)
    return numbers, {reason: count for reason, count in problems.items() if count}


def _absent_hours(bars: pd.DataFrame, open_times: pd.Series, unit: str) -> int:
    """Hours of the grid from the first to the last usable bar that no row of the file has (a row dropped
    as bad is counted under its own reason, not here)."""
    if len(bars) < 2:
        return 0
    grid = pd.date_range(bars.index[0], bars.index[-1], freq=PERIOD["1h"])
    present = pd.DatetimeIndex(pd.to_datetime(open_times.dropna().astype("int64"), unit=unit, utc=True))
    return int((~grid.isin(present)).sum())


def _spikes(bars: pd.DataFrame) -> np.ndarray:
    """True for bars whose close, high or low lies more than SPIKE_LOG_DEVIATION (in log) from the centred
    rolling median of closes (the bar itself included: one bad print cannot move a median of 7)."""
    if len(bars) < 3:
        return np.zeros(len(bars), dtype=bool)
    median = bars["close"].rolling(SPIKE_WINDOW, center=True, min_periods=1).median()
    deviation = pd.concat([np.log(bars[name] / median).abs() for name in ("close", "high", "low")], axis=1)
    return (deviation.max(axis=1) > SPIKE_LOG_DEVIATION).to_numpy()


def _report(problems: dict[str, int], rows: int, source: str) -> None:
    if problems:
        log.warning("%s: %d rows read; %s", source, rows,
                    ", ".join(f"{count} {reason}" for reason, count in sorted(problems.items())))


def hourly_from_klines(klines: Klines, estimator: Literal["garman_klass", "parkinson"] = "garman_klass"
                       ) -> RealizedSeries:
    """Hourly series from bars: variance = the bar's Garman-Klass (or Parkinson) variance; log_return =
    ln(C_t / C_{t-1}), NaN after a missing hour; volume the bar's base volume."""
    bars = klines.bars
    if estimator == "garman_klass":
        volatility = garman_klass(bars["open"], bars["high"], bars["low"], bars["close"])
    else:
        volatility = parkinson(bars["high"], bars["low"])
    returns = close_to_close(bars["close"])
    follows = np.r_[False, np.diff(bars.index.asi8) == PERIOD["1h"].value]
    frame = pd.DataFrame({"variance": volatility ** 2, "log_return": np.where(follows, returns, np.nan),
                          "volume": bars["volume"].to_numpy()}, index=bars.index.rename("period_start"))
    return RealizedSeries(frame=_usable(frame), horizon="1h", problems=dict(klines.problems))


def daily_from_klines(klines: Klines) -> RealizedSeries:
    """Daily series: variance = (24 / n) * sum of the n hourly squared close-to-close log returns of the UTC day
    (days with n < MIN_HOURS_PER_DAY dropped, counted `incomplete_day`); log_return = the day's sum of them."""
    hourly = hourly_from_klines(klines).frame
    return _daily(hourly["log_return"] ** 2, hourly["log_return"], hourly["volume"], hourly.iloc[0:0],
                  dict(klines.problems))


def hourly_from_metrics(metrics: pd.DataFrame, symbol: str | None = None) -> RealizedSeries:
    """Hourly series from an hourly_metrics frame (`btcstream.storage.readers.read_hourly_metrics`).

    variance = realized_volatility^2; log_return = ln(close_mid / open_mid) of the hour; covariates
    spread_bps (avg_spread_bps), trade_imbalance, volume (buy_volume + sell_volume). Only final rows when
    the frame has `is_final`; one symbol (`symbol`, or the only one present).
    """
    if metrics.empty:
        raise ForecastDataError("the hourly_metrics table has no rows to evaluate")
    symbols = sorted(metrics["symbol"].dropna().unique())
    if symbol is None:
        if len(symbols) != 1:
            raise ForecastDataError(f"hourly_metrics holds symbols {symbols}: choose one")
        symbol = symbols[0]
    rows = metrics[metrics["symbol"] == symbol]
    problems: Counter[str] = Counter()
    if "is_final" in rows.columns:
        problems["not_final"] = int((~rows["is_final"].fillna(False).astype(bool)).sum())
        rows = rows[rows["is_final"].fillna(False).astype(bool)]
    rows = rows.sort_values("window_start", kind="stable").drop_duplicates("window_start", keep="last")
    index = pd.DatetimeIndex(pd.to_datetime(rows["window_start"], utc=True), name="period_start")
    volatility = pd.to_numeric(rows["realized_volatility"], errors="coerce").to_numpy(dtype=float)
    opens = pd.to_numeric(rows.get("open_mid"), errors="coerce").to_numpy(dtype=float)
    closes = pd.to_numeric(rows.get("close_mid"), errors="coerce").to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.log(closes / opens)
    volume = (pd.to_numeric(rows.get("buy_volume"), errors="coerce").fillna(0)
              + pd.to_numeric(rows.get("sell_volume"), errors="coerce").fillna(0)).to_numpy(dtype=float)
    frame = pd.DataFrame({"variance": volatility ** 2, "log_return": returns,
                          "spread_bps": pd.to_numeric(rows.get("avg_spread_bps"), errors="coerce").to_numpy(),
                          "trade_imbalance": pd.to_numeric(rows.get("trade_imbalance"), errors="coerce").to_numpy(),
                          "volume": volume}, index=index)
    usable = _usable(frame)
    problems["bad_hour"] = len(frame) - len(usable)
    if len(usable) > 1:
        problems["missing_hour"] = int((usable.index[-1] - usable.index[0]) // PERIOD["1h"] + 1 - len(usable))
    counts = {reason: count for reason, count in problems.items() if count}
    _report(counts, len(metrics), f"hourly_metrics {symbol}")
    return RealizedSeries(frame=usable, horizon="1h", problems=counts)


def daily_from_metrics(metrics: pd.DataFrame, symbol: str | None = None) -> RealizedSeries:
    """Daily series from hourly_metrics: variance = (24 / n) * sum of the day's n hourly realized variances."""
    hourly = hourly_from_metrics(metrics, symbol)
    frame = hourly.frame
    return _daily(frame["variance"], frame["log_return"], frame["volume"], frame, dict(hourly.problems))


def _daily(hourly_variance: pd.Series, hourly_return: pd.Series, hourly_volume: pd.Series,
           hourly_covariates: pd.DataFrame, problems: dict[str, int]) -> RealizedSeries:
    day = hourly_variance.index.floor("D")
    grouped = pd.DataFrame({"variance": hourly_variance, "log_return": hourly_return,
                            "volume": hourly_volume}).groupby(day)
    counts = grouped["variance"].count()
    frame = pd.DataFrame({"variance": grouped["variance"].sum(min_count=1) * 24.0 / counts,
                          "log_return": grouped["log_return"].sum(min_count=1),
                          "volume": grouped["volume"].sum(min_count=1)})
    for name in ("spread_bps", "trade_imbalance"):
        if name in hourly_covariates.columns:
            frame[name] = hourly_covariates[name].groupby(hourly_covariates.index.floor("D")).mean()
    complete = counts >= MIN_HOURS_PER_DAY
    if (~complete).any():
        problems = {**problems, "incomplete_day": int((~complete).sum())}
    frame.index.name = "period_start"
    return RealizedSeries(frame=_usable(frame[complete]), horizon="1d", problems=problems)


def _usable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose variance is finite and > 0 (QLIKE divides by it): a flat bar has nothing to forecast from."""
    return frame[np.isfinite(frame["variance"]) & (frame["variance"] > 0)]


def realized_series(source: Klines | pd.DataFrame, horizon: str, symbol: str | None = None) -> RealizedSeries:
    """The series at `horizon` ("1h" or "1d") from klines or an hourly_metrics frame."""
    if horizon not in HORIZONS:
        raise ForecastDataError(f"unknown horizon {horizon!r}; expected one of {', '.join(HORIZONS)}")
    if isinstance(source, Klines):
        return hourly_from_klines(source) if horizon == "1h" else daily_from_klines(source)
    return hourly_from_metrics(source, symbol) if horizon == "1h" else daily_from_metrics(source, symbol)
