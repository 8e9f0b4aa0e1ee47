"""One quote tick from a book, the symbol's 24 h statistics and the coin's CoinGecko market data.

Both feeds build their ticks here (the REST poll in `producer`, the WebSocket feed in `ws_feed`), so
the merge of the three sources into the tick record is written once. A missing 24 h or CoinGecko
answer leaves those fields null: never a made-up value.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from btcstream.ingest.sources.coingecko import CoinMarket
from btcstream.ingest.tick import Tick, iso_utc


def quote_tick(symbol: str, event_time: datetime, book: Any, day: Any | None, market: CoinMarket | None, *,
               feed: str, update_id: int | None = None, received_at: str | None = None) -> Tick:
    """The tick of `book` (bid/ask price and quantity: a REST `BookTicker` or a WebSocket book event),
    `day` (24 h statistics: volume, quote_volume, high/low_price, price_change(_percent), close_time)
    and `market` (CoinGecko), stamped with `event_time` (exchange clock) and now (producer clock)."""
    return Tick(
        symbol=symbol, event_time=iso_utc(event_time), timestamp=iso_utc(datetime.now(timezone.utc)),
        bid_price=book.bid_price, ask_price=book.ask_price, bid_qty=book.bid_qty, ask_qty=book.ask_qty,
        volume_24h=day.volume if day else None, quote_volume_24h=day.quote_volume if day else None,
        high_24h=day.high_price if day else None, low_24h=day.low_price if day else None,
        price_change_24h=day.price_change if day else None,
        price_change_percentage_24h=day.price_change_percent if day else None,
        trade_timestamp=iso_utc(day.close_time) if day and day.close_time else None,
        market_cap=market.market_cap if market else None,
        coingecko_total_volume=market.total_volume if market else None,
        coingecko_last_updated=iso_utc(market.last_updated) if market and market.last_updated else None,
        feed=feed, update_id=update_id, received_at=received_at,
    )
