"""`btcstream backfill` against the local replay exchange (in-process HTTP server) into a `file://` klines table.

Paging and weight pacing, 429/418 handling, resume after a kill, rerun idempotence, bad rows counted,
the exchange's own history gaps reported, closed bars only, and the command line's one-line errors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from btcstream import cli
from btcstream.errors import RateLimited
from btcstream.exchange import Fault, start_exchange
from btcstream.exchange.history import default_history_path
from btcstream.ingest.backfill import KlineBackfill, missing_runs
from btcstream.ingest.sources.binance import BinanceClient
from btcstream.ingest.sources.http import HostCooldowns, JsonHttpClient
from btcstream.settings import Settings
from btcstream.storage.klines import KlinesTable, read_klines
from helpers.replay_exchange import write_eth_history

UTC = timezone.utc
AFTER_HISTORY = datetime(2022, 7, 1, tzinfo=UTC)  # the shipped history ends 2022-06-15: every bar is closed
KLINES = "binance /api/v3/klines"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    """BTCUSDT (real, 2020-09-01 .. 2022-06-15) and ETHUSDT (derived, its first 2000 hours), clock after the end."""
    history = {"BTCUSDT": default_history_path(), "ETHUSDT": write_eth_history(tmp_path_factory.mktemp("history"))}
    server = start_exchange(history, speed=1.0, start=AFTER_HISTORY)
    yield server
    server.stop()


@pytest.fixture
def settings(exchange, tmp_path: Path) -> Settings:
    exchange.faults.clear()
    return Settings(storage_root=f"file://{tmp_path}/store", binance_url=exchange.binance_url)


def client_for(url: str) -> BinanceClient:
    """A client with its own rate-limit bans, so one test's 429 never reaches another's exchange."""
    return BinanceClient(http=JsonHttpClient(url, cooldowns=HostCooldowns()))


def backfill_for(settings: Settings, interval: str = "1h", **options) -> KlineBackfill:
    return KlineBackfill(client_for(settings.binance_url), KlinesTable(settings), interval, **options)


def history_gaps() -> list[tuple[datetime, datetime]]:
    """[start, end) of every run of hours missing from the shipped CSV (its real outages)."""
    opens = pd.read_csv(default_history_path(), usecols=["open_time"])["open_time"].to_numpy()
    steps = np.diff(opens)
    return [(datetime.fromtimestamp((opens[i] + 3_600_000) / 1000, UTC),
             datetime.fromtimestamp(opens[i + 1] / 1000, UTC)) for i in np.flatnonzero(steps > 3_600_000)]


def test_the_whole_hourly_history_in_pages_of_1000_with_the_nine_outages_reported_as_gaps(exchange, settings) -> None:
    csv = pd.read_csv(default_history_path())
    before = exchange.requests[KLINES]

    (report,) = backfill_for(settings).run(["BTCUSDT"], utc(2020, 8, 1), AFTER_HISTORY)

    stored = read_klines(settings, "BTCUSDT")
    assert len(stored) == len(csv) == report.rows_written == 15_631
    assert report.pages == exchange.requests[KLINES] - before == 16  # ceil(15,631 / 1000)
    assert not stored.duplicated(["symbol", "interval", "open_time"]).any()
    expected = csv.assign(open_time=pd.to_datetime(csv["open_time"], unit="ms", utc=True))
    pd.testing.assert_frame_equal(
        stored[["open_time", "open", "high", "low", "close", "volume", "quote_volume", "trade_count"]],
        expected[["open_time", "open", "high", "low", "close", "volume", "quote_volume", "count"]]
        .rename(columns={"count": "trade_count"}), check_dtype=False)
    assert (stored["close_time"] == stored["open_time"] + pd.Timedelta(hours=1) - pd.Timedelta(milliseconds=1)).all()
    assert [(gap.start, gap.end) for gap in report.gaps] == history_gaps() and len(report.gaps) == 9
    assert report.gap_bars == 18 and sum(report.bad_rows.values()) == 0
    assert (report.first_bar, report.last_bar) == (utc(2020, 9, 1), utc(2022, 6, 15))
    assert "9 gaps in the exchange's history (18 bars)" in report.line()


def test_a_rerun_adds_nothing_and_asks_only_for_the_holes(exchange, settings) -> None:
    backfill_for(settings).run(["BTCUSDT"], utc(2020, 11, 1), utc(2021, 3, 1))
    table = DeltaTable(settings.storage_url("klines"))
    version, rows = table.version(), len(read_klines(settings))
    before = exchange.requests[KLINES]

    (again,) = backfill_for(settings).run(["BTCUSDT"], utc(2020, 11, 1), utc(2021, 3, 1))

    assert again.rows_written == 0 and again.stored_before == rows
    assert DeltaTable(settings.storage_url("klines")).version() == version  # not even an empty commit
    stored = read_klines(settings)
    assert len(stored) == rows and not stored.duplicated(["symbol", "interval", "open_time"]).any()
    assert len(again.gaps) == 4  # 2020-11-30, 2020-12-21, 2020-12-25, 2021-02-11: asked again, still gaps
    assert exchange.requests[KLINES] - before == again.pages <= 4


def test_minute_bars_of_two_symbols_add_up_to_their_hours(exchange, settings) -> None:
    reports = backfill_for(settings, "1m").run(["BTCUSDT", "ethusdt"], utc(2020, 10, 1), utc(2020, 10, 1, 6))

    assert [(r.symbol, r.rows_written, r.pages) for r in reports] == [("BTCUSDT", 360, 1), ("ETHUSDT", 360, 1)]
    minutes = read_klines(settings, interval="1m")
    hourly = pd.read_csv(default_history_path()).assign(
        open_time=lambda f: pd.to_datetime(f["open_time"], unit="ms", utc=True)).set_index("open_time")
    btc = minutes[minutes["symbol"] == "BTCUSDT"].set_index("open_time")
    by_hour = btc.groupby(btc.index.floor("h")).agg(high=("high", "max"), low=("low", "min"), volume=("volume", "sum"))
    np.testing.assert_allclose(by_hour["high"], hourly.loc[by_hour.index, "high"])
    np.testing.assert_allclose(by_hour["low"], hourly.loc[by_hour.index, "low"])
    np.testing.assert_allclose(by_hour["volume"], hourly.loc[by_hour.index, "volume"], rtol=1e-6)
    assert read_klines(settings, interval="1h").empty


def test_only_closed_bars_are_stored(tmp_path: Path) -> None:
    with start_exchange(speed=1.0, start=utc(2021, 1, 10, 10, 30)) as mid_hour:
        settings = Settings(storage_root=f"file://{tmp_path}/store", binance_url=mid_hour.binance_url)
        (hours,) = backfill_for(settings, "1h").run(["BTCUSDT"], utc(2021, 1, 10), utc(2021, 1, 11))
        (minutes,) = backfill_for(settings, "1m").run(["BTCUSDT"], utc(2021, 1, 10, 10), utc(2021, 1, 11))

    assert hours.rows_written == 10 and hours.last_bar == utc(2021, 1, 10, 9)  # 10:00-10:59 is in progress
    assert hours.end == utc(2021, 1, 10, 10) and not hours.gaps
    assert minutes.rows_written == 30 and minutes.last_bar == utc(2021, 1, 10, 10, 29)
    assert (read_klines(settings, interval=None)["close_time"] < pd.Timestamp("2021-01-10T10:30Z")).all()


def test_weight_is_paced_under_the_budget_and_never_hits_the_limit(tmp_path: Path) -> None:
    # A simulated minute every wall second and a limit of 40 weight per minute: half of it (20) is the
    # budget, 10 pages of weight 2 per minute, and 29 pages to fetch (at least three minutes' worth).
    with start_exchange(speed=60.0, start=AFTER_HISTORY, weight_limit=40) as strict:
        settings = Settings(storage_root=f"file://{tmp_path}/store", binance_url=strict.binance_url)
        backfill = backfill_for(settings, "1m", weight_limit=40, page_limit=100, probe_sleep_cap_s=0.25)
        (report,) = backfill.run(["BTCUSDT"], utc(2021, 3, 1), utc(2021, 3, 3))
        calls_during_ban = strict.calls_during_ban

    assert report.rows_written == 2880 and report.pages == 29
    assert report.weight_waits >= 1 and report.max_used_weight <= 20
    assert report.rate_limit_waits == 0 and calls_during_ban == 0  # no 429 was ever answered


def test_a_429_is_waited_out_for_its_retry_after_then_the_page_asked_again(exchange, settings) -> None:
    exchange.inject(Fault(kind="429", api="binance", path="/api/v3/klines", count=1, retry_after_s=1.0))
    began = time.monotonic()

    (report,) = backfill_for(settings).run(["BTCUSDT"], utc(2021, 1, 1), utc(2021, 1, 2))

    assert report.rate_limit_waits == 1 and report.rows_written == 24
    assert time.monotonic() - began >= 1.0 and exchange.calls_during_ban == 0


def test_a_long_ban_stops_the_run_keeping_what_it_fetched(tmp_path: Path) -> None:
    with start_exchange(speed=1.0, start=AFTER_HISTORY) as banned:
        settings = Settings(storage_root=f"file://{tmp_path}/store", binance_url=banned.binance_url)

        class BannedOnTheThirdPage(BinanceClient):
            pages = 0

            def kline_page(self, *args, **kwargs):
                self.pages += 1
                if self.pages == 3:
                    banned.inject(Fault(kind="418", api="binance", path="/api/v3/klines", retry_after_s=600.0))
                return super().kline_page(*args, **kwargs)

        client = BannedOnTheThirdPage(http=JsonHttpClient(banned.binance_url, cooldowns=HostCooldowns()))
        backfill = KlineBackfill(client, KlinesTable(settings), "1m", page_limit=100, max_rate_limit_wait_s=60.0)
        with pytest.raises(RateLimited, match="418"):
            backfill.run(["BTCUSDT"], utc(2021, 3, 1), utc(2021, 3, 2))

    assert len(read_klines(settings, interval="1m")) == 200  # the two pages fetched, stored before stopping


class TamperedHttp(JsonHttpClient):
    """The exchange's first klines answer, with bad rows put in; later answers untouched."""

    tampered = False

    def get(self, path, params=None):
        response = super().get(path, params)
        if path == "/api/v3/klines" and not self.tampered:
            self.tampered = True
            rows = response.data
            rows[1][2] = "not a number"  # high
            rows[2][2], rows[2][3] = rows[2][3], rows[2][2]  # high < low
            rows[3][5] = "-1.00000000"  # negative volume
            rows[4][0] = rows[4][0] - 86_400_000  # an open time outside the asked range
            rows[5] = "garbage"  # not a kline at all
            rows[6][1] = "0.00000000"  # open price 0
        return response


