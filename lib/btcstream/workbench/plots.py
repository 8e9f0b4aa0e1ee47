"""Plotly figures and a summary table of hourly metrics: what the notebooks and the report show.

Every function takes the frame a reader returns (`btcstream.storage.readers`) and only draws it:
the numbers are computed by the streaming job, so what a chart shows is exactly what is stored.
Several symbols share a figure, each in one colour across every figure; time axes are UTC.
An hour still in progress (`is_final` false: the job updates it as ticks arrive) is drawn as a
hollow marker, in a legend entry of its own, so a live value is never taken for a final one.
The forecast figures draw what `btcstream.analytics.evaluation` computed (walk-forward forecasts,
metrics, cumulative losses) or the live forecasts table; the alert figure draws the alerts table.
Not for: reading data or computing metrics.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from btcstream.names import ALERT_METRICS, FORECAST_MODELS

TEMPLATE = "plotly_white"
PALETTE: tuple[str, ...] = ("#f7931a", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TIME_AXIS_TITLE = "hour (UTC)"
HOURLY_REQUIRED = ("symbol", "window_start")
PROVISIONAL = "hour in progress (provisional)"
ESTIMATOR_COLORS: tuple[str, ...] = ("#7f7f7f", "#bcbd22")  # Parkinson, Garman-Klass (symbol colours mark tick RV)


def symbol_colors(symbols: Sequence[str]) -> dict[str, str]:
    """One stable colour per symbol (sorted, so BTCUSDT keeps its colour whatever else is plotted)."""
    return {symbol: PALETTE[i % len(PALETTE)] for i, symbol in enumerate(sorted(set(symbols)))}


def hourly_spread_volatility(hourly: pd.DataFrame) -> go.Figure:
    """Three stacked panels over time: mean spread (quote currency), mean spread (bps), realized volatility."""
    panels = (("avg_spread", "spread (quote ccy)", None), ("avg_spread_bps", "spread (bps)", None),
              ("realized_volatility", "realized vol (hourly)", ".3%"))
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=("Mean bid-ask spread per hour", "Mean spread in basis points",
                                           "Realized volatility of the mid, per hour"))
    _time_lines(figure, hourly, panels)
    figure.update_layout(title="Hourly spread and realized volatility", height=760)
    return _finish(figure, rows=3)


def price_band(hourly: pd.DataFrame) -> go.Figure:
    """Per symbol, the hourly mean mid price inside the band of that hour's low and high mid."""
    _require(hourly, ("avg_price", "high_price", "low_price"))
    symbols = sorted(hourly["symbol"].unique())
    figure = make_subplots(rows=max(len(symbols), 1), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=[f"{s}: mean mid with hourly low-high band" for s in symbols] or None)
    colors = symbol_colors(symbols)
    for row, (symbol, rows) in enumerate(_by_symbol(hourly), start=1):
        x = rows["window_start"]
        band = dict(mode="lines", line=dict(width=0), legendgroup=symbol, hoverinfo="x+y")
        figure.add_trace(go.Scatter(x=x, y=rows["high_price"], name=f"{symbol} high", showlegend=False, **band),
                         row=row, col=1)
        figure.add_trace(go.Scatter(x=x, y=rows["low_price"], name=f"{symbol} low-high", fill="tonexty",
                                    fillcolor=_transparent(colors[symbol]), **band), row=row, col=1)
        figure.add_trace(go.Scatter(x=x, y=rows["avg_price"], name=f"{symbol} mean mid", mode="lines+markers",
                                    line=dict(color=colors[symbol], width=2), marker=dict(size=4),
                                    legendgroup=symbol), row=row, col=1)
        figure.update_yaxes(title_text="mid price (quote ccy)", row=row, col=1)
    figure.update_layout(title="Mid price with the hourly high/low band", height=max(380, 320 * len(symbols)))
    return _finish(figure, rows=max(len(symbols), 1))


def liquidity_volume(hourly: pd.DataFrame) -> go.Figure:
    """Mean top-of-book liquidity (quote currency) and mean 24 h base volume per hour."""
    panels = (("avg_liquidity", "top-of-book liquidity (quote ccy)", None),
              ("avg_volume_24h", "24 h volume (base asset)", None))
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=("Mean top-of-book liquidity: bid_price*bid_qty + ask_price*ask_qty",
                                           "Mean rolling 24 h traded volume"))
    _time_lines(figure, hourly, panels)
    figure.update_layout(title="Liquidity and 24 h volume", height=600)
    return _finish(figure, rows=2)


