"""Kafka rows of both topics -> one classified frame: typed quotes, typed trades, refusal reasons.

The job's query reads the quotes topic (`Settings.topic`) and the trades topic
(`Settings.trades_topic`) in one Kafka source; `classify_records` parses every record once, with
the schema of its topic, and gives each row:

- `kind`: "quote" or "trade" (by topic);
- `quote`: the typed tick fields (`parse.tick_columns`) for a quote, else null;
- `trade`: the typed trade fields (`trade_columns`) for a trade, else null;
- `reason`: why the record is refused (quarantined), null for a valid record;
- `value`: the Kafka bytes, kept only for refused records (the quarantine's column), and the
  record's coordinates (topic, partition, offset, kafka_timestamp).

A trade is refused when its value is not a JSON object of the trade schema, its schema version is
unknown, its symbol, trade id, trade time or side is missing/unparseable, its symbol is not
letters and digits, its price or quantity is missing, not finite or <= 0, its price is above
`parse.MAX_PRICE`, or its quote_qty is not finite or < 0. Not for: deduplication (`delta_batches`
does it against the stored rows).
"""

from __future__ import annotations

from functools import lru_cache

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField

from btcstream.ingest import trade
from btcstream.streaming import parse

QUOTE, TRADE = "quote", "trade"

# Trade refusal reasons, in the order they are checked (the first that applies is recorded).
BAD_TRADE_ID = "missing or negative trade_id"
BAD_TRADE_TIME = "missing or unparseable trade_time"
MISSING_SIDE = "missing buyer_is_maker"
BAD_TRADE_PRICE = "price not finite or <= 0"
BAD_TRADE_QTY = "qty not finite or <= 0"
BAD_QUOTE_QTY = "quote_qty not finite or < 0"


def _trade_json_schema():
    return trade.spark_schema().add(StructField(parse.CORRUPT_COLUMN, StringType(), True))


def _trade_reason(parsed: Column, trade_time: Column) -> Column:
    """The first reason a parsed trade is refused, or null when it is valid."""
    checks: list[tuple[Column, str]] = [
        (parsed.isNull() | parsed[parse.CORRUPT_COLUMN].isNotNull(), parse.UNPARSEABLE),
        (parsed["schema_version"].isNull()
         | ~parsed["schema_version"].isin(*sorted(trade.SUPPORTED_TRADE_SCHEMA_VERSIONS)), parse.UNKNOWN_SCHEMA_VERSION),
        (parsed["symbol"].isNull() | (F.trim(parsed["symbol"]) == ""), parse.MISSING_SYMBOL),
        (parse.bad_symbol(parsed["symbol"]), parse.BAD_SYMBOL),
        (parsed["trade_id"].isNull() | (parsed["trade_id"] < 0), BAD_TRADE_ID),
        (trade_time.isNull(), BAD_TRADE_TIME),
        (parsed["buyer_is_maker"].isNull(), MISSING_SIDE),
        (parsed["price"].isNull() | F.isnan(parsed["price"]) | parsed["price"].isin(float("inf"))
         | (parsed["price"] <= 0), BAD_TRADE_PRICE),
        (parsed["price"] > parse.MAX_PRICE, parse.PRICE_TOO_LARGE),
        (parsed["qty"].isNull() | F.isnan(parsed["qty"]) | parsed["qty"].isin(float("inf"))
         | (parsed["qty"] <= 0), BAD_TRADE_QTY),
        (parsed["quote_qty"].isNotNull() & (parse._not_finite(parsed["quote_qty"]) | (parsed["quote_qty"] < 0)),
         BAD_QUOTE_QTY),
    ]
    reason = F.when(checks[0][0], F.lit(checks[0][1]))
    for condition, text in checks[1:]:
        reason = reason.when(condition, F.lit(text))
    return reason


def trade_columns(parsed: Column) -> list[Column]:
    """Every trade field as a typed column (times as UTC timestamps, symbol upper case)."""
    columns = []
    for name in trade.TRADE_FIELD_NAMES:
        if name in trade.TRADE_TIME_FIELDS:
            columns.append(parse._timestamp(parsed[name]).alias(name))
        elif name == "symbol":
            columns.append(F.upper(F.trim(parsed["symbol"])).alias("symbol"))
        else:
            columns.append(parsed[name].alias(name))
    return columns


def classify_records(kafka_rows: DataFrame, trades_topic: str | None) -> DataFrame:
    """One row per Kafka record: kind, typed quote or trade, reason, refused bytes, coordinates.

    Each value is parsed once, with the schema of its topic (records of any other topic are
    quotes: the quotes topic is the job's first). The parsed structs come out of a one-element
    explode for the reason `parse.classify` gives (a filter pushed below the projection would
    parse every valid record a second time).
    """
    parsed, classified, final = _projections(trades_topic, _jvm_identity())
    return kafka_rows.select(*parsed).select(*classified).select(*final)


def _jvm_identity() -> int:
    """Which JVM the process talks to (Column objects live there): a cache key for `_projections`."""
    from pyspark import SparkContext

    return id(SparkContext._jvm)


@lru_cache(maxsize=8)
def _projections(trades_topic: str | None, jvm: int) -> tuple[list[Column], list[Column], list[Column]]:
    """The three projections of `classify_records`, built once per trades topic and JVM.

    Building them takes about 3,800 calls into the JVM: 0.32-0.49 s per micro-batch against
    0.10-0.13 s with this cache (building + analysis on a live batch of 200 records, 2026-12-03).
    The Column objects hold no data and no session, so every batch reuses them.
    """
    is_trade = (F.col("topic") == F.lit(trades_topic)) if trades_topic else F.lit(False)
    text = F.col("value").cast("string")
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": parse.CORRUPT_COLUMN}
    parsed = F.struct(
        F.when(~is_trade, F.from_json(text, parse._json_schema(), options)).alias("tick"),
        F.when(is_trade, F.from_json(text, _trade_json_schema(), options)).alias("trade_record"),
        F.when(is_trade, F.lit(TRADE)).otherwise(F.lit(QUOTE)).alias("kind"),
    )
    coordinates = [F.col(name) for name in ("topic", "partition", "offset", "kafka_timestamp")]
    first = [F.col("value").cast("binary").alias("value"), F.col("topic"), F.col("partition"), F.col("offset"),
             F.col("timestamp").alias("kafka_timestamp"), F.explode(F.array(parsed)).alias("parsed")]
    event_time = parse._timestamp(F.col("parsed.tick.event_time"))
    trade_time = parse._timestamp(F.col("parsed.trade_record.trade_time"))
    reason = (F.when(F.col("parsed.kind") == TRADE, _trade_reason(F.col("parsed.trade_record"), trade_time))
              .otherwise(parse._reason(F.col("parsed.tick"), event_time)))
    second = [F.col("value"), *coordinates, F.col("parsed.tick").alias("tick"),
              F.col("parsed.trade_record").alias("trade_record"), F.col("parsed.kind").alias("kind"),
              event_time.alias("event_time"), reason.alias("reason")]
    valid = F.col("reason").isNull()
    final = [F.col("kind"), F.col("reason"), F.when(~valid, F.col("value")).alias("value"), *coordinates,
             F.when(valid & (F.col("kind") == QUOTE), F.struct(*parse.tick_columns())).alias("quote"),
             F.when(valid & (F.col("kind") == TRADE), F.struct(*trade_columns(F.col("trade_record")))).alias("trade")]
    return first, second, final