def test_bad_rows_are_counted_by_reason_and_never_stored(exchange, settings) -> None:
    client = BinanceClient(http=TamperedHttp(exchange.binance_url, cooldowns=HostCooldowns()))
    backfill = KlineBackfill(client, KlinesTable(settings), "1h")

    (report,) = backfill.run(["BTCUSDT"], utc(2021, 1, 1), utc(2021, 1, 3))

    assert report.bad_rows == Counter({"non-numeric": 1, "high < low": 1, "negative volume": 1,
                                       "outside the asked range": 1, "unparsable": 1, "price <= 0": 1})
    assert report.rows_written == 48 - 6 and report.rows_received == 48
    stored = read_klines(settings)
    hours = [utc(2021, 1, 1, h) for h in range(1, 7)]
    assert not stored["open_time"].isin(hours).any()
    assert (stored["high"] >= stored["low"]).all() and (stored["volume"] >= 0).all() and (stored["open"] > 0).all()
    # The moved and the unparsable row left their hours without a bar: reported as such, not as errors.
    assert [(gap.start, gap.end, gap.bars) for gap in report.gaps] == [(utc(2021, 1, 1, 4), utc(2021, 1, 1, 6), 2)]
    assert "6 bad rows (1 high < low, 1 negative volume, 1 non-numeric" in report.line()

    (again,) = backfill_for(settings).run(["BTCUSDT"], utc(2021, 1, 1), utc(2021, 1, 3))
    assert again.rows_written == 6 and len(read_klines(settings)) == 48 and not again.bad_rows