def trade_activity(hourly: pd.DataFrame) -> go.Figure:
    """Per hour: trades (count), VWAP minus the mean mid (quote currency), and the trade imbalance
    (buy - sell) / (buy + sell) of taker volume, in [-1, 1]. Hours without trades (the REST feed) show no point."""
    _require(hourly, ("trade_count", "vwap", "avg_price", "trade_imbalance"))
    frame = hourly.assign(vwap_minus_mid=hourly["vwap"] - hourly["avg_price"],
                          trades=hourly["trade_count"].where(hourly["trade_count"] > 0))
    panels = (("trades", "trades per hour", None), ("vwap_minus_mid", "VWAP - mean mid (quote ccy)", None),
              ("trade_imbalance", "taker buy/sell imbalance", ".0%"))
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=("Aggregate trades per hour", "Volume-weighted price against the mean mid",
                                           "Trade imbalance: (buy - sell) / (buy + sell) volume"))
    _time_lines(figure, frame, panels)
    figure.update_layout(title="Trades per hour", height=760)
    return _finish(figure, rows=3)


def spread_vs_volatility(hourly: pd.DataFrame) -> go.Figure:
    """One point per (symbol, hour): realized volatility against mean spread in bps."""
    _require(hourly, ("avg_spread_bps", "realized_volatility"))
    figure = go.Figure()
    colors = symbol_colors(hourly["symbol"].unique())
    for symbol, rows in _by_symbol(hourly):
        figure.add_trace(go.Scatter(
            x=rows["realized_volatility"], y=rows["avg_spread_bps"], mode="markers", name=symbol,
            marker=dict(color=colors[symbol], size=8, opacity=0.75),
            customdata=rows["window_start"].dt.strftime("%Y-%m-%d %H:%M UTC"),
            hovertemplate="%{customdata}<br>volatility %{x:.4%}<br>spread %{y:.3f} bps<extra>" + symbol + "</extra>"))
    figure.update_layout(title="Spread versus realized volatility (one point per hour)", template=TEMPLATE,
                         xaxis_title="realized volatility (hourly)", yaxis_title="mean spread (bps)",
                         xaxis_tickformat=".2%", height=480, legend_title_text="symbol")
    return figure


def summary_table(hourly: pd.DataFrame) -> pd.DataFrame:
    """Per symbol: hours covered (of which still provisional), first/last hour, ticks, and mean/max of
    spread and volatility."""
    _require(hourly, ("avg_spread", "avg_spread_bps", "realized_volatility", "high_price", "low_price", "tick_count"))
    if hourly.empty:
        return pd.DataFrame(columns=["hours", "provisional_hours", "first_hour_utc", "last_hour_utc", "ticks", "mean_spread",
                                     "mean_spread_bps", "max_spread_bps", "mean_volatility", "max_volatility",
                                     "low_price", "high_price"])
    grouped = hourly.groupby("symbol")
    table = pd.DataFrame({
        "hours": grouped["window_start"].count(),
        "provisional_hours": provisional(hourly).groupby(hourly["symbol"]).sum().astype(int),
        "first_hour_utc": grouped["window_start"].min(),
        "last_hour_utc": grouped["window_start"].max(),
        "ticks": grouped["tick_count"].sum(),
        "mean_spread": grouped["avg_spread"].mean(),
        "mean_spread_bps": grouped["avg_spread_bps"].mean(),
        "max_spread_bps": grouped["avg_spread_bps"].max(),
        "mean_volatility": grouped["realized_volatility"].mean(),
        "max_volatility": grouped["realized_volatility"].max(),
        "low_price": grouped["low_price"].min(),
        "high_price": grouped["high_price"].max(),
    })
    return table


def style_summary(table: pd.DataFrame) -> Any:
    """The summary table formatted for a notebook or HTML report (a pandas Styler)."""
    return table.style.format({
        "first_hour_utc": "{:%Y-%m-%d %H:%M}", "last_hour_utc": "{:%Y-%m-%d %H:%M}", "ticks": "{:,.0f}",
        "mean_spread": "{:.4f}", "mean_spread_bps": "{:.3f}", "max_spread_bps": "{:.3f}",
        "mean_volatility": "{:.3%}", "max_volatility": "{:.3%}", "low_price": "{:,.2f}", "high_price": "{:,.2f}",
    }).set_caption("Hourly metrics per symbol (spread in quote currency and bps; volatility per hour)")


