"""CoinGecko v3 market data: `/coins/markets` (market cap, total volume, 24 h change, high/low, last_updated).

Contract: `/work/shared/reference/market-apis.md` (numbers are JSON numbers, any may be null).
The optional demo key (`Settings.coingecko_api_key`, set by `BTCSTREAM_COINGECKO_API_KEY`) travels only in the
`x-cg-demo-api-key` header: it is never logged and never put in a URL. Not for: rate pacing
(the producer polls this no faster than `coingecko_min_interval_s` and reuses the last good answer).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from btcstream.errors import BadResponse, SettingsError
from btcstream.ingest.sources.fields import as_float, as_utc_from_iso
from btcstream.ingest.sources.http import JsonHttpClient

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-cg-demo-api-key"
_KEY_TEXT = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what an HTTP header value can carry
MARKETS_MAX_PER_PAGE = 250


@dataclass(frozen=True)
class CoinMarket:
    """One coin's CoinGecko market data (USD), stamped with CoinGecko's own observation time."""

    coin_id: str
    current_price: float | None
    market_cap: float | None
    total_volume: float | None
    high_24h: float | None
    low_24h: float | None
    price_change_24h: float | None
    price_change_percentage_24h: float | None
    last_updated: datetime | None


def parse_coin_market(item: Any) -> CoinMarket | None:
    """One `/coins/markets` element -> CoinMarket, or None when it has no id.

    Raw (abridged): `{"id":"bitcoin","symbol":"btc","name":"Bitcoin","current_price":97017,
    "market_cap":1923087506901,"market_cap_rank":1,"total_volume":30381193367,"high_24h":97231,
    "low_24h":95410,"price_change_24h":887.8,"price_change_percentage_24h":0.92345,
    "circulating_supply":19822356,"roi":null,"last_updated":"2025-02-14T10:58:30.120Z"}`
    """
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    return CoinMarket(coin_id=item["id"], current_price=as_float(item.get("current_price")),
                      market_cap=as_float(item.get("market_cap")), total_volume=as_float(item.get("total_volume")),
                      high_24h=as_float(item.get("high_24h")), low_24h=as_float(item.get("low_24h")),
                      price_change_24h=as_float(item.get("price_change_24h")),
                      price_change_percentage_24h=as_float(item.get("price_change_percentage_24h")),
                      last_updated=as_utc_from_iso(item.get("last_updated")))


def header_key(api_key: str) -> str:
    """The key as it goes in the header: surrounding whitespace (a pasted newline) dropped.

    Anything else a header cannot carry is refused here, naming the setting but never the value:
    left to `requests`, its InvalidHeader/UnicodeEncodeError message would quote the key.
    """
    key = api_key.strip()
    if not _KEY_TEXT.fullmatch(key):
        raise SettingsError("BTCSTREAM_COINGECKO_API_KEY", "***",
                            "may hold only printable ASCII without spaces (check for a stray quote or space)")
    return key


class CoinGeckoClient:
    """CoinGecko's `/coins/markets` for a few coin ids, in USD."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 http: JsonHttpClient | None = None) -> None:
        """Talk to `base_url` (`Settings.coingecko_url`) with the optional demo `api_key`
        (`Settings.coingecko_api_key`), or through a prepared `http` client."""
        if http is None and not base_url:
            raise ValueError("CoinGeckoClient needs base_url (Settings.coingecko_url) or an http client")
        headers = {API_KEY_HEADER: header_key(api_key)} if api_key else {}
        self.http = http or JsonHttpClient(str(base_url), headers=headers)

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"CoinGeckoClient({self.http.base_url!r})"

    def markets(self, coin_ids: Iterable[str]) -> dict[str, CoinMarket]:
        """`GET /coins/markets?vs_currency=usd&ids=...`: market data by coin id (ids absent from the answer are absent)."""
        ids = sorted({coin_id.lower() for coin_id in coin_ids})
        if not ids:
            return {}
        payload = self.http.get("/coins/markets", {"vs_currency": "usd", "ids": ",".join(ids),
                                                   "per_page": min(len(ids), MARKETS_MAX_PER_PAGE), "page": 1}).data
        if not isinstance(payload, list):
            raise BadResponse(self.http.host, "/coins/markets", f"expected a JSON array, got {str(payload)[:120]}")
        parsed = (parse_coin_market(row) for row in payload)
        return {market.coin_id: market for market in parsed if market is not None and market.coin_id in ids}

    def close(self) -> None:
        self.http.close()