def test_missing_runs_merge_holes_less_than_a_page_apart() -> None:
    grid = np.arange(0, 100, 1, dtype=np.int64)
    stored = np.array([i for i in range(100) if not (10 <= i < 12 or 15 <= i < 16 or 60 <= i < 70)], dtype=np.int64)
    assert missing_runs(grid, stored, step_ms=1, page_limit=10) == [(10, 16), (60, 70)]
    assert missing_runs(grid, stored, step_ms=1, page_limit=3) == [(10, 12), (15, 16), (60, 70)]
    assert missing_runs(grid, grid, step_ms=1) == []


def run_cli(args: list[str], settings: Settings, monkeypatch) -> int:
    monkeypatch.setenv("BTCSTREAM_BINANCE_URL", settings.binance_url)
    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)
    monkeypatch.setenv("BTCSTREAM_SYMBOLS", "BTCUSDT")
    return cli.main(["backfill", *args])


def test_the_command_prints_one_line_per_symbol_and_the_gaps(settings, monkeypatch, capsys) -> None:
    code = run_cli(["--from", "2020-11-30", "--to", "2020-12-01T00:00:00+00:00", "--symbols", "btcusdt,ETHUSDT"],
                   settings, monkeypatch)

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("BTCUSDT 1h [2020-11-30T00:00Z, 2020-12-01T00:00Z): 23 new rows") and "1 gap in" in out[0]
    assert out[1] == "  gap: BTCUSDT 1h: no bars from 2020-11-30T06:00Z to 2020-11-30T07:00Z (1 missing)"
    assert out[2].startswith("ETHUSDT 1h [2020-11-30T00:00Z, 2020-12-01T00:00Z): 0 new rows")  # its history ended
    assert len(read_klines(settings, interval="1h")) == 23


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2021-13-01", "--to", "2021-02-01"], "--from '2021-13-01' is not a date or time"),
    (["--from", "2021-01-01T06:00", "--to", "2021-02-01"], "--from '2021-01-01T06:00' has no time zone"),
    (["--from", "2021-02-01", "--to", "2021-01-01"], "--from 2021-02-01 is not before --to 2021-01-01"),
    (["--from", "2021-01-01", "--to", "2021-01-01T00:00Z"], "is not before --to"),
    (["--from", "2021-01-01", "--to", "2021-02-01", "--interval", "5m"], "--interval '5m': expected one of 1m, 1h"),
    (["--from", "2021-01-01", "--to", "2021-02-01", "--symbols", "BTC-USDT"], "--symbols 'BTC-USDT'"),
    (["--from", "2021-01-01", "--to", "2021-02-01", "--symbols", "DOGEUSDT"], "Invalid symbol"),
])
def test_command_errors_are_one_line(args, message, settings, monkeypatch, capsys) -> None:
    code = run_cli(args, settings, monkeypatch)

    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("btcstream:")]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not DeltaTable.is_deltatable(settings.storage_url("klines"))


