"""Fuzz test of the streaming job's record classification (`records.classify_records`, `parse.split`).

A few thousand Kafka records of both topics, built from valid quotes and trades by a seeded random
mutator (`helpers.bad_input`): NaN/Infinity, numbers beyond a double, wrong types, 1 MB strings,
invalid UTF-8, truncated and nested JSON, tombstones. Every record must come out as exactly one row:
a valid quote or trade whose every field is sane, or a refused record with a reason (the quarantine).
"""

from __future__ import annotations

import json
import math
import random
import re
from datetime import datetime, timezone

import pytest

from btcstream.ingest.tick import Tick
from btcstream.ingest.trade import Trade
from btcstream.streaming import parse, records
from btcstream.streaming.job import KAFKA_SCHEMA
from helpers.bad_input import mutated

pytestmark = pytest.mark.spark

QUOTES_TOPIC, TRADES_TOPIC = "ticks", "trades"
RECORDS_PER_TOPIC = 1000
MAX_HUGE_RECORDS = 4  # per topic: 1 MB values are slow to hand from Python to the JVM, a few make the point
VALID_QUOTE = Tick("BTCUSDT", "2025-02-14T10:58:31.204000+00:00", "2025-02-14T10:58:31.251000+00:00", 97017.57,
                   97017.58, 0.10025, 7.11458, volume_24h=18012.3, high_24h=97231.0, market_cap=1.9e12,
                   feed="websocket", update_id=400900217, received_at="2025-02-14T10:58:31.212000+00:00")
VALID_TRADE = Trade("BTCUSDT", 26129, 16500.01, 0.01, 165.0001, "2023-01-01T00:23:02.136000+00:00", True, 100, 105,
                    event_time="2023-01-01T00:23:02.136000+00:00", received_at="2023-01-01T00:23:02.140000+00:00")
# Prices no valid record may carry: JSON literals and strings of NaN/Infinity, beyond a double, huge.
BAD_PRICE_TEXTS = ("NaN", "Infinity", "-Infinity", '"NaN"', '"Infinity"', "1e400", "1" + "0" * 400, "1e308", "-1", "0")


def with_price(record: dict, field: str, text: str) -> bytes:
    return json.dumps({**record, field: "@price@"}).replace('"@price@"', text).encode()


def fuzzed_records(seed: int = 15) -> tuple[list[tuple[str, bytes | None]], set[int], set[int]]:
    """(topic, value) of every record, the offsets of records with a bad price, and of untouched valid ones."""
    rng = random.Random(seed)
    quote, trade = json.loads(VALID_QUOTE.to_json()), json.loads(VALID_TRADE.to_json())
    rows: list[tuple[str, bytes | None]] = []
    bad_prices: set[int] = set()
    valid: set[int] = set()
    for topic, record, price_fields in ((QUOTES_TOPIC, quote, parse.PRICE_FIELDS), (TRADES_TOPIC, trade, ("price",))):
        for field in price_fields:
            for text in BAD_PRICE_TEXTS:
                bad_prices.add(len(rows))
                rows.append((topic, with_price(record, field, text)))
        valid.update(range(len(rows), len(rows) + 20))
        rows += [(topic, json.dumps(record).encode())] * 20
        rows.append((topic, None))  # a tombstone
        rows += [(topic, value) for value in limited_size(record, rng)]
    return rows, bad_prices, valid


def limited_size(record: dict, rng: random.Random) -> list[bytes]:
    """`RECORDS_PER_TOPIC` mutations of `record`, at most `MAX_HUGE_RECORDS` of them over 64 kB (1 MB strings)."""
    values: list[bytes] = []
    while len(values) < RECORDS_PER_TOPIC:
        value = mutated(record, rng)
        if len(value) <= 1 << 16 or sum(len(v) > 1 << 16 for v in values) < MAX_HUGE_RECORDS:
            values.append(value)
    return values


def finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


SYMBOL = re.compile(parse.SYMBOL_PATTERN)
EARLIEST, LATEST = (moment.replace(tzinfo=None) for moment in (parse.EARLIEST_TIME, parse.LATEST_TIME))


def check_valid_quote(quote) -> None:
    assert SYMBOL.match(quote.symbol) and len(quote.symbol) <= parse.MAX_SYMBOL_CHARS, quote.symbol[:40]
    assert quote.event_time is not None and EARLIEST <= quote.event_time <= LATEST
    assert 0 < quote.bid_price <= quote.ask_price <= parse.MAX_PRICE, (quote.bid_price, quote.ask_price)
    assert all(finite(getattr(quote, name)) for name in (*parse.QUANTITY_FIELDS, *parse.OTHER_NUMBER_FIELDS)), quote
    assert all(getattr(quote, name) is None or getattr(quote, name) >= 0 for name in parse.QUANTITY_FIELDS)


def check_valid_trade(trade) -> None:
    assert SYMBOL.match(trade.symbol) and len(trade.symbol) <= parse.MAX_SYMBOL_CHARS, trade.symbol[:40]
    assert trade.trade_id is not None and trade.trade_id >= 0 and trade.trade_time is not None
    assert 0 < trade.price <= parse.MAX_PRICE and 0 < trade.qty and math.isfinite(trade.qty), trade
    assert trade.quote_qty is None or (math.isfinite(trade.quote_qty) and trade.quote_qty >= 0), trade
    assert trade.buyer_is_maker is not None


def test_every_fuzzed_record_is_one_valid_row_or_one_refused_row_with_a_reason(spark):
    rows, bad_prices, untouched = fuzzed_records()
    now = datetime.now(timezone.utc)
    kafka = spark.createDataFrame([(b"k", value, topic, 0, offset, now) for offset, (topic, value) in enumerate(rows)],
                                  KAFKA_SCHEMA)
    classified = records.classify_records(kafka, TRADES_TOPIC).collect()  # collect(): every time fits Python's datetime

    assert sorted(row.offset for row in classified) == list(range(len(rows)))  # one row per record, none lost
    by_offset = {row.offset: row for row in classified}
    for offset, (topic, value) in enumerate(rows):
        row = by_offset[offset]
        assert row.kind == (records.TRADE if topic == TRADES_TOPIC else records.QUOTE)
        if row.reason is None and row.kind == records.QUOTE:
            assert row.trade is None and row.value is None
            check_valid_quote(row.quote)
        elif row.reason is None:
            assert row.quote is None and row.value is None
            check_valid_trade(row.trade)
        else:
            assert row.quote is None and row.trade is None and row.value == value  # the bytes, for the quarantine
    assert {offset for offset in bad_prices if by_offset[offset].reason is None} == set()
    assert {offset for offset in untouched if by_offset[offset].reason is not None} == set()
    reasons = {row.reason for row in classified}
    assert {parse.UNPARSEABLE, parse.BAD_PRICE, parse.PRICE_TOO_LARGE, records.BAD_TRADE_PRICE} <= reasons

    # The quotes-only path of `parse.split`: count in == valid + quarantined.
    quotes = kafka.where(kafka.topic == QUOTES_TOPIC)
    valid, quarantined = parse.split(quotes)
    quote_rows = [row for row in classified if row.kind == records.QUOTE]
    refused_reasons = [row.reason for row in quarantined.select("reason").collect()]
    assert None not in refused_reasons
    valid_count = valid.count()
    assert valid_count == sum(row.reason is None for row in quote_rows)
    assert valid_count + len(refused_reasons) == len(quote_rows)
