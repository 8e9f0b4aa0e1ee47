"""The trade record: one Binance aggregate trade, as JSON on the trades topic and as its Spark schema.

An aggregate trade (`<symbol>@aggTrade`, or `GET /api/v3/aggTrades` when a gap is filled) is the
fills of one taker order at one price. Producer and streaming job both import from here; the
trades table `<root>/trades` holds these fields plus the date/hour partitions. Trades are
identified by (symbol, trade_id): Binance's aggregate trade ids increase by one per symbol, so a
jump is a gap (filled from REST, or recorded).

Example of the JSON on the topic (key = symbol, UTF-8), built from
`{"e":"aggTrade","E":1672515782136,"s":"BTCUSDT","a":26129,"p":"16500.01","q":"0.010","f":100,"l":105,
"T":1672515782136,"m":true,"M":true}`:

    {"schema_version": 1, "symbol": "BTCUSDT", "trade_id": 26129, "price": 16500.01, "qty": 0.01,
     "quote_qty": 165.0001, "trade_time": "2023-01-01T00:23:02.136000+00:00", "buyer_is_maker": true,
     "first_trade_id": 100, "last_trade_id": 105, "event_time": "2023-01-01T00:23:02.136000+00:00",
     "received_at": "2023-01-01T00:23:02.140000+00:00", "feed": "websocket"}

`buyer_is_maker` true means the seller was the taker: a sell hitting the bid (sell volume).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from btcstream.ingest.tick import record_fields

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

TRADE_SCHEMA_VERSION = 1
SUPPORTED_TRADE_SCHEMA_VERSIONS = frozenset({TRADE_SCHEMA_VERSION})
TRADE_FEEDS = ("websocket", "rest")  # rest: fetched by `GET /api/v3/aggTrades` to fill a gap


@dataclass(frozen=True)
class Trade:
    """One aggregate trade of one symbol. Times are UTC ISO-8601 strings with offset."""

    symbol: str
    trade_id: int  # aggregate trade id (`a`)
    price: float  # `p`
    qty: float  # `q`, base asset
    quote_qty: float  # price * qty, quote asset
    trade_time: str  # `T`: when the trade happened, exchange clock
    buyer_is_maker: bool  # `m`: true = a sell hit the bid
    first_trade_id: int  # `f`: first trade id the aggregate covers
    last_trade_id: int  # `l`: last trade id the aggregate covers
    event_time: str | None = None  # `E`: when the exchange sent the event (None for REST gap fills)
    received_at: str | None = None  # when the producer received it, producer clock
    feed: str = "websocket"
    schema_version: int = TRADE_SCHEMA_VERSION

    def to_json(self) -> bytes:
        """The UTF-8 JSON value written to Kafka."""
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, value: bytes | str) -> "Trade":
        """Parse a value written by `to_json` (unknown keys are ignored, for forward compatibility).

        Raises `ValueError` (one line) for anything else, as `Tick.from_json` does.
        """
        return cls(**record_fields(cls, value))


TRADE_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Trade))
TRADE_TIME_FIELDS = frozenset({"trade_time", "event_time", "received_at"})
TRADE_KEY = ("symbol", "trade_id")


def spark_schema() -> "StructType":
    """The Spark schema of the JSON value. Times arrive as strings and are parsed by the job."""
    from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType, StringType, StructField, StructType

    types = {"symbol": StringType(), "trade_id": LongType(), "price": DoubleType(), "qty": DoubleType(),
             "quote_qty": DoubleType(), "buyer_is_maker": BooleanType(), "first_trade_id": LongType(),
             "last_trade_id": LongType(), "feed": StringType(), "schema_version": IntegerType()}
    return StructType([StructField(name, types.get(name, StringType()), True) for name in TRADE_FIELD_NAMES])
