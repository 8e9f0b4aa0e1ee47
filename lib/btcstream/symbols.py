"""Exchange symbols and the coins behind them: `BTCUSDT` -> base asset `BTC` -> CoinGecko id `bitcoin`.

Shared by the CoinGecko source (which coin to ask for) and the replay exchange (which coin it
answers for), so neither imports the other. Plain data, no I/O.
"""

from __future__ import annotations

# Base asset of an exchange symbol -> CoinGecko coin id (ids are not derivable from tickers).
COINGECKO_IDS = {
    "BTC": "bitcoin", "ETH": "ethereum", "BNB": "binancecoin", "SOL": "solana", "XRP": "ripple",
    "ADA": "cardano", "DOGE": "dogecoin", "DOT": "polkadot", "LTC": "litecoin", "LINK": "chainlink",
    "AVAX": "avalanche-2", "TRX": "tron", "MATIC": "matic-network", "BCH": "bitcoin-cash",
}
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "BTC", "ETH")


def coin_id_for_symbol(symbol: str) -> str | None:
    """`BTCUSDT` -> `bitcoin`; None when the base asset has no known CoinGecko id."""
    upper = symbol.upper()
    for quote in QUOTE_ASSETS:
        if upper.endswith(quote) and len(upper) > len(quote):
            return COINGECKO_IDS.get(upper[: -len(quote)])
    return None
