"""`btcstream forecast evaluate`: walk-forward evaluation of the volatility forecasters on klines or hourly_metrics.

Every model (EWMA, HAR-RV, GARCH(1,1), gradient boosting) forecasts each period's realized variance from
the periods before it only (expanding window, refit every K periods); prints one row per model: QLIKE,
MSE, Mincer-Zarnowitz R^2 and the Diebold-Mariano test against HAR-RV on QLIKE (DM < 0: lower losses
than HAR-RV). `--out` writes that table (model,qlike,mse,mz_r2,dm_stat,dm_pvalue), `--forecasts` every
forecast (model,made_at,target_time,forecast,realized; UTC ISO times, forecast and realized are variances
of log returns over the horizon). Bad kline rows are counted by reason on the log and dropped.
See docs/forecasting.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from btcstream.errors import BtcstreamError
from btcstream.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

HORIZONS = ("1h", "1d")  # btcstream.analytics.realized.HORIZONS (not imported: --help stays light)
DEFAULT_MIN_TRAIN = {"1h": 720, "1d": 180}  # 30 days of hours; half a year of days
DEFAULT_REFIT_EVERY = {"1h": 24, "1d": 7}
DEFAULT_GARCH_REFIT_EVERY = {"1h": 168, "1d": 30}  # a GARCH fit costs ~0.1-0.3 s: weekly / monthly
TABLES = ("hourly_metrics",)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("forecast", help="volatility forecasts: walk-forward evaluation of the models",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    evaluate = actions.add_parser("evaluate", help="walk-forward evaluation: QLIKE, MSE, MZ R^2, DM against HAR-RV",
                                  description=__doc__)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--klines", type=Path, metavar="CSV",
                        help="a Binance 1h kline CSV (open_time,open,high,low,close,volume,close_time,quote_volume,"
                             "count; times in ms), e.g. lib/btcstream/data/binance_btcusdt_1h.csv")
    source.add_argument("--table", choices=TABLES, help="read the hourly_metrics table of BTCSTREAM_STORAGE_ROOT")
    evaluate.add_argument("--symbol", default=None, help="symbol of --table (default: the first of BTCSTREAM_SYMBOLS)")
    evaluate.add_argument("--horizon", choices=HORIZONS, default="1h", help="forecast the next hour or day (default 1h)")
    evaluate.add_argument("--out", type=Path, metavar="FILE.csv", help="write the metrics table here")
    evaluate.add_argument("--forecasts", type=Path, metavar="FILE.csv", help="write every forecast here")
    evaluate.add_argument("--min-train", type=int, default=None, metavar="N",
                          help="periods before the first forecast (default: "
                               + ", ".join(f"{key} {value}" for key, value in DEFAULT_MIN_TRAIN.items()) + ")")
    evaluate.add_argument("--refit-every", type=int, default=None, metavar="K",
                          help="re-estimate HAR-RV and gradient boosting every K periods, conditioning on new data "
                               "in between (default: "
                               + ", ".join(f"{key} {value}" for key, value in DEFAULT_REFIT_EVERY.items()) + ")")
    evaluate.add_argument("--garch-refit-every", type=int, default=None, metavar="K",
                          help="re-estimate GARCH(1,1) every K periods (default: "
                               + ", ".join(f"{key} {value}" for key, value in DEFAULT_GARCH_REFIT_EVERY.items()) + ")")
    evaluate.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    horizon = args.horizon
    min_train = DEFAULT_MIN_TRAIN[horizon] if args.min_train is None else args.min_train
    refit_every = DEFAULT_REFIT_EVERY[horizon] if args.refit_every is None else args.refit_every
    garch_every = DEFAULT_GARCH_REFIT_EVERY[horizon] if args.garch_refit_every is None else args.garch_refit_every
    for flag, value in (("--min-train", min_train), ("--refit-every", refit_every),
                        ("--garch-refit-every", garch_every)):
        if value < 1:
            raise BtcstreamError(f"{flag} {value}: expected 1 or more")

    from btcstream.analytics.evaluation import metrics, walk_forward
    from btcstream.analytics.forecasters import Garch11, default_models
    from btcstream.analytics.realized import read_kline_csv, realized_series

    if args.klines is not None:
        series = realized_series(read_kline_csv(args.klines), horizon)
        source = str(args.klines)
    else:
        from btcstream.storage.readers import read_hourly_metrics

        symbol = args.symbol or settings.symbols[0]
        series = realized_series(read_hourly_metrics(settings, symbols=[symbol]), horizon, symbol)
        source = f"{settings.storage_root}/hourly_metrics {symbol}"
    models = default_models(horizon)
    every = {model.name: refit_every for model in models} | {Garch11.name: garch_every}
    log.info("%s: %d periods of %s, %d forecasts per model (min-train %d, refit every %d, GARCH every %d)",
             source, len(series.frame), horizon, max(len(series.frame) - min_train, 0), min_train, refit_every,
             garch_every)
    result = walk_forward(series, models, min_train=min_train, refit_every=every)
    table = metrics(result.forecasts)
    if series.problems:
        print("data: " + ", ".join(f"{count} {reason}" for reason, count in sorted(series.problems.items())))
    print(f"{result.steps} forecasts per model of the next {horizon}'s variance, "
          f"{result.forecasts['target_time'].min():%Y-%m-%d %H:%M} to "
          f"{result.forecasts['target_time'].max():%Y-%m-%d %H:%M} UTC")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.6g}"))
    if args.out is not None:
        _write_csv(table, args.out)
    if args.forecasts is not None:
        forecasts = result.forecasts.copy()
        for column in ("made_at", "target_time"):
            forecasts[column] = forecasts[column].map(lambda moment: moment.isoformat())
        _write_csv(forecasts, args.forecasts)
    return 0


def _write_csv(frame: "pd.DataFrame", path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False, float_format="%.10g")
    except OSError as error:
        raise BtcstreamError(f"cannot write {path}: {error.strerror or error}") from None
    log.info("wrote %d rows to %s", len(frame), path)
