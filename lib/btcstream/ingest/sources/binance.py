"""Binance spot REST market data: server time, book ticker, 24 h statistics, klines, aggregate trades.

Contracts: `/work/shared/reference/market-apis.md` (prices and quantities arrive as strings, times
as epoch milliseconds). Each parser normalises at the edge: floats, aware UTC datetimes; a missing,
null or unparsable field becomes None. Not for: scheduling, Kafka, or deciding what a tick holds.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from btcstream.errors import BadResponse
from btcstream.ingest.sources.fields import as_float, as_utc_from_ms
from btcstream.ingest.sources.http import JsonHttpClient

log = logging.getLogger(__name__)

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
KLINE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
KLINES_MAX_LIMIT = 1000
AGG_TRADES_MAX_LIMIT = 1000
AGG_TRADES_WEIGHT = 4  # `GET /api/v3/aggTrades`, whatever the limit


@dataclass(frozen=True)
class BookTicker:
    """Best bid and ask of one symbol (the book ticker carries no timestamp of its own)."""

    symbol: str
    bid_price: float | None
    bid_qty: float | None
    ask_price: float | None
    ask_qty: float | None


@dataclass(frozen=True)
class Ticker24h:
    """Rolling 24 h statistics of one symbol."""

    symbol: str
    price_change: float | None
    price_change_percent: float | None
    last_price: float | None
    open_price: float | None
    high_price: float | None
    low_price: float | None
    volume: float | None  # base asset
    quote_volume: float | None
    open_time: datetime | None
    close_time: datetime | None


@dataclass(frozen=True)
class Kline:
    """One candlestick bar."""

    open_time: datetime
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    volume: float | None
    close_time: datetime | None
    quote_volume: float | None
    trades: int | None
    taker_buy_volume: float | None = None  # base asset bought by takers (market buys)
    taker_buy_quote_volume: float | None = None


@dataclass(frozen=True)
class KlinePage:
    """One answer of `GET /api/v3/klines`: the parsed bars, and how many rows could not be parsed at all."""

    klines: list[Kline]
    unparsed_rows: int  # not an array, too short, or no open time: nothing to keep


@dataclass(frozen=True)
class AggTrade:
    """One aggregate trade: the fills of one taker order at one price (REST `aggTrades` or the `@aggTrade` stream)."""

    symbol: str
    trade_id: int  # `a`: increases by one per symbol
    price: float
    qty: float
    first_trade_id: int  # `f`
    last_trade_id: int  # `l`
    trade_time: datetime  # `T`
    buyer_is_maker: bool  # `m`: true = a sell hit the bid


def _as_int(value: Any) -> int | None:
    """A JSON integer (not a bool, not a float) as int, else None: ids must not be guessed from 1.5 or "7"."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_agg_trade(item: Any, symbol: str) -> AggTrade | None:
    """One aggregate-trade object -> AggTrade, or None when any field is missing or of the wrong type.

    Raw (REST; the stream's event adds `"e":"aggTrade","E":..,"s":"BTCUSDT"`):
    `{"a":26129,"p":"16500.01","q":"0.010","f":100,"l":105,"T":1672515782136,"m":true,"M":true}`
    A trade is all or nothing: a record with a made-up price or id would be worse than a counted skip.
    """
    if not isinstance(item, dict):
        return None
    trade_id, first, last = _as_int(item.get("a")), _as_int(item.get("f")), _as_int(item.get("l"))
    price, qty = as_float(item.get("p")), as_float(item.get("q"))
    trade_time = as_utc_from_ms(_as_int(item.get("T")))
    maker = item.get("m")
    if trade_id is None or first is None or last is None or price is None or qty is None or trade_time is None \
            or not isinstance(maker, bool):
        return None
    if not math.isfinite(price * qty):  # the record's quote_qty would be Infinity, which JSON cannot carry
        return None
    return AggTrade(symbol=symbol.upper(), trade_id=trade_id, price=price, qty=qty, first_trade_id=first,
                    last_trade_id=last, trade_time=trade_time, buyer_is_maker=maker)


def parse_server_time(payload: Any) -> datetime:
    """`{"serverTime": 1499827319559}` -> aware UTC datetime (raises BadResponse: nothing sane to fall back to)."""
    moment = as_utc_from_ms(payload.get("serverTime")) if isinstance(payload, dict) else None
    if moment is None:
        raise BadResponse("binance", "/api/v3/time", f"no serverTime in {str(payload)[:120]}")
    return moment


