"""The chaos run's verdict, computed independently of the job's code: tables read with delta-rs, pandas only.

What a complete pipeline must hold, from what the exchange really sent (`SentLedger`) and what the
harness wrote into the topics itself:

- quotes: every bookTicker update id the exchange wrote to a connection is in raw_data once per
  (symbol, update_id); trades: every aggTrade id it wrote is in trades once per (symbol, trade_id).
  A missing id is explained (a gap) only when it was written inside a fault window where the
  connection itself was lost with the frames in flight: a WebSocket drop or silence (quotes; trades
  must be fetched again over REST) or a kill -9 of the producer (its unsent buffer: quotes and trades).
  Every other missing id is lost. Trades stored that no stream sent must be REST fills (feed "rest")
  of real trades (id <= the newest the exchange had).
- quarantine: every malformed record the harness wrote is there exactly once (found by its marker).
- hourly_metrics: every final row (is_final) equals a recomputation from raw_data and trades with
  pandas (the formulas of `helpers.hourly.independent_hourly`, repeated here on DataFrames).
- counters: received (sent ids + malformed written) = stored + quarantined + conflated + gap + lost;
  and each producer's own status document adds up (received = sent + conflated + overflowed + held).

Not for: running anything (see `chaos_pipeline`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from deltalake import DeltaTable

from btcstream.names import HOURLY_COLUMNS
from btcstream.settings import Settings

GRID_SECONDS = 60  # the realized-volatility grid (the project's default rv_grid, "1 minute")
WINDOW_BEFORE_S = 2.0  # frames written this long before a connection was lost may be lost with it
WINDOW_AFTER_S = 3.0
QUOTE_GAP_KINDS = frozenset({"ws_drop", "ws_silence", "producer_kill9"})
TRADE_GAP_KINDS = frozenset({"producer_kill9"})
REL_TOLERANCE = 1e-9


@dataclass(frozen=True)
class FaultWindow:
    """When a fault could take frames in flight with it (time.monotonic() seconds)."""

    kind: str
    start: float
    end: float


@dataclass
class Verdict:
    """The checker's numbers and the problems it found."""

    sent: Counter[str] = field(default_factory=Counter)  # quote, trade (distinct ids the exchange wrote)
    stored: Counter[str] = field(default_factory=Counter)  # quote, trade (distinct sent ids stored)
    rest_fills: int = 0  # trades stored that no stream sent (REST gap fills)
    gap: Counter[str] = field(default_factory=Counter)  # fault kind -> explained missing ids
    lost: Counter[str] = field(default_factory=Counter)  # quote, trade, quarantine
    duplicated: Counter[str] = field(default_factory=Counter)  # quote, trade, quarantine
    malformed_written: int = 0
    quarantined: int = 0
    other_quarantined: Counter[str] = field(default_factory=Counter)  # reason -> rows not written by the harness
    conflated: int = 0
    hourly_final_rows: int = 0
    hourly_mismatches: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def duplicated_total(self) -> int:
        return sum(self.duplicated.values())

    @property
    def received(self) -> int:
        return self.sent["quote"] + self.sent["trade"] + self.malformed_written

    def counters_add_up(self) -> bool:
        """received = stored + quarantined + conflated + gap + lost."""
        return self.received == (self.stored["quote"] + self.stored["trade"] + self.quarantined + self.conflated
                                 + sum(self.gap.values()) + self.lost_total)

    @property
    def passed(self) -> bool:
        return self.lost_total == 0 and self.duplicated_total == 0 and not self.problems