def test_a_killed_backfill_resumes_where_it_stopped(exchange, settings, tmp_path: Path) -> None:
    """SIGKILL after some pages (no chance to store what it holds); the rerun fetches only what is missing."""
    before = exchange.requests[KLINES]
    environment = {**os.environ, "BTCSTREAM_BINANCE_URL": exchange.binance_url,
                   "BTCSTREAM_STORAGE_ROOT": settings.storage_root, "BTCSTREAM_STATE_DIR": str(tmp_path / "state")}
    command = [sys.executable, "-m", "btcstream", "backfill", "--from", "2021-01-01", "--to", "2021-01-11",
               "--interval", "1m", "--symbols", "BTCUSDT", "--rows-per-commit", "2000"]  # 15 pages, a commit per 2
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while exchange.requests[KLINES] - before < 6 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.002)
        # From now on the exchange holds every klines answer back: the process waits on a page, then is killed.
        exchange.inject(Fault(kind="timeout", api="binance", path="/api/v3/klines", count=None, delay_s=60.0))
        while exchange.requests[KLINES] - before < 7 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.002)
        time.sleep(0.3)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        exchange.faults.clear()
    stored_before = len(read_klines(settings, interval="1m"))
    assert 0 < stored_before < 14_400

    requests = exchange.requests[KLINES]
    (resumed,) = backfill_for(settings, "1m").run(["BTCUSDT"], utc(2021, 1, 1), utc(2021, 1, 11))

    stored = read_klines(settings, interval="1m")
    assert len(stored) == 14_400 and not stored.duplicated(["symbol", "interval", "open_time"]).any()
    assert resumed.stored_before == stored_before and resumed.rows_written == 14_400 - stored_before
    assert exchange.requests[KLINES] - requests == resumed.pages == -(-(14_400 - stored_before) // 1000)
