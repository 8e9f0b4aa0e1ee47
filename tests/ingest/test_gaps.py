"""Continuity of the WebSocket feed: update-id jumps vs data gaps, downtime windows, trade-id gaps filled
from REST exactly once, within the request-weight limit and Retry-After; and the aggTrades client."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from btcstream.errors import AccessDenied, RateLimited, SourceUnavailable
from btcstream.ingest.gaps import ContinuityTracker, FillRequest, GapFiller
from btcstream.ingest.sources.binance import AggTrade, BinanceClient, parse_agg_trade
from btcstream.ingest.sources.http import ApiResponse
from helpers.ws_script_server import FakeBinanceRest, agg_trade

SYMBOL = "BTCUSDT"
T0 = 1_700_000_000.0


def trade(trade_id: int, symbol: str = SYMBOL) -> AggTrade:
    parsed = parse_agg_trade(agg_trade(symbol, trade_id, time_ms=1_700_000_000_000 + trade_id), symbol)
    assert parsed is not None
    return parsed


def exchange_with(ids: range | list[int]) -> FakeBinanceRest:
    return FakeBinanceRest({SYMBOL: {i: trade(i) for i in ids}})


def run_filler(tracker: ContinuityTracker, rest: Any, until_idle: bool = True, timeout_s: float = 5.0,
               **options: Any) -> tuple[list[int], GapFiller]:
    """Run a GapFiller until nothing is left to fill (or the timeout); returns the trade ids it sent."""
    sent: list[int] = []

    async def send(filled: AggTrade) -> None:
        sent.append(filled.trade_id)

    filler = GapFiller(tracker, rest, send, **options)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(filler.run(stop))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
            if until_idle and tracker.next_fill() is None and tracker.next_probe_due() is None:
                break
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    return sent, filler


# -- quotes ------------------------------------------------------------------------------------------------

def test_update_id_jumps_on_a_live_connection_are_counted_not_data_gaps():
    tracker = ContinuityTracker([SYMBOL])
    for update_id, at in [(100, T0), (101, T0 + 1), (105, T0 + 2), (105, T0 + 3), (104, T0 + 3), (110, T0 + 4)]:
        tracker.quote(SYMBOL, update_id, at)
    jumps = tracker.update_id_jumps[SYMBOL]
    assert (jumps.count, jumps.ids_skipped, jumps.last[:2]) == (2, 3 + 4, (105, 110))
    assert list(tracker.gaps) == []  # the book moved below its top: no data is missing
    assert tracker.document()["update_id_jumps"][SYMBOL]["last"]["from_id"] == 105


def test_duplicate_update_ids_are_refused():
    tracker = ContinuityTracker([SYMBOL])
    assert [tracker.quote(SYMBOL, u, T0) for u in (7, 8, 8, 6, 9)] == [True, True, False, False, True]


def test_a_downtime_is_a_data_gap_with_the_update_ids_on_both_sides():
    tracker = ContinuityTracker([SYMBOL, "ETHUSDT"])
    tracker.quote(SYMBOL, 500, T0)
    tracker.connection_down([SYMBOL], since=T0 + 1.0, reason="abnormal_closure")
    tracker.connection_up([SYMBOL], at=T0 + 4.5)
    tracker.quote(SYMBOL, 530, T0 + 4.6)  # the jump across the downtime is part of the data gap, not a "jump"
    tracker.quote(SYMBOL, 540, T0 + 4.7)  # a jump on the live connection again
    (gap,) = tracker.gaps
    document = gap.document()
    assert {k: document[k] for k in ("symbol", "kind", "from_id", "to_id", "duration_s", "filled", "reason")} == {
        "symbol": SYMBOL, "kind": "downtime", "from_id": 500, "to_id": 530, "duration_s": 3.5, "filled": False,
        "reason": "abnormal_closure"}
    assert document["start"] == datetime.fromtimestamp(T0 + 1.0, tz=timezone.utc).isoformat()
    assert tracker.update_id_jumps[SYMBOL].count == 1  # 530 -> 540 only


# -- trades ----------------------------------------------------------------------------------------------------

def test_a_trade_id_gap_inside_a_connection_is_filled_from_rest_exactly_once():
    tracker = ContinuityTracker([SYMBOL])
    stream = [1, 2, 3, 7, 8, 5, 9]  # 4..6 missing; 5 arrives late from the stream itself
    accepted = [i for i in stream if tracker.trade(SYMBOL, i, T0 + i)]
    assert accepted == [1, 2, 3, 7, 8, 5, 9]
    assert tracker.missing_trades == 2
    rest = exchange_with(range(1, 20))
    sent, filler = run_filler(tracker, rest)
    assert sent == [4, 6]  # only what was missing, with feed="rest" by the caller
    assert [call[:3] for call in rest.calls] == [(SYMBOL, 4, 1000), (SYMBOL, 6, 1000)]
    (gap,) = tracker.gaps
    assert (gap.kind, gap.from_id, gap.to_id, gap.filled, gap.recovered, gap.missing) == ("trade_ids", 4, 6, True, 3, 0)
    assert [tracker.trade(SYMBOL, i, T0) for i in (4, 6, 9)] == [False, False, False]  # later copies: duplicates


def test_trades_missed_at_the_end_of_a_downtime_are_found_by_a_probe():
    tracker = ContinuityTracker([SYMBOL], probe_delay_s=0.05)
    for i in (1, 2, 3):
        tracker.trade(SYMBOL, i, T0)
    tracker.connection_down([SYMBOL], since=T0 + 1, reason="stale")
    tracker.connection_up([SYMBOL], at=T0 + 2)
    assert tracker.next_fill() is None  # the next stream trade may still show the gap by itself
    rest = exchange_with(range(1, 7))  # 4..6 happened while the connection was down; no trade since
    sent, _ = run_filler(tracker, rest)
    assert sent == [4, 5, 6]
    probe = [gap for gap in tracker.gaps if gap.kind == "trade_ids"]
    assert len(probe) == 1 and (probe[0].from_id, probe[0].to_id, probe[0].filled, probe[0].reason) == (
        4, 6, True, "downtime")
    assert tracker.trade(SYMBOL, 5, T0) is False and tracker.trade(SYMBOL, 7, T0) is True


def test_a_stream_trade_after_the_reconnect_cancels_the_probe_and_opens_a_gap():
    tracker = ContinuityTracker([SYMBOL], probe_delay_s=10.0)
    tracker.trade(SYMBOL, 10, T0)
    tracker.connection_down([SYMBOL], since=T0 + 1, reason="closed")
    tracker.connection_up([SYMBOL], at=T0 + 2)
    tracker.trade(SYMBOL, 15, T0 + 3)
    assert tracker.next_fill() == FillRequest(SYMBOL, 11, 14) and tracker.next_probe_due() is None
    (gap,) = [g for g in tracker.gaps if g.kind == "trade_ids"]
    assert gap.reason == "downtime"


def test_ids_the_exchange_does_not_return_are_counted_unrecoverable():
    tracker = ContinuityTracker([SYMBOL])
    for i in (1, 10):
        tracker.trade(SYMBOL, i, T0)
    sent, _ = run_filler(tracker, exchange_with([1, 2, 3, 6, 7, 10]))  # 4, 5, 8, 9 are gone at the exchange
    assert sent == [2, 3, 6, 7]
    (gap,) = tracker.gaps
    assert (gap.recovered, gap.unrecoverable, gap.missing, gap.filled) == (4, 4, 0, False)
    assert tracker.document()["gaps"]["unfilled_trade_gaps"] == 1


def test_a_long_gap_is_fetched_in_pages_of_1000():
    tracker = ContinuityTracker([SYMBOL])
    tracker.trade(SYMBOL, 1, T0)
    tracker.trade(SYMBOL, 2500, T0)
    rest = exchange_with(range(1, 2501))
    sent, _ = run_filler(tracker, rest)
    assert sent == list(range(2, 2500))
    assert [call[1] for call in rest.calls] == [2, 1002, 2002]


def test_overflowed_trades_become_missing_and_are_fetched_again():
    tracker = ContinuityTracker([SYMBOL])
    for i in range(1, 6):
        tracker.trade(SYMBOL, i, T0)
        if i in (3, 4):
            tracker.trade_overflowed(SYMBOL, i, T0)
    assert tracker.missing_trades == 2 and [g.kind for g in tracker.gaps] == ["trade_overflow"]
    sent, _ = run_filler(tracker, exchange_with(range(1, 6)))
    assert sent == [3, 4] and tracker.gaps[0].filled


# -- pacing ----------------------------------------------------------------------------------------------------

class _ExchangeClockNear:
    """An exchange clock that starts `seconds_in_minute` into a minute and runs at the local rate."""

    synced, rate = True, 1.0

    def __init__(self, seconds_in_minute: float) -> None:
        self.start = 1_700_000_040.0 + seconds_in_minute  # 1_700_000_040 is a whole minute
        self.started = time.monotonic()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.start + time.monotonic() - self.started, tz=timezone.utc)


def test_fills_wait_for_the_next_minute_when_the_used_weight_nears_the_ceiling():
    tracker = ContinuityTracker([SYMBOL])
    for i in (1, 1500, 3000):  # two gaps: two requests
        tracker.trade(SYMBOL, i, T0)
    rest = exchange_with(range(1, 3001))
    rest.weights = [5990, 10]  # the first answer says this minute's weight is nearly used up
    sent, filler = run_filler(tracker, rest, weight_ceiling=3000, clock=_ExchangeClockNear(59.6))
    waited = rest.calls[1][3] - rest.calls[0][3]
    assert filler.weight_waits == 1 and 0.3 <= waited < 1.5, waited  # until the exchange's minute turned (0.4 s)
    assert sent == [i for i in range(2, 3000) if i != 1500]


def test_a_429_is_waited_out_and_never_retried_during_the_ban():
    tracker = ContinuityTracker([SYMBOL])
    for i in (1, 5):
        tracker.trade(SYMBOL, i, T0)
    rest = exchange_with(range(1, 6))
    rest.errors = [RateLimited("api.binance.com", "/api/v3/aggTrades", 429, 0.4, time.monotonic() + 0.4),
                   SourceUnavailable("api.binance.com", "/api/v3/aggTrades", "HTTP 503")]
    sent, filler = run_filler(tracker, rest, timeout_s=8)
    first, second, third = (call[3] for call in rest.calls)
    assert second - first >= 0.4  # Retry-After honoured
    assert third - second >= 0.9  # then a 5xx: a capped exponential retry (1 s first)
    assert sent == [2, 3, 4] and filler.errors == {"rate_limited": 1, "SourceUnavailable": 1}


def test_a_restricted_location_stops_filling_and_counts_the_ids_unrecoverable():
    tracker = ContinuityTracker([SYMBOL])
    for i in (1, 5):
        tracker.trade(SYMBOL, i, T0)
    rest = exchange_with(range(1, 6))
    rest.errors = [AccessDenied("api.binance.com", "/api/v3/aggTrades", 451, "restricted location")]
    sent, _ = run_filler(tracker, rest, until_idle=False, timeout_s=1)
    assert sent == [] and tracker.missing_trades == 0 and tracker.gaps[0].unrecoverable == 3


# -- the REST client -----------------------------------------------------------------------------------------------

class _StubHttp:
    """Answers every GET with `payload` and a used-weight header; records the calls."""

    host = "api.binance.com"

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str, params: dict[str, Any] | None = None) -> ApiResponse:
        self.calls.append((path, dict(params or {})))
        return ApiResponse(data=self.payload, headers={"X-MBX-USED-WEIGHT-1M": "12"}, status=200)

    def close(self) -> None:
        pass


def test_agg_trades_asks_from_an_id_and_skips_items_that_do_not_parse():
    good = {"a": 26129, "p": "16500.01", "q": "0.010", "f": 100, "l": 105, "T": 1672515782136, "m": True, "M": True}
    http = _StubHttp([good, {**good, "a": "26130"}, {**good, "a": 26131, "m": "yes"}, {**good, "a": 26132}])
    client = BinanceClient(http=http)  # type: ignore[arg-type]
    trades = client.agg_trades("btcusdt", from_id=26129, limit=4)
    assert http.calls == [("/api/v3/aggTrades", {"symbol": "BTCUSDT", "fromId": 26129, "limit": 4})]
    assert [t.trade_id for t in trades] == [26129, 26132] and client.skipped_agg_trades == 2
    assert trades[0] == AggTrade(symbol="BTCUSDT", trade_id=26129, price=16500.01, qty=0.01, first_trade_id=100,
                                 last_trade_id=105, trade_time=datetime(2022, 12, 31, 19, 43, 2, 136000, timezone.utc),
                                 buyer_is_maker=True)
    assert client.used_weight_1m == 12
    with pytest.raises(ValueError):
        client.agg_trades("BTCUSDT", from_id=1, limit=1001)