def window_spread_volatility(windows: pd.DataFrame, window_label: str = "window") -> go.Figure:
    """Spread (bps) and realized volatility per event-time window from a live streaming view."""
    _require(windows, ("avg_spread_bps", "realized_volatility"))
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=(f"Mean spread per {window_label} (bps)",
                                           f"Realized volatility per {window_label}"))
    panels = (("avg_spread_bps", "spread (bps)", None), ("realized_volatility", "realized vol", ".3%"))
    _time_lines(figure, windows, panels)
    figure.update_layout(title=f"Streaming view: spread and volatility per {window_label}", height=560)
    _finish(figure, rows=2)
    figure.update_xaxes(title_text="window start (UTC)", row=2, col=1)
    return figure


def backfilled_volatility(estimates: pd.DataFrame, hourly: pd.DataFrame) -> go.Figure:
    """Per symbol, hourly Parkinson and Garman-Klass volatility from backfilled klines, beside tick RV.

    `estimates` is `btcstream.analytics.ohlc_volatility.bar_volatility(klines).frame` of hourly bars
    (symbol, open_time, parkinson, garman_klass); `hourly` the hourly_metrics rows, whose
    `realized_volatility` is drawn where it exists (hollow: an hour in progress). A dotted line marks
    the first hour of the live feed, so the hours before it are the ones only the klines cover.
    """
    _require(estimates, ("parkinson", "garman_klass"), base=("symbol", "open_time"))
    _require(hourly, ("realized_volatility",))
    symbols = sorted(estimates["symbol"].unique())
    figure = make_subplots(rows=max(len(symbols), 1), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=[f"{s}: OHLC estimators from klines and tick realized volatility"
                                           for s in symbols] or None)
    colors = symbol_colors(symbols)
    for row, symbol in enumerate(symbols, start=1):
        bars = estimates[estimates["symbol"] == symbol].sort_values("open_time")
        for column, label, color, dash in (("parkinson", "Parkinson", ESTIMATOR_COLORS[0], None),
                                           ("garman_klass", "Garman-Klass", ESTIMATOR_COLORS[1], "dot")):
            figure.add_trace(go.Scatter(x=bars["open_time"], y=bars[column], name=f"{symbol} {label} (klines)",
                                        mode="lines", line=dict(color=color, width=1.5, dash=dash)), row=row, col=1)
        ticks = hourly[hourly["symbol"] == symbol].sort_values("window_start")
        if not ticks.empty:
            figure.add_trace(go.Scatter(x=ticks["window_start"], y=ticks["realized_volatility"],
                                        name=f"{symbol} tick RV (hourly_metrics)", mode="lines+markers",
                                        line=dict(color=colors[symbol], width=2), marker=dict(size=5)), row=row, col=1)
            live = provisional(ticks)
            if live.any():
                figure.add_trace(go.Scatter(
                    x=ticks.loc[live, "window_start"], y=ticks.loc[live, "realized_volatility"],
                    name=f"{symbol} {PROVISIONAL}", mode="markers",
                    marker=dict(color=colors[symbol], size=11, symbol="circle-open", line=dict(width=2))),
                    row=row, col=1)
            figure.add_vline(x=ticks["window_start"].min(), line=dict(color="#555555", width=1, dash="dot"),
                             row=row, col=1)
        figure.update_yaxes(title_text="volatility per hour", tickformat=".2%", row=row, col=1)
    figure.update_layout(title="Before the live feed: hourly Parkinson and Garman-Klass from klines, "
                               "beside tick realized volatility (dotted line: first live hour)",
                         height=max(420, 340 * len(symbols)))
    return _finish(figure, rows=max(len(symbols), 1))


def trace_values(values: Any) -> np.ndarray:
    """The numbers behind a trace's x or y, whether plotly keeps them as a list, an array or base64 `bdata`."""
    if isinstance(values, dict) and "bdata" in values:
        array = np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
        return array.reshape(values["shape"]) if "shape" in values and isinstance(values["shape"], (list, tuple)) else array
    return np.asarray(values)