def parse_book_ticker(item: Any) -> BookTicker | None:
    """One book-ticker object -> BookTicker, or None when it names no symbol.

    Raw: `{"symbol":"BTCUSDT","bidPrice":"97017.57000000","bidQty":"0.10025000",
    "askPrice":"97017.58000000","askQty":"7.11458000"}`
    """
    if not isinstance(item, dict) or not isinstance(item.get("symbol"), str):
        return None
    return BookTicker(symbol=item["symbol"].upper(), bid_price=as_float(item.get("bidPrice")),
                      bid_qty=as_float(item.get("bidQty")), ask_price=as_float(item.get("askPrice")),
                      ask_qty=as_float(item.get("askQty")))


def parse_ticker_24h(item: Any) -> Ticker24h | None:
    """One 24 h ticker object (FULL) -> Ticker24h, or None when it names no symbol.

    Raw: `{"symbol":"BTCUSDT","priceChange":"887.80000000","priceChangePercent":"0.923",
    "weightedAvgPrice":"96502.11000000","prevClosePrice":"96129.77000000","lastPrice":"97017.57000000",
    "lastQty":"0.00100000","bidPrice":"97017.57000000","bidQty":"0.10025000","askPrice":"97017.58000000",
    "askQty":"7.11458000","openPrice":"96129.77000000","highPrice":"97231.00000000","lowPrice":"95410.00000000",
    "volume":"18012.30000000","quoteVolume":"1738221467.31000000","openTime":1739444316000,
    "closeTime":1739530716000,"firstId":28385,"lastId":28460,"count":76}`
    """
    if not isinstance(item, dict) or not isinstance(item.get("symbol"), str):
        return None
    return Ticker24h(symbol=item["symbol"].upper(), price_change=as_float(item.get("priceChange")),
                     price_change_percent=as_float(item.get("priceChangePercent")),
                     last_price=as_float(item.get("lastPrice")), open_price=as_float(item.get("openPrice")),
                     high_price=as_float(item.get("highPrice")), low_price=as_float(item.get("lowPrice")),
                     volume=as_float(item.get("volume")), quote_volume=as_float(item.get("quoteVolume")),
                     open_time=as_utc_from_ms(item.get("openTime")), close_time=as_utc_from_ms(item.get("closeTime")))


def parse_kline(row: Any) -> Kline | None:
    """One kline row -> Kline, or None when the row has no open time.

    Raw: `[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",
    1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]`
    """
    if not isinstance(row, list) or len(row) < 9:
        return None
    open_time = as_utc_from_ms(row[0])
    if open_time is None:
        return None
    trades = as_float(row[8])
    return Kline(open_time=open_time, open=as_float(row[1]), high=as_float(row[2]), low=as_float(row[3]),
                 close=as_float(row[4]), volume=as_float(row[5]), close_time=as_utc_from_ms(row[6]),
                 quote_volume=as_float(row[7]), trades=None if trades is None else int(trades),
                 taker_buy_volume=as_float(row[9]) if len(row) > 9 else None,
                 taker_buy_quote_volume=as_float(row[10]) if len(row) > 10 else None)


