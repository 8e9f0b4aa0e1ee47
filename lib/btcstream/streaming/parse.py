"""Kafka rows -> typed, valid ticks and quarantined records (with the reason they were refused).

Input: the columns of Spark's Kafka source (`key, value, topic, partition, offset, timestamp`).
A record is quarantined, never dropped, when its value is not a JSON object of the tick schema,
its schema version is unknown, its symbol or event_time is missing/unparseable (a symbol must be
letters and digits; a time must lie in [1970, 9999]), a price is missing, not finite, <= 0 or above
`MAX_PRICE`, a quantity is negative or not finite, the ask is below the bid, or any other number is
NaN or Infinity.
Not for: deduplication or lateness (the job does those against the stored ticks, `delta_batches`).
"""

from __future__ import annotations

import operator
from datetime import datetime, timezone
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, TimestampType

from btcstream.ingest import tick
from btcstream.names import QUARANTINE_COLUMNS, QUARANTINE_PREVIEW_CHARS

CORRUPT_COLUMN = "_corrupt_record"
# Spark parses times up to year 294247, Python's datetime (collect(), pandas, the notebooks) only to
# 9999: a later time would be stored and break every Python reader of the table. No exchange clock
# reads a time before 1970. A time outside is a corrupt value (for event_time: a refused record).
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST_TIME = datetime(9999, 12, 30, tzinfo=timezone.utc)  # a day short of the end: any reader's time zone fits
PRICE_FIELDS = ("bid_price", "ask_price")
QUANTITY_FIELDS = ("bid_qty", "ask_qty")
OTHER_NUMBER_FIELDS = tuple(name for name in tick.FIELD_NAMES if name not in (*PRICE_FIELDS, *QUANTITY_FIELDS)
                            and name not in (*tick.TIME_FIELDS, *tick.TEXT_FIELDS, *tick.INTEGER_FIELDS, "schema_version"))

# Reasons, in the order they are checked (the first that applies is recorded).
UNPARSEABLE = "unparseable JSON"
UNKNOWN_SCHEMA_VERSION = "unknown schema version"
MISSING_SYMBOL = "missing symbol"
BAD_SYMBOL = "symbol not an exchange symbol (1-32 letters and digits)"
BAD_EVENT_TIME = "missing or unparseable event_time"
MISSING_PRICE = "missing price"
BAD_PRICE = "price not finite or <= 0"
# Far above any real quote (BTC in Indonesian rupiah is about 1.6e9): a larger price is a corrupt
# number, and 1e308 would overflow the mid price and every sum built on it.
MAX_PRICE = 1e15
PRICE_TOO_LARGE = f"price above {MAX_PRICE:g}"
BAD_QUANTITY = "quantity not finite or < 0"
CROSSED_BOOK = "ask below bid"
NOT_FINITE = "a number not finite"  # any other number field (24 h statistics, market data): NaN or Infinity
# Exchange symbols ("BTCUSDT", "1000SATSUSDT"): letters and digits, at least one letter; a symbol that
# arrived as a JSON number, object or 1 MB string fails this.
SYMBOL_PATTERN = r"^[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*$"
MAX_SYMBOL_CHARS = 32

__all__ = ["QUARANTINE_COLUMNS", "classify", "quarantined", "split", "tick_columns", "valid_ticks"]


def _json_schema():
    """The tick schema plus a column that receives the raw text of a malformed record."""
    schema = tick.spark_schema()
    return schema.add(StructField(CORRUPT_COLUMN, StringType(), True))


def _not_finite(column: Column) -> Column:
    return F.isnan(column) | column.isin(float("inf"), float("-inf"))


def bad_symbol(symbol: Column) -> Column:
    """True when a present, non-blank symbol is not an exchange symbol (`SYMBOL_PATTERN`, at most `MAX_SYMBOL_CHARS`)."""
    trimmed = F.trim(symbol)
    return (F.length(trimmed) > MAX_SYMBOL_CHARS) | ~trimmed.rlike(SYMBOL_PATTERN)