def _time_lines(figure: go.Figure, hourly: pd.DataFrame, panels: Sequence[tuple[str, str, str | None]]) -> None:
    """One line per symbol in each panel (column, y title, tick format), one legend entry per symbol."""
    _require(hourly, tuple(column for column, _, _ in panels))
    colors = symbol_colors(hourly["symbol"].unique())
    for row, (column, title, tick_format) in enumerate(panels, start=1):
        for symbol, rows in _by_symbol(hourly):
            figure.add_trace(go.Scatter(x=rows["window_start"], y=rows[column], name=symbol, mode="lines+markers",
                                        line=dict(color=colors[symbol], width=2), marker=dict(size=4),
                                        legendgroup=symbol, showlegend=row == 1), row=row, col=1)
            live = provisional(rows)
            if live.any():
                figure.add_trace(go.Scatter(
                    x=rows.loc[live, "window_start"], y=rows.loc[live, column], name=f"{symbol} {PROVISIONAL}",
                    mode="markers", marker=dict(color=colors[symbol], size=11, symbol="circle-open", line=dict(width=2)),
                    legendgroup=symbol, showlegend=row == 1), row=row, col=1)
        figure.update_yaxes(title_text=title, tickformat=tick_format, row=row, col=1)


def provisional(hourly: pd.DataFrame) -> pd.Series:
    """True for the rows of hours still in progress (`is_final` false); all False for frames without the column."""
    if "is_final" not in hourly.columns:
        return pd.Series(False, index=hourly.index)
    return ~hourly["is_final"].fillna(True).astype(bool)


def _by_symbol(hourly: pd.DataFrame):
    return hourly.sort_values(["symbol", "window_start"]).groupby("symbol", sort=True)


def _finish(figure: go.Figure, rows: int) -> go.Figure:
    figure.update_xaxes(title_text=TIME_AXIS_TITLE, row=rows, col=1)
    figure.update_layout(template=TEMPLATE, hovermode="x unified", legend_title_text="symbol")
    return figure


