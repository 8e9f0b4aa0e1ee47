"""`btcstream forecast evaluate`: the metrics and forecasts CSVs with exactly the issue's columns and UTC ISO
times, from a slice of the shipped history or from an hourly_metrics frame; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btcstream.cli import main
from btcstream.storage import readers

SHIPPED = Path(__file__).resolve().parents[2] / "lib" / "btcstream" / "data" / "binance_btcusdt_1h.csv"
MODELS = ["ewma", "har_rv", "garch11", "gradient_boosting"]
ISO_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00\+00:00$"


@pytest.fixture
def history_slice(tmp_path: Path) -> Path:
    """The first 600 hours of the shipped BTCUSDT history, with one non-numeric row appended."""
    lines = SHIPPED.read_text().splitlines()[:601]
    path = tmp_path / "klines.csv"
    path.write_text("\n".join([*lines, "1600000000000,abc,1,1,1,1,1600003599999,1,1"]) + "\n")
    return path


def test_evaluate_writes_both_csvs_with_the_named_columns(history_slice: Path, tmp_path: Path, capsys) -> None:
    out, forecasts_path = tmp_path / "metrics.csv", tmp_path / "forecasts.csv"
    code = main(["forecast", "evaluate", "--klines", str(history_slice), "--horizon", "1h", "--min-train", "500",
                 "--refit-every", "40", "--out", str(out), "--forecasts", str(forecasts_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "data: 1 non_numeric" in printed and all(name in printed for name in MODELS)
    table = pd.read_csv(out)
    assert list(table.columns) == ["model", "qlike", "mse", "mz_r2", "dm_stat", "dm_pvalue"]
    assert list(table["model"]) == MODELS
    assert (table["qlike"] > 0).all() and table.loc[table["model"] == "har_rv", "dm_stat"].isna().all()
    forecasts = pd.read_csv(forecasts_path, dtype={"made_at": str, "target_time": str})
    assert list(forecasts.columns) == ["model", "made_at", "target_time", "forecast", "realized"]
    assert len(forecasts) == 4 * (600 - 500)
    assert forecasts["made_at"].str.match(ISO_UTC).all() and forecasts["target_time"].str.match(ISO_UTC).all()
    assert forecasts["target_time"].iloc[-1] == "2020-09-25T23:00:00+00:00"  # the 600th hour of the history
    assert (pd.to_datetime(forecasts["made_at"]) <= pd.to_datetime(forecasts["target_time"])).all()


def test_evaluate_reads_the_hourly_metrics_table(monkeypatch, tmp_path: Path, capsys) -> None:
    generator = np.random.default_rng(2)
    hours = pd.date_range("2024-01-01", periods=300, freq="h", tz="UTC")
    volatility = np.exp(-5.0 + 0.3 * generator.standard_normal(300))
    frame = pd.DataFrame({"symbol": "BTCUSDT", "window_start": hours, "realized_volatility": volatility,
                          "open_mid": 100.0, "close_mid": 100.0 * np.exp(volatility * generator.standard_normal(300)),
                          "avg_spread_bps": 1.0, "trade_imbalance": 0.0, "buy_volume": 1.0, "sell_volume": 1.0,
                          "is_final": True})
    asked = {}
    monkeypatch.setattr(readers, "read_hourly_metrics",
                        lambda settings, symbols=None: asked.setdefault("symbols", symbols) and frame)
    out = tmp_path / "metrics.csv"
    assert main(["forecast", "evaluate", "--table", "hourly_metrics", "--min-train", "250", "--out", str(out)]) == 0
    assert asked["symbols"] == ["BTCUSDT"] and list(pd.read_csv(out)["model"]) == MODELS


@pytest.mark.parametrize("arguments, message", [
    (["--klines", "/no/such/file.csv"], "does not exist"),
    (["--klines", str(SHIPPED), "--min-train", "0"], "--min-train 0: expected 1 or more"),
])
def test_bad_input_is_one_line(arguments: list[str], message: str, capsys) -> None:
    assert main(["forecast", "evaluate", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_a_history_shorter_than_min_train_is_one_line(history_slice: Path, capsys) -> None:
    assert main(["forecast", "evaluate", "--klines", str(history_slice), "--horizon", "1d"]) == 2
    assert "--min-train" in capsys.readouterr().err