def read_table(settings: Settings, dataset: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A Delta table's current rows (empty when it does not exist), read by delta-rs."""
    url = settings.storage_url(dataset)
    if not DeltaTable.is_deltatable(url):
        return pd.DataFrame(columns=columns or [])
    return DeltaTable(url).to_pyarrow_table(columns=columns).to_pandas()


def utc(series: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC (delta-rs gives naive UTC for TIMESTAMP_NTZ, aware for TIMESTAMP)."""
    series = pd.to_datetime(series)
    return series.dt.tz_convert("UTC") if series.dt.tz is not None else series.dt.tz_localize("UTC")


def explaining_kind(moment: float, windows: Iterable[FaultWindow], kinds: frozenset[str]) -> str | None:
    """The kind of the first fault window of `kinds` around `moment`, or None."""
    for window in windows:
        if window.kind in kinds and window.start - WINDOW_BEFORE_S <= moment <= window.end + WINDOW_AFTER_S:
            return window.kind
    return None


def check_ids(verdict: Verdict, kind: str, symbol: str, sent: dict[int, float], stored: pd.Series,
              windows: list[FaultWindow], gap_kinds: frozenset[str]) -> set[int]:
    """Exactly-once of one symbol's ids; returns the stored ids no stream sent."""
    counts = stored.value_counts()
    verdict.duplicated[kind] += int((counts - 1).sum())
    stored_ids = set(int(i) for i in counts.index)
    verdict.sent[kind] += len(sent)
    verdict.stored[kind] += len(stored_ids & sent.keys())
    missing = sorted(sent.keys() - stored_ids)
    unexplained = []
    for identifier in missing:
        reason = explaining_kind(sent[identifier], windows, gap_kinds)
        if reason is None:
            unexplained.append(identifier)
        else:
            verdict.gap[reason] += 1
    if unexplained:
        verdict.lost[kind] += len(unexplained)
        verdict.problems.append(f"{symbol}: {len(unexplained)} {kind}(s) sent but not stored, e.g. ids "
                                f"{unexplained[:10]}")
    return stored_ids - sent.keys()


def check_quotes_and_trades(verdict: Verdict, raw: pd.DataFrame, trades: pd.DataFrame,
                            sent: dict[str, dict[str, dict[int, float]]], newest_trade_ids: dict[str, int | None],
                            windows: list[FaultWindow]) -> None:
    for symbol, by_kind in sent.items():
        quotes = raw.loc[(raw.symbol == symbol) & (raw.feed == "websocket"), "update_id"].dropna().astype("int64")
        unexpected = check_ids(verdict, "quote", symbol, by_kind["quote"], quotes, windows, QUOTE_GAP_KINDS)
        if unexpected:
            verdict.problems.append(f"{symbol}: {len(unexpected)} quote update ids stored that the exchange never "
                                    f"sent, e.g. {sorted(unexpected)[:10]}")
        mine = trades.loc[trades.symbol == symbol]
        extra = check_ids(verdict, "trade", symbol, by_kind["trade"], mine.trade_id.astype("int64"), windows,
                          TRADE_GAP_KINDS)
        rest_ids = set(mine.loc[mine.feed == "rest", "trade_id"].astype("int64"))
        newest = newest_trade_ids.get(symbol)
        bad = sorted(i for i in extra if i not in rest_ids or newest is None or i > newest)
        verdict.rest_fills += len(extra) - len(bad)
        if bad:
            verdict.problems.append(f"{symbol}: {len(bad)} trades stored that no stream sent and no REST fill "
                                    f"explains, e.g. {bad[:10]}")


def check_quarantine(verdict: Verdict, quarantine: pd.DataFrame, markers: list[str]) -> None:
    verdict.malformed_written = len(markers)
    values = [bytes(v) if v is not None else b"" for v in quarantine.get("value", pd.Series(dtype=object))]
    found = Counter()
    unmarked = []
    for index, value in enumerate(values):
        hits = [m for m in markers if m.encode() in value]
        if hits:
            found.update(hits)
        else:
            unmarked.append(index)
    for marker in markers:
        if found[marker] == 0:
            verdict.lost["quarantine"] += 1
        elif found[marker] > 1:
            verdict.duplicated["quarantine"] += found[marker] - 1
    verdict.quarantined = sum(1 for m in markers if found[m] > 0)
    if verdict.lost["quarantine"]:
        verdict.problems.append(f"{verdict.lost['quarantine']} malformed records written but not in quarantine")
    reasons = quarantine.get("reason", pd.Series(dtype=object))
    verdict.other_quarantined.update(str(reasons.iloc[i]) for i in unmarked)
    if unmarked:
        verdict.problems.append(f"{len(unmarked)} quarantined records the harness did not write (exchange records "
                                f"refused): {dict(verdict.other_quarantined)}")


def recompute_hourly(raw: pd.DataFrame, trades: pd.DataFrame) -> pd.DataFrame:
    """Hourly rows from raw_data and trades with pandas (quote metrics per hour, trade columns joined)."""
    frame = raw.assign(event_time=utc(raw.event_time))
    frame["mid"] = (frame.bid_price + frame.ask_price) / 2
    frame["spread"] = frame.ask_price - frame.bid_price
    frame["spread_bps"] = frame.spread / frame.mid * 1e4
    frame["liquidity"] = frame.bid_price * frame.bid_qty + frame.ask_price * frame.ask_qty
    frame["window_start"] = frame.event_time.dt.floor("h")
    # epoch microseconds // grid: delta-rs gives microsecond timestamps, so the unit is made explicit
    frame["step"] = frame.event_time.dt.as_unit("us").astype("int64") // (GRID_SECONDS * 1_000_000)
    rows = []
    for (symbol, start), hour in frame.sort_values(["event_time", "update_id"], kind="stable").groupby(
            ["symbol", "window_start"]):
        last_mids = hour.groupby("step").mid.last().sort_index().to_numpy()
        returns = np.diff(np.log(last_mids))
        rows.append({"symbol": symbol, "window_start": start, "avg_price": hour.mid.mean(),
                     "avg_spread": hour.spread.mean(), "avg_spread_bps": hour.spread_bps.mean(),
                     "total_liquidity": hour.liquidity.sum(), "avg_liquidity": hour.liquidity.mean(),
                     "realized_volatility": math.sqrt(float(np.sum(returns ** 2))), "high_price": hour.mid.max(),
                     "low_price": hour.mid.min(), "avg_volume_24h": hour.volume_24h.mean(), "tick_count": len(hour),
                     "open_mid": hour.mid.iloc[0], "close_mid": hour.mid.iloc[-1]})
    quotes = pd.DataFrame(rows).set_index(["symbol", "window_start"])
    rows = []
    if len(trades):
        traded = trades.assign(window_start=utc(trades.trade_time).dt.floor("h"))
        for (symbol, start), hour in traded.groupby(["symbol", "window_start"]):
            buy = float(hour.loc[~hour.buyer_is_maker.astype(bool), "qty"].sum())
            sell = float(hour.loc[hour.buyer_is_maker.astype(bool), "qty"].sum())
            rows.append({"symbol": symbol, "window_start": start,
                         "vwap": float((hour.price * hour.qty).sum() / hour.qty.sum()), "trade_count": len(hour),
                         "buy_volume": buy, "sell_volume": sell,
                         "trade_imbalance": (buy - sell) / (buy + sell) if buy + sell else np.nan})
    trade_rows = pd.DataFrame(rows, columns=["symbol", "window_start", "vwap", "trade_count", "buy_volume",
                                             "sell_volume", "trade_imbalance"]).set_index(["symbol", "window_start"])
    merged = quotes.join(trade_rows, how="outer")
    merged["tick_count"] = merged.tick_count.fillna(0).astype(int)
    merged["trade_count"] = merged.trade_count.fillna(0).astype(int)
    merged[["buy_volume", "sell_volume"]] = merged[["buy_volume", "sell_volume"]].fillna(0.0)
    return merged


def check_hourly(verdict: Verdict, hourly: pd.DataFrame, raw: pd.DataFrame, trades: pd.DataFrame) -> None:
    if hourly.empty:
        verdict.problems.append("hourly_metrics is empty")
        return
    final = hourly.loc[hourly.is_final.astype(bool)].assign(window_start=lambda f: utc(f.window_start))
    verdict.hourly_final_rows = len(final)
    if final.empty:
        verdict.problems.append("no final hourly row to check")
        return
    want = recompute_hourly(raw, trades)
    for _, row in final.iterrows():
        key = (row.symbol, row.window_start)
        if key not in want.index:
            verdict.hourly_mismatches.append(f"{key}: no ticks or trades in raw_data/trades for this final row")
            continue
        expected = want.loc[key]
        for column in HOURLY_COLUMNS[3:]:
            got, wanted = row[column], expected[column]
            if _differs(got, wanted):
                verdict.hourly_mismatches.append(f"{row.symbol} {row.window_start:%Y-%m-%d %H:%M} {column}: "
                                                 f"stored {got!r}, recomputed {wanted!r}")
    if verdict.hourly_mismatches:
        verdict.problems.append(f"{len(verdict.hourly_mismatches)} final hourly values differ from a recomputation, "
                                f"e.g. {verdict.hourly_mismatches[:3]}")


def _differs(got: Any, wanted: Any) -> bool:
    got_missing = got is None or (isinstance(got, float) and math.isnan(got))
    wanted_missing = wanted is None or (isinstance(wanted, float) and math.isnan(wanted))
    if got_missing or wanted_missing:
        return got_missing != wanted_missing
    return not math.isclose(float(got), float(wanted), rel_tol=REL_TOLERANCE, abs_tol=1e-12)


def check_feed_documents(verdict: Verdict, documents: list[dict[str, Any]]) -> None:
    """Each producer's status document adds up; the conflated quotes summed over producers."""
    for document in documents:
        counts = document.get("counts") or {}
        received, sent, overflowed = counts.get("received", {}), counts.get("sent", {}), counts.get("overflowed", {})
        conflated, held = int(counts.get("conflated", 0)), int(counts.get("held", 0))
        verdict.conflated += conflated
        quote_sum = sent.get("quote", 0) + conflated + overflowed.get("quote", 0) + held
        if received.get("quote", 0) != quote_sum:
            verdict.problems.append(f"producer started {document.get('started_at')}: received.quote "
                                    f"{received.get('quote')} != sent + conflated + overflowed + held {quote_sum}")
        trade_sum = sent.get("trade", 0) + overflowed.get("trade", 0)
        if received.get("trade", 0) != trade_sum:
            verdict.problems.append(f"producer started {document.get('started_at')}: received.trade "
                                    f"{received.get('trade')} != sent + overflowed {trade_sum}")


def settle_conflated(verdict: Verdict) -> None:
    """Conflated quotes are missing by design: that many of the lost quotes are conflated, not lost."""
    moved = min(verdict.conflated, verdict.lost["quote"])
    verdict.lost["quote"] -= moved
    verdict.conflated = moved
    if moved and not verdict.lost["quote"]:
        verdict.problems = [p for p in verdict.problems if "quote(s) sent but not stored" not in p]
