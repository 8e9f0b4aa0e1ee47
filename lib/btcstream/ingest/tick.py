"""The tick record: the single source of truth for the JSON on the Kafka topic and its Spark schema.

One tick = one symbol's top of book at one moment, plus that symbol's 24 h statistics and the
coin's CoinGecko market data. Producer and streaming job both import from here; nothing else
spells field names (what each holds: docs/schema.md). Not for: validation of prices (the streaming
job quarantines bad ticks).

Schema versions: 1 (REST polls, the seed's layout) and 2 (adds `feed`, `update_id`, `received_at`;
WebSocket quotes carry the bookTicker's update id, and several of them can share a millisecond, so
they are told apart by (symbol, update_id)). Version 1 records stay valid: the new fields are null.

Example of the JSON on the topic (key = symbol, UTF-8):

    {"schema_version": 2, "symbol": "BTCUSDT",
     "event_time": "2025-02-14T10:58:31.204000+00:00", "timestamp": "2025-02-14T10:58:31.251000+00:00",
     "bid_price": 97017.57, "ask_price": 97017.58, "bid_qty": 0.10025, "ask_qty": 7.11458,
     "volume_24h": 18012.3, "quote_volume_24h": 1738221467.31, "high_24h": 97231.0, "low_24h": 95410.0,
     "price_change_24h": 887.8, "price_change_percentage_24h": 0.923,
     "trade_timestamp": "2025-02-14T10:58:36+00:00",
     "market_cap": 1923087506901.0, "coingecko_total_volume": 30381193367.0,
     "coingecko_last_updated": "2025-02-14T10:58:30.120000+00:00",
     "feed": "websocket", "update_id": 400900217, "received_at": "2025-02-14T10:58:31.212000+00:00"}
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyspark is heavy to import; the producer does not need it.
    from pyspark.sql.types import StructType

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, SCHEMA_VERSION})
FEEDS = ("rest", "websocket")  # `feed`: which producer feed built the record


@dataclass(frozen=True)
class Tick:
    """One observation of one symbol. Times are UTC ISO-8601 strings with offset; numbers may be None."""

    symbol: str
    event_time: str  # when the bid/ask was observed, on the exchange's clock
    timestamp: str  # when the producer built this record, on the producer's clock
    bid_price: float | None
    ask_price: float | None
    bid_qty: float | None
    ask_qty: float | None
    volume_24h: float | None = None  # Binance 24 h base-asset volume
    quote_volume_24h: float | None = None  # Binance 24 h quote-asset volume
    high_24h: float | None = None  # Binance 24 h high
    low_24h: float | None = None  # Binance 24 h low
    price_change_24h: float | None = None  # Binance 24 h price change (quote currency)
    price_change_percentage_24h: float | None = None  # Binance 24 h price change in percent
    # Not a trade's time: the close time of Binance's rolling 24 h statistics window (`closeTime` of
    # /api/v3/ticker/24hr, about when the 24 h figures were computed), UTC ISO. The name is kept
    # because the record layout on the topic and in raw_data uses it.
    trade_timestamp: str | None = None
    market_cap: float | None = None  # CoinGecko market cap, USD
    coingecko_total_volume: float | None = None  # CoinGecko 24 h total volume, USD
    coingecko_last_updated: str | None = None  # CoinGecko's own observation time of the two above
    schema_version: int = SCHEMA_VERSION
    feed: str | None = None  # "rest" or "websocket" (None: a version 1 record)
    # The bookTicker's order-book update id (`u`), WebSocket quotes only: increases with every book
    # change, so a quote is identified by (symbol, update_id) and a jump shows missed updates.
    update_id: int | None = None
    received_at: str | None = None  # when the producer received the quote, UTC ISO on the producer's clock

    def to_json(self) -> bytes:
        """The UTF-8 JSON value written to Kafka."""
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, value: bytes | str) -> "Tick":
        """Parse a value written by `to_json` (unknown keys are ignored, for forward compatibility).

        Raises `ValueError` (one line) for anything else: not UTF-8, not JSON, not an object, a
        required field missing, a field of the wrong type, NaN/Infinity or a number beyond a float.
        """
        return cls(**record_fields(cls, value))


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a record may hold")  # to_json never writes NaN/Infinity


def _typed(name: str, value: Any, annotation: str) -> Any:
    """`value` checked against a field's annotation ("float | None", "int", "str", "bool"); ints become floats."""
    if value is None:
        if "None" in annotation:
            return None
        raise ValueError(f"field {name} is null")
    kind = annotation.split("|")[0].strip()
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)  # OverflowError for an integer beyond a float (10**400)
        if math.isfinite(number):
            return number
    elif kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif (kind, type(value)) in (("bool", bool), ("str", str)):
        return value
    raise ValueError(f"field {name} is {type(value).__name__} {str(value)[:40]!r}, expected {kind}")


def record_fields(cls: type, value: bytes | str) -> dict[str, Any]:
    """The fields of dataclass `cls` in the JSON object `value`, type-checked (see `Tick.from_json`)."""
    try:
        data = json.loads(value, parse_constant=_json_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    checked = {}
    for spec in fields(cls):
        if spec.name in data:
            try:
                checked[spec.name] = _typed(spec.name, data[spec.name], str(spec.type))
            except OverflowError:
                raise ValueError(f"field {spec.name} is beyond a float") from None
        elif spec.default is MISSING:
            raise ValueError(f"field {spec.name} is missing")
    return checked


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Tick))
TIME_FIELDS = frozenset({"event_time", "timestamp", "trade_timestamp", "coingecko_last_updated", "received_at"})
TEXT_FIELDS = frozenset({"symbol", "feed"})
INTEGER_FIELDS = frozenset({"update_id"})


def iso_utc(moment: datetime) -> str:
    """A timezone-aware datetime as UTC ISO-8601 with offset; naive datetimes are refused."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: btcstream times are always timezone-aware UTC")
    return moment.astimezone(timezone.utc).isoformat()


def utc_from_ms(epoch_ms: int | float) -> datetime:
    """Epoch milliseconds (as Binance sends them) to an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_ms / 1000.0, tz=timezone.utc)


def spark_schema() -> "StructType":
    """The Spark schema of the JSON value. Times arrive as strings and are parsed by the job."""
    from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType

    def spark_type(name: str) -> Any:
        if name == "schema_version":
            return IntegerType()
        if name in INTEGER_FIELDS:
            return LongType()
        if name in TEXT_FIELDS or name in TIME_FIELDS:
            return StringType()
        return DoubleType()

    return StructType([StructField(name, spark_type(name), True) for name in FIELD_NAMES])