def _reason(parsed: Column, event_time: Column) -> Column:
    """The first reason a parsed record is refused, or null when it is a valid tick."""
    checks: list[tuple[Column, str]] = [
        (parsed.isNull() | parsed[CORRUPT_COLUMN].isNotNull(), UNPARSEABLE),
        (parsed["schema_version"].isNull()
         | ~parsed["schema_version"].isin(*sorted(tick.SUPPORTED_SCHEMA_VERSIONS)), UNKNOWN_SCHEMA_VERSION),
        (parsed["symbol"].isNull() | (F.trim(parsed["symbol"]) == ""), MISSING_SYMBOL),
        (bad_symbol(parsed["symbol"]), BAD_SYMBOL),
        (event_time.isNull(), BAD_EVENT_TIME),
        (parsed["bid_price"].isNull() | parsed["ask_price"].isNull(), MISSING_PRICE),
    ]
    for name in PRICE_FIELDS:
        checks.append((_not_finite(parsed[name]) | (parsed[name] <= 0), BAD_PRICE))
    checks.append(((parsed["bid_price"] > MAX_PRICE) | (parsed["ask_price"] > MAX_PRICE), PRICE_TOO_LARGE))
    for name in QUANTITY_FIELDS:
        checks.append((parsed[name].isNotNull() & (_not_finite(parsed[name]) | (parsed[name] < 0)), BAD_QUANTITY))
    checks.append((parsed["ask_price"] < parsed["bid_price"], CROSSED_BOOK))
    checks.append((reduce(operator.or_, [F.coalesce(_not_finite(parsed[name]), F.lit(False))
                                         for name in OTHER_NUMBER_FIELDS]), NOT_FINITE))
    reason = F.when(checks[0][0], F.lit(checks[0][1]))
    for condition, text in checks[1:]:
        reason = reason.when(condition, F.lit(text))
    return reason


def _timestamp(text: Column) -> Column:
    """ISO-8601 with offset -> TimestampType (UTC instant); null (never an error) when unparseable or
    outside [`EARLIEST_TIME`, `LATEST_TIME`]."""
    moment = text.try_cast(TimestampType())
    return F.when(moment.between(F.lit(EARLIEST_TIME), F.lit(LATEST_TIME)), moment)


def classify(kafka_rows: DataFrame, *, parse_once: bool = True) -> DataFrame:
    """Kafka rows with the parsed tick (`tick` struct), its typed `event_time` and the refusal `reason`.

    `parse_once`: parse each value exactly once, for frames that keep most rows (valid ticks).
    Spark pushes a filter below the projection that computes the columns it tests, replacing each
    column by its expression (SPARK-47672, open in 4.2): the validity filter then evaluates
    from_json itself, and every row that passes it is parsed a second time by the projection. A
    filter is never pushed below a generator's output, so with `parse_once` the parsed struct comes
    out of a one-element explode (one row in, one row out; a null value gives a null tick). The
    generator is not free (it runs outside whole-stage code generation), so the quarantine, whose
    filter passes almost no row, is cheaper without it. Measured on 1M ticks (bench/results/stages.md):
    valid ticks 52.9k ticks/s with the explode against 43.3k without; quarantine 75.9k against 81.8k.

    The record's `value` stays the Kafka bytes as received (binary), for the quarantine.
    """
    text = F.col("value").cast("string")
    parsed = F.from_json(text, _json_schema(), {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COLUMN})
    with_tick = kafka_rows.select(
        F.col("value").cast("binary").alias("value"), "topic", "partition", "offset", F.col("timestamp").alias("kafka_timestamp"),
        (F.explode(F.array(parsed)) if parse_once else parsed).alias("tick"),
    )
    event_time = _timestamp(F.col("tick.event_time"))
    return (with_tick.withColumn("event_time", event_time)
            .withColumn("reason", _reason(F.col("tick"), F.col("event_time"))))


def tick_columns() -> list[Column]:
    """Every tick field as a typed column of a `classify` row (times as UTC timestamps, symbol upper case)."""
    columns = []
    for name in tick.FIELD_NAMES:
        if name == "event_time":
            columns.append(F.col("event_time"))
        elif name in tick.TIME_FIELDS:
            columns.append(_timestamp(F.col(f"tick.{name}")).alias(name))
        elif name == "symbol":
            columns.append(F.upper(F.trim(F.col("tick.symbol"))).alias("symbol"))
        else:
            columns.append(F.col(f"tick.{name}").alias(name))
    return columns


def valid_ticks(classified: DataFrame) -> DataFrame:
    """Typed ticks (every tick field; times as UTC timestamps) from rows `classify` accepted."""
    return classified.where(F.col("reason").isNull()).select(*tick_columns())


def quarantined(classified: DataFrame) -> DataFrame:
    """Refused records (columns `QUARANTINE_COLUMNS`): the Kafka bytes, a preview, the reason, where and when.

    `value` keeps the bytes exactly as received, whatever they are (a string column would store
    invalid UTF-8 that no reader can decode); `value_preview` is their first
    `QUARANTINE_PREVIEW_CHARS` characters as UTF-8, each invalid byte sequence replaced by U+FFFD.
    """
    preview = F.substring(F.make_valid_utf8(F.col("value").cast("string")), 1, QUARANTINE_PREVIEW_CHARS)
    return classified.where(F.col("reason").isNotNull()).select(
        "value", preview.alias("value_preview"), "reason", "topic", "partition", "offset", "kafka_timestamp",
        F.current_timestamp().alias("detected_at"),
    )


def split(kafka_rows: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(valid ticks, quarantined records) of a Kafka-shaped DataFrame, static or streaming."""
    return valid_ticks(classify(kafka_rows)), quarantined(classify(kafka_rows, parse_once=False))
