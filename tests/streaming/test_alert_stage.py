"""The job's alert stage without Spark or a broker: bars scored once their minute completes, one alert per
blow-out in the alerts table and to the user's command, and a restarted stage that rebuilds its window from
raw_data delivers nothing twice. (The real job, broker and topic: test_alerts_and_forecasts_live.py.)"""

from __future__ import annotations

import json
import math
import random
import shlex
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from btcstream.analytics.alerts import minute_bars
from btcstream.names import ALERTS_COLUMNS, RAW_DATASET
from btcstream.settings import Settings
from btcstream.streaming.alerts import ALERT_GRACE, AlertStage
from helpers.delta_tables import raw_frame, write_table
from helpers.stream_job import read_table

START = datetime(2025, 3, 1, 9, tzinfo=timezone.utc)
BLOW_OUT = 80  # the minute whose spread is 40 bps (~0.1 bps otherwise)


def quotes(minutes: int) -> pd.DataFrame:
    """raw_data rows of BTCUSDT, four quotes a minute, a quiet random walk; minute BLOW_OUT's spread wide."""
    rng = random.Random(11)
    times = [START + timedelta(minutes=m, seconds=15 * i + rng.uniform(0, 10)) for m in range(minutes) for i in range(4)]
    frame = raw_frame(times, symbols=("BTCUSDT",))
    mid = 97_000.0 * pd.Series([math.exp(rng.gauss(0, 2e-4)) for _ in times]).cumprod()
    wide = frame.event_time.map(lambda t: int((t - START) / timedelta(minutes=1)) == BLOW_OUT)
    spread = pd.Series([rng.uniform(0.5, 1.5) for _ in times]).where(~wide, mid * 40e-4)
    frame["bid_price"], frame["ask_price"] = mid - spread / 2, mid + spread / 2
    return frame


def test_a_blow_out_is_one_alert_in_the_table_and_to_the_command_and_a_restart_repeats_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delivered, environment = tmp_path / "delivered.jsonl", tmp_path / "environment.txt"
    monkeypatch.setenv("BTCSTREAM_COINGECKO_API_KEY", "sentinel-key-for-the-alert-command")
    settings = Settings(storage_root=f"file://{tmp_path}/store", kafka_bootstrap="localhost:1", alert_threshold=6.0,
                        alert_command=f"env > {shlex.quote(str(environment))}; cat >> {shlex.quote(str(delivered))}; "
                                      f"echo >> {shlex.quote(str(delivered))}")
    frame = quotes(90)
    bars = minute_bars(frame)
    stage = AlertStage(settings)
    assert stage([], START).raised == 0  # the first call rebuilds the (empty) window from the tables
    raised = []
    for index, bar in enumerate(bars):  # one batch per minute; the clock is the bar's newest quote
        clock = frame.event_time[frame.event_time < bar.minute + timedelta(minutes=1)].max()
        counts = stage([bar], clock.to_pydatetime())
        raised.append(counts.raised)
        if counts.raised:
            assert counts.unpublished == counts.raised  # no broker at localhost:1: counted, not lost from the table
    assert sum(raised) == 1 and raised.index(1) == BLOW_OUT + 1  # scored when the next minute's quote passed its end
    assert stage([bars[5]], frame.event_time.max().to_pydatetime() + ALERT_GRACE).late_bars == 1

    alerts = read_table(settings, "alerts")
    assert list(alerts.columns[:len(ALERTS_COLUMNS)]) == list(ALERTS_COLUMNS)
    assert len(alerts) == 1 and alerts.metric[0] == "spread_bps"
    assert pd.to_datetime(alerts.time, utc=True)[0] == START + timedelta(minutes=BLOW_OUT)
    assert alerts.value[0] == pytest.approx(40.0, rel=0.01) and alerts.z[0] > 6.0

    # The job restarts: raw_data holds the quotes; the new stage rebuilds its window, meets the blow-out again
    # among the rebuilt bars, finds it stored, and delivers nothing.
    write_table(settings, RAW_DATASET, frame)
    again = AlertStage(settings)([], frame.event_time.max().to_pydatetime() + ALERT_GRACE)
    assert again.raised == 0 and len(read_table(settings, "alerts")) == 1

    deadline = time.monotonic() + 30
    while not delivered.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the command runs in the background
    lines = [json.loads(line) for line in delivered.read_text().splitlines() if line.strip()]
    command_env = environment.read_text()
    assert "BTCSTREAM_ALERT_METRIC=spread_bps" in command_env and "sentinel-key" not in command_env
    assert [(r["symbol"], r["metric"], r["time"]) for r in lines] == [
        ("BTCUSDT", "spread_bps", (START + timedelta(minutes=BLOW_OUT)).isoformat())]
