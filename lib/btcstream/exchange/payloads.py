"""The JSON answers of the local exchange, shaped exactly like Binance's and CoinGecko's.

Binance sends prices and quantities as strings with 8 decimals and times as epoch ms; CoinGecko
sends JSON numbers (or null) and ISO-8601 UTC times with milliseconds and `Z`.
The WebSocket events (`book_ticker_event`, `agg_trade_event`, `ticker_24h_event`) are serialised
here once per message, compactly, so the stream server can send the same bytes to every subscriber.
See `/work/shared/reference/market-apis.md`. Not for: HTTP status handling (see `server`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from btcstream.exchange.market import DAY_MS, ReplayMarket
from btcstream.exchange.tape import AggTrade, BookUpdate
from btcstream.symbols import coin_id_for_symbol

KLINE_INTERVAL_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": DAY_MS, "3d": 3 * DAY_MS, "1w": 7 * DAY_MS,
}  # 1M (calendar months) is not served by the local exchange
WEEK_ALIGNMENT_MS = 4 * DAY_MS  # the epoch was a Thursday; Binance weeks open on Monday 00:00 UTC
COINGECKO_REFRESH_MS = 60_000  # CoinGecko refreshes a coin's market data about once a minute
COINGECKO_NAMES = {"bitcoin": ("btc", "Bitcoin"), "ethereum": ("eth", "Ethereum")}
# (epoch ms, circulating supply then, new coins per day): Bitcoin mints 6.25 BTC x 144 blocks a day
# from May 2020 to April 2024. Coins without an entry get a null market cap rather than a guess.
CIRCULATING_SUPPLY = {"bitcoin": (1_598_918_400_000, 18_478_000.0, 900.0)}
MAX_SUPPLY = {"bitcoin": 21_000_000}


def binance_number(value: float) -> str:
    """Binance's string form of a price or quantity: `97017.57000000`."""
    return f"{value:.8f}"


def book_ticker(market: ReplayMarket, symbol: str, now_ms: int) -> dict[str, str]:
    quote = market.quote(symbol, now_ms)
    return {"symbol": symbol, "bidPrice": binance_number(quote.bid_price), "bidQty": binance_number(quote.bid_qty),
            "askPrice": binance_number(quote.ask_price), "askQty": binance_number(quote.ask_qty)}


def book_ticker_event(update: BookUpdate) -> str:
    """`<symbol>@bookTicker` (no event time, as Binance):
    `{"u":400900217,"s":"BTCUSDT","b":"97017.57000000","B":"0.10025000","a":"97017.58000000","A":"7.11458000"}`."""
    return (f'{{"u":{update.update_id},"s":"{update.symbol}","b":"{update.bid_price:.8f}","B":"{update.bid_qty:.8f}",'
            f'"a":"{update.ask_price:.8f}","A":"{update.ask_qty:.8f}"}}')


def agg_trade_event(trade: AggTrade, event_ms: int) -> str:
    """`<symbol>@aggTrade`: `{"e":"aggTrade","E":..,"s":..,"a":..,"p":..,"q":..,"f":..,"l":..,"T":..,"m":..,"M":true}`."""
    return (f'{{"e":"aggTrade","E":{event_ms},"s":"{trade.symbol}","a":{trade.trade_id},"p":"{trade.price:.8f}",'
            f'"q":"{trade.qty:.8f}","f":{trade.first_trade_id},"l":{trade.last_trade_id},"T":{trade.time_ms},'
            f'"m":{"true" if trade.buyer_is_maker else "false"},"M":true}}')


def agg_trade_rest(trade: AggTrade) -> dict[str, Any]:
    """One element of `GET /api/v3/aggTrades`: `{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,
    "T":1498793709153,"m":true,"M":true}`."""
    return {"a": trade.trade_id, "p": binance_number(trade.price), "q": binance_number(trade.qty),
            "f": trade.first_trade_id, "l": trade.last_trade_id, "T": trade.time_ms, "m": trade.buyer_is_maker, "M": True}


# REST 24 h ticker field -> its short name in the `<symbol>@ticker` event
TICKER_EVENT_FIELDS = {"priceChange": "p", "priceChangePercent": "P", "weightedAvgPrice": "w", "prevClosePrice": "x",
                       "lastPrice": "c", "lastQty": "Q", "bidPrice": "b", "bidQty": "B", "askPrice": "a", "askQty": "A",
                       "openPrice": "o", "highPrice": "h", "lowPrice": "l", "volume": "v", "quoteVolume": "q",
                       "openTime": "O", "closeTime": "C", "firstId": "F", "lastId": "L", "count": "n"}


def ticker_24h_event(market: ReplayMarket, symbol: str, now_ms: int) -> str:
    """`<symbol>@ticker` (rolling 24 h statistics): the REST FULL ticker under the stream's short names."""
    full = ticker_24h(market, symbol, now_ms)
    event: dict[str, Any] = {"e": "24hrTicker", "E": now_ms, "s": symbol}
    event.update({short: full[name] for name, short in TICKER_EVENT_FIELDS.items()})
    return json.dumps(event, separators=(",", ":"))