class BinanceClient:
    """The Binance public market-data endpoints btcstream uses (no API key needed)."""

    def __init__(self, base_url: str | None = None, http: JsonHttpClient | None = None) -> None:
        """Talk to `base_url` (`Settings.binance_url`), or through a prepared `http` client."""
        if http is None and not base_url:
            raise ValueError("BinanceClient needs base_url (Settings.binance_url) or an http client")
        self.http = http or JsonHttpClient(str(base_url))
        self.used_weight_1m: int | None = None  # from the last answer's X-MBX-USED-WEIGHT-1M
        self.skipped_agg_trades = 0  # aggTrades items that did not parse

    def server_time(self) -> datetime:
        """`GET /api/v3/time` (weight 1): the exchange's clock."""
        return parse_server_time(self._get("/api/v3/time"))

    def book_tickers(self, symbols: Iterable[str]) -> dict[str, BookTicker]:
        """`GET /api/v3/ticker/bookTicker?symbols=[...]` (weight 4): best bid/ask of every symbol, in one request.

        Symbols missing from the answer are missing from the dict (the caller counts them).
        """
        wanted = [s.upper() for s in symbols]
        payload = self._get("/api/v3/ticker/bookTicker", {"symbols": json.dumps(wanted, separators=(",", ":"))})
        if not isinstance(payload, (list, dict)):
            raise BadResponse(self.http.host, "/api/v3/ticker/bookTicker", f"unexpected answer {str(payload)[:120]}")
        items = payload if isinstance(payload, list) else [payload]
        parsed = (parse_book_ticker(item) for item in items)
        return {ticker.symbol: ticker for ticker in parsed if ticker is not None and ticker.symbol in wanted}

    def ticker_24h(self, symbol: str) -> Ticker24h:
        """`GET /api/v3/ticker/24hr?symbol=...` (weight 2): rolling 24 h statistics."""
        ticker = parse_ticker_24h(self._get("/api/v3/ticker/24hr", {"symbol": symbol.upper()}))
        if ticker is None:
            raise BadResponse(self.http.host, "/api/v3/ticker/24hr", f"answer for {symbol} names no symbol")
        return ticker

    def tickers_24h(self, symbols: Iterable[str]) -> dict[str, Ticker24h]:
        """`GET /api/v3/ticker/24hr?symbols=[...]`: 24 h statistics of several symbols in one request.

        Weight 2 for up to 20 symbols (40 up to 100), against 2 per symbol when asked one by one.
        Symbols missing from the answer are missing from the dict.
        """
        wanted = [s.upper() for s in symbols]
        payload = self._get("/api/v3/ticker/24hr", {"symbols": json.dumps(wanted, separators=(",", ":"))})
        if not isinstance(payload, list):
            raise BadResponse(self.http.host, "/api/v3/ticker/24hr", f"expected a JSON array, got {str(payload)[:120]}")
        parsed = (parse_ticker_24h(item) for item in payload)
        return {ticker.symbol: ticker for ticker in parsed if ticker is not None and ticker.symbol in wanted}

    def klines(self, symbol: str, interval: str = "1h", start: datetime | None = None, end: datetime | None = None,
               limit: int = 500) -> list[Kline]:
        """`GET /api/v3/klines` (weight 2): bars with open time in [start, end], oldest first, at most `limit`."""
        return self.kline_page(symbol, interval, start, end, limit).klines

    def kline_page(self, symbol: str, interval: str = "1h", start: datetime | None = None,
                   end: datetime | None = None, limit: int = KLINES_MAX_LIMIT) -> KlinePage:
        """One page of `GET /api/v3/klines` (weight 2), counting the rows that could not be parsed.

        A pager (`btcstream.ingest.backfill`) asks again from the last open time + 1 ms until a page
        comes back shorter than `limit` or reaches `end`.
        """
        if interval not in KLINE_INTERVALS:
            raise ValueError(f"interval {interval!r} is not one of {', '.join(KLINE_INTERVALS)}")
        if not 1 <= limit <= KLINES_MAX_LIMIT:
            raise ValueError(f"limit must be 1..{KLINES_MAX_LIMIT}, got {limit}")
        params: dict[str, Any] = {"symbol": symbol.upper(), "interval": interval, "limit": limit}
        if start is not None:
            params["startTime"] = int(start.timestamp() * 1000)
        if end is not None:
            params["endTime"] = int(end.timestamp() * 1000)
        payload = self._get("/api/v3/klines", params)
        if not isinstance(payload, list):
            raise BadResponse(self.http.host, "/api/v3/klines", f"expected a JSON array, got {str(payload)[:120]}")
        parsed = [parse_kline(row) for row in payload]
        klines = [kline for kline in parsed if kline is not None]
        return KlinePage(klines=klines, unparsed_rows=len(parsed) - len(klines))

    def agg_trades(self, symbol: str, from_id: int, limit: int = AGG_TRADES_MAX_LIMIT) -> list[AggTrade]:
        """`GET /api/v3/aggTrades?symbol=..&fromId=..&limit=..` (weight 4): trades with id >= `from_id`, oldest first.

        Used to fill trade-id gaps of the WebSocket feed. Items that do not parse are left out and
        counted in `skipped_agg_trades` (the caller sees the hole as ids still missing).
        """
        if not 1 <= limit <= AGG_TRADES_MAX_LIMIT:
            raise ValueError(f"limit must be 1..{AGG_TRADES_MAX_LIMIT}, got {limit}")
        if from_id < 0:
            raise ValueError(f"from_id must be >= 0, got {from_id}")
        payload = self._get("/api/v3/aggTrades", {"symbol": symbol.upper(), "fromId": from_id, "limit": limit})
        if not isinstance(payload, list):
            raise BadResponse(self.http.host, "/api/v3/aggTrades", f"expected a JSON array, got {str(payload)[:120]}")
        trades = [parse_agg_trade(item, symbol) for item in payload]
        self.skipped_agg_trades += sum(trade is None for trade in trades)
        return [trade for trade in trades if trade is not None]

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self.http.get(path, params)
        weight = response.headers.get(USED_WEIGHT_HEADER)
        if weight is not None and weight.isdigit():
            self.used_weight_1m = int(weight)
        return response.data