def _transparent(hex_color: str, alpha: float = 0.2) -> str:
    red, green, blue = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _require(frame: pd.DataFrame, columns: Sequence[str], base: Sequence[str] = HOURLY_REQUIRED) -> None:
    missing = [c for c in (*base, *columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; has {list(frame.columns)}")


# --- volatility forecasts and alerts ------------------------------------------------------------------

MODEL_COLORS: dict[str, str] = dict(zip(FORECAST_MODELS, ("#1f77b4", "#2ca02c", "#9467bd", "#d62728")))
REALIZED_COLOR = "#222222"
REALIZED_NAME = "realized"
BEST_ROW_FILL = "#fde9cc"  # the model with the lowest QLIKE, in the evaluation table
ALERT_MARKERS: dict[str, tuple[str, str]] = dict(zip(  # metric -> (marker symbol, colour)
    ALERT_METRICS, (("diamond", "#d62728"), ("triangle-up", "#9467bd"), ("square", "#17becf"))))
EVALUATION_FORMATS: dict[str, str] = {"qlike": "{:.4f}", "mse": "{:.3e}", "mz_r2": "{:.3f}", "dm_stat": "{:.2f}",
                                      "dm_pvalue": "{:.3g}"}
EVALUATION_HEADERS: dict[str, str] = {"model": "model", "qlike": "QLIKE", "mse": "MSE", "mz_r2": "MZ R²",
                                      "dm_stat": "DM vs HAR-RV", "dm_pvalue": "DM p-value"}


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """One colour per model, in legend order: the known models first, in their order and colours, then others."""
    present = dict.fromkeys(models)
    ordered = [model for model in FORECAST_MODELS if model in present] + [m for m in present if m not in MODEL_COLORS]
    extra = iter(PALETTE[1:])
    return {model: MODEL_COLORS.get(model) or next(extra, PALETTE[0]) for model in ordered}


def evaluation_table(scores: pd.DataFrame, title: str = "Walk-forward evaluation") -> go.Figure:
    """The metrics table (`btcstream.analytics.evaluation.METRIC_COLUMNS`), one row per model, as a plotly table.

    QLIKE and MSE are means over the forecasts (variances; lower is better), MZ R² the Mincer-Zarnowitz
    R², DM the Diebold-Mariano statistic against HAR-RV on QLIKE (< 0: lower losses than HAR-RV). The
    row of the lowest QLIKE is shaded. NaN shows as "-" (HAR-RV against itself).
    """
    _require(scores, tuple(EVALUATION_HEADERS), base=())
    best = scores["qlike"].idxmin() if scores["qlike"].notna().any() else None
    cells = [scores["model"].astype(str).tolist()] + [
        ["-" if pd.isna(value) else EVALUATION_FORMATS[column].format(value) for value in scores[column]]
        for column in EVALUATION_FORMATS]
    fill = ["white" if index != best else BEST_ROW_FILL for index in scores.index]
    figure = go.Figure(go.Table(
        header=dict(values=[f"<b>{EVALUATION_HEADERS[c]}</b>" for c in EVALUATION_HEADERS], fill_color="#f6f6f6",
                    align="left"),
        cells=dict(values=cells, fill_color=[fill], align="left", height=26)))
    figure.update_layout(title=f"{title}: QLIKE and MSE on variances (lower is better); shaded: lowest QLIKE",
                         template=TEMPLATE, height=120 + 30 * len(scores), margin=dict(t=60, b=10))
    return figure


def forecast_vs_realized(forecasts: pd.DataFrame, last: int | None = None,
                         title: str = "Forecast and realized volatility") -> go.Figure:
    """One line per model of the forecast volatility sqrt(F), and the realized one sqrt(RV), per target period.

    `forecasts` has `FORECAST_COLUMNS` (model, made_at, target_time, forecast, realized; variances, as
    `walk_forward` and `from_forecasts_table` give them); `last` keeps the newest `last` target periods
    (None: all). A period not realized yet (live forecasts) shows its forecasts only.
    """
    _require(forecasts, ("forecast", "realized"), base=("model", "target_time"))
    times = np.sort(forecasts["target_time"].unique())
    shown = forecasts[forecasts["target_time"].isin(times[-last:])] if last else forecasts
    figure = go.Figure()
    realized = (shown.dropna(subset=["realized"]).drop_duplicates("target_time")
                .sort_values("target_time"))
    figure.add_trace(go.Scatter(x=_compact_times(realized["target_time"]), y=np.sqrt(realized["realized"].astype(float)),
                                name=REALIZED_NAME, mode="lines", line=dict(color=REALIZED_COLOR, width=2.5)))
    colors = model_colors(shown["model"])
    for model in colors:
        rows = shown[shown["model"] == model].sort_values("target_time")
        figure.add_trace(go.Scatter(x=_compact_times(rows["target_time"]), y=np.sqrt(rows["forecast"].astype(float)),
                                    name=model,
                                    mode="lines+markers" if len(rows) < 50 else "lines",
                                    line=dict(color=colors[model], width=1.5), marker=dict(size=5)))
    figure.update_layout(title=f"{title} (square root of the variances; not annualised)", template=TEMPLATE,
                         xaxis_title="period forecast (UTC)", yaxis_title="volatility per period", yaxis_tickformat=".2%",
                         hovermode="x unified", legend_title_text="model", height=460)
    return figure


def cumulative_qlike(losses: pd.DataFrame, title: str = "Cumulative QLIKE loss") -> go.Figure:
    """One line per model: the running sum of its QLIKE losses (`btcstream.analytics.evaluation.cumulative_loss`).

    Over the same periods for every model, the lowest line has lost least; a step up is a period the
    model forecast badly (QLIKE punishes a forecast below the realized variance most).
    """
    _require(losses, ("cumulative_loss",), base=("model", "target_time"))
    figure = go.Figure()
    colors = model_colors(losses["model"])
    for model in colors:
        rows = losses[losses["model"] == model].sort_values("target_time")
        figure.add_trace(go.Scatter(x=_compact_times(rows["target_time"]), y=rows["cumulative_loss"], name=model,
                                    mode="lines",
                                    line=dict(color=colors[model], width=2)))
    figure.update_layout(title=f"{title} per model: sum of RV/F - ln(RV/F) - 1 (lower is better)",
                         template=TEMPLATE, xaxis_title="period forecast (UTC)", yaxis_title="cumulative QLIKE",
                         hovermode="x unified", legend_title_text="model", height=420)
    return figure


def alerts_on_price(hourly: pd.DataFrame, alerts: pd.DataFrame, threshold: float | None = None) -> go.Figure:
    """The mid price with the alerts on it (top) and each alert's robust z-score (bottom), over time.

    Top: per symbol the hour's last mid (`close_mid`) at the hour's end, from hourly_metrics (hollow:
    the hour in progress); each alert is a marker at its 1-minute bar's `time`, placed on that line
    (linear in time between two hourly closes: the price of the minute is not stored), one shape per
    metric. Hover: symbol, metric, the bar's value, the window's baseline (median) and z. Bottom: z per
    alert, with the job's `threshold` (|z| above it raises an alert) dotted, when given.
    """
    _require(hourly, ("close_mid", "window_end"))
    _require(alerts, ("time", "metric", "value", "baseline", "z"), base=("symbol",))
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.65, 0.35],
                           subplot_titles=("Mid price at each hour's end, with the alerts",
                                           "Robust z-score of each alert: (value - median) / (1.4826 MAD)"))
    colors = symbol_colors([*hourly["symbol"].unique(), *alerts["symbol"].unique()])
    lines: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for symbol, rows in hourly.sort_values(["symbol", "window_end"]).groupby("symbol", sort=True):
        figure.add_trace(go.Scatter(x=rows["window_end"], y=rows["close_mid"], name=f"{symbol} mid", mode="lines",
                                    line=dict(color=colors[symbol], width=2), legendgroup=symbol), row=1, col=1)
        live = provisional(rows)
        if live.any():
            figure.add_trace(go.Scatter(
                x=rows.loc[live, "window_end"], y=rows.loc[live, "close_mid"], name=f"{symbol} {PROVISIONAL}",
                mode="markers", marker=dict(color=colors[symbol], size=11, symbol="circle-open", line=dict(width=2)),
                legendgroup=symbol), row=1, col=1)
        lines[symbol] = (_epoch_ns(rows["window_end"]), rows["close_mid"].to_numpy(dtype=float))
    metrics = [m for m in ALERT_METRICS if m in set(alerts["metric"])] + sorted(set(alerts["metric"]) - set(ALERT_METRICS))
    for metric in metrics:
        rows = alerts[alerts["metric"] == metric].sort_values(["time", "symbol"])
        marker_symbol, color = ALERT_MARKERS.get(metric, ("x", "#555555"))
        on_line = np.array([_on_line(lines.get(symbol), moment) for symbol, moment in
                            zip(rows["symbol"], _epoch_ns(rows["time"]))], dtype=float)
        details = np.column_stack([rows["symbol"].astype(str), rows["metric"].astype(str), rows["value"].astype(float),
                                   rows["baseline"].astype(float), rows["z"].astype(float)]) if len(rows) else None
        hover = ("%{x|%Y-%m-%d %H:%M} UTC %{customdata[0]}<br>%{customdata[1]} = %{customdata[2]:.4g}"
                 "<br>baseline %{customdata[3]:.4g}, z %{customdata[4]:.1f}<extra>alert</extra>")
        marker = dict(symbol=marker_symbol, color=color, size=11, line=dict(color="white", width=1))
        figure.add_trace(go.Scatter(x=rows["time"], y=on_line, name=f"alert: {metric}", mode="markers", marker=marker,
                                    customdata=details, hovertemplate=hover, legendgroup=metric), row=1, col=1)
        figure.add_trace(go.Scatter(x=rows["time"], y=rows["z"], name=f"z: {metric}", mode="markers", marker=marker,
                                    customdata=details, hovertemplate=hover, legendgroup=metric, showlegend=False),
                         row=2, col=1)
    if threshold is not None:
        for level in (threshold, -threshold):
            figure.add_hline(y=level, line=dict(color="#777777", width=1, dash="dot"), row=2, col=1)
    figure.update_yaxes(title_text="mid price (quote ccy)", row=1, col=1)
    figure.update_yaxes(title_text="z", row=2, col=1)
    figure.update_xaxes(title_text="time (UTC)", row=2, col=1)
    figure.update_layout(title="Alerts on the price: spread, 1-minute volatility and trade imbalance outliers",
                         template=TEMPLATE, height=640, legend_title_text="series")
    return figure


def _compact_times(times: pd.Series) -> pd.Series:
    """UTC times to the second when none has a fraction (periods, minute bars): plotly then writes
    `2022-03-23T17:00:00` instead of nine zero decimals per point, a third of a long chart's size."""
    times = pd.to_datetime(times, utc=True)
    whole = (times.dt.microsecond == 0) & (times.dt.nanosecond == 0)
    return times.dt.as_unit("s") if whole.all() else times


def _epoch_ns(times: pd.Series) -> np.ndarray:
    """Aware UTC times as int64 nanoseconds since the epoch (for interpolating in time)."""
    return pd.DatetimeIndex(pd.to_datetime(times, utc=True)).as_unit("ns").asi8


def _on_line(line: tuple[np.ndarray, np.ndarray] | None, moment: int) -> float:
    """The line's value at `moment`, linear between its points (its end values beyond them); NaN without a line."""
    if line is None or not len(line[0]):
        return float("nan")
    return float(np.interp(moment, line[0], line[1]))