def ticker_24h(market: ReplayMarket, symbol: str, now_ms: int, mini: bool = False) -> dict[str, Any]:
    """The rolling 24 h ticker at `now_ms`: window [now - 24 h, now]."""
    stats = market.window(symbol, now_ms - DAY_MS, now_ms + 1)
    quote = market.quote(symbol, now_ms)
    if stats is None:  # before the history starts: an empty window, as Binance shows a fresh symbol
        last = quote.last_price
        high = low = opened = last
        volume = quote_volume = 0.0
        trades, last_id = 0, -1
    else:
        opened, high, low, last = stats.open, stats.high, stats.low, quote.last_price
        volume, quote_volume, trades, last_id = stats.volume, stats.quote_volume, stats.trades, stats.last_trade_id
    payload: dict[str, Any] = {"symbol": symbol}
    if not mini:
        change = last - opened  # priceChange = lastPrice - openPrice; percent = change / open * 100
        payload.update({
            "priceChange": binance_number(change),
            "priceChangePercent": f"{change / opened * 100:.3f}" if opened else "0.000",
            "weightedAvgPrice": binance_number(quote_volume / volume if volume else last),
            "prevClosePrice": binance_number(market.price_at(symbol, now_ms - DAY_MS - 1000)),
            "lastPrice": binance_number(last), "lastQty": binance_number(market.history(symbol).lot_size),
            "bidPrice": binance_number(quote.bid_price), "bidQty": binance_number(quote.bid_qty),
            "askPrice": binance_number(quote.ask_price), "askQty": binance_number(quote.ask_qty),
        })
    payload.update({
        "openPrice": binance_number(opened), "highPrice": binance_number(high), "lowPrice": binance_number(low),
        **({"lastPrice": binance_number(last)} if mini else {}),
        "volume": binance_number(volume), "quoteVolume": binance_number(quote_volume),
        "openTime": now_ms - DAY_MS, "closeTime": now_ms,
        "firstId": last_id - trades + 1 if trades else -1, "lastId": last_id if trades else -1, "count": trades,
    })
    return payload


def klines(market: ReplayMarket, symbol: str, interval: str, now_ms: int, start_ms: int | None,
           end_ms: int | None, limit: int) -> list[list[Any]]:
    """Kline rows as Binance orders them; never a bar from the future; the current bar is partial."""
    step = KLINE_INTERVAL_MS[interval]
    shift = WEEK_ALIGNMENT_MS if interval == "1w" else 0
    history = market.history(symbol)
    end = min(now_ms, end_ms if end_ms is not None else now_ms)
    rows: list[list[Any]] = []

    def row_at(open_ms: int) -> list[Any] | None:
        stats = market.window(symbol, open_ms, min(open_ms + step, now_ms + 1))
        if stats is None:
            return None
        taker_share = 0.5  # the history has no taker split: half the volume is shown as taker buys
        return [open_ms, binance_number(stats.open), binance_number(stats.high), binance_number(stats.low),
                binance_number(stats.close), binance_number(stats.volume), open_ms + step - 1,
                binance_number(stats.quote_volume), stats.trades, binance_number(stats.volume * taker_share),
                binance_number(stats.quote_volume * taker_share), "0"]

    if start_ms is not None:
        open_ms = -(-(start_ms - shift) // step) * step + shift  # first open time >= startTime
        if open_ms < history.start_ms - step:  # skip the empty stretch before the history
            open_ms = (history.start_ms - shift) // step * step + shift
        while open_ms <= end and len(rows) < limit:
            row = row_at(open_ms)
            if row is not None:
                rows.append(row)
            open_ms += step
        return rows
    open_ms = (end - shift) // step * step + shift
    while open_ms + step > history.start_ms and len(rows) < limit:
        row = row_at(open_ms)
        if row is not None:
            rows.append(row)
        open_ms -= step
    return rows[::-1]


def coins_markets(market: ReplayMarket, coin_ids: list[str], now_ms: int) -> list[dict[str, Any]]:
    """`/coins/markets` elements for the coins this exchange replays, as of CoinGecko's last refresh."""
    updated_ms = now_ms // COINGECKO_REFRESH_MS * COINGECKO_REFRESH_MS
    answer = []
    for rank, coin_id in enumerate(coin_ids, start=1):
        symbol = next((s for s in market.symbols if coin_id_for_symbol(s) == coin_id), None)
        if symbol is None:
            continue
        stats = market.window(symbol, updated_ms - DAY_MS, updated_ms + 1)
        price = market.price_at(symbol, updated_ms)
        supply = circulating_supply(coin_id, updated_ms)
        change = None if stats is None else price - stats.open
        ticker, name = COINGECKO_NAMES.get(coin_id, (symbol[:3].lower(), coin_id.title()))
        answer.append({
            "id": coin_id, "symbol": ticker, "name": name, "image": None,
            "current_price": price,
            "market_cap": None if supply is None else round(price * supply),
            "market_cap_rank": rank,
            "fully_diluted_valuation": round(price * MAX_SUPPLY[coin_id]) if coin_id in MAX_SUPPLY else None,
            # In a replay this exchange is the only venue, so its 24 h quote volume is the total.
            "total_volume": None if stats is None else round(stats.quote_volume),
            "high_24h": None if stats is None else stats.high,
            "low_24h": None if stats is None else stats.low,
            "price_change_24h": None if change is None else round(change, 8),
            "price_change_percentage_24h": None if stats is None or not stats.open else round(change / stats.open * 100, 5),
            "market_cap_change_24h": None, "market_cap_change_percentage_24h": None,
            "circulating_supply": supply, "total_supply": supply, "max_supply": MAX_SUPPLY.get(coin_id),
            "ath": None, "ath_change_percentage": None, "ath_date": None,
            "atl": None, "atl_change_percentage": None, "atl_date": None, "roi": None,
            "last_updated": coingecko_time(updated_ms),
        })
    return answer


def circulating_supply(coin_id: str, at_ms: int) -> float | None:
    if coin_id not in CIRCULATING_SUPPLY:
        return None
    anchor_ms, supply, per_day = CIRCULATING_SUPPLY[coin_id]
    return round(supply + per_day * (at_ms - anchor_ms) / DAY_MS)


def coingecko_time(epoch_ms: int) -> str:
    """CoinGecko's time format: `2025-02-14T10:58:30.120Z`."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
