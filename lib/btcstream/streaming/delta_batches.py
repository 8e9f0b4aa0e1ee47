"""One micro-batch of Kafka records into the Delta tables: quarantine and raw_data from one read.

The building block of the Delta streaming job (issue "Streaming core on Delta Lake"): a
`foreachBatch` function receives each micro-batch of the topic once, parses every record once
and writes both tables in the same batch:

- quarantine: the refused records, appended with Delta's idempotent-write options
  (`txnAppId` = the writer's id, `txnVersion` = the batch id), so a batch replayed after a crash
  appends nothing twice;
- raw_data: the valid ticks (quotes), deduplicated on (symbol, event_time) for REST quotes and
  (symbol, update_id) for WebSocket quotes (`quote_key`) inside the batch, then only
  the keys not stored yet are added, looking only at the (date, hour) partitions the batch
  touches: by default a left anti join against the partitions already stored and an idempotent
  append (`raw_strategy="anti_join"`), or an insert-only MERGE carrying Delta's idempotent-DML
  marks (`spark.databricks.delta.write.txnAppId/txnVersion` session confs, `"merge"`). No event-time
  watermark is involved, so a tick is never dropped for arriving late: out-of-order writers and
  catch-ups keep every tick, exactly once;
- trades: the valid records of the trades topic, deduplicated on (symbol, trade_id) the same way
  (anti join against the batch's (date, hour) partitions of trade_time, idempotent append).

Used by the job's one query (`btcstream.streaming.job`); `bench/bench_delta_batches.py` measures it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from btcstream.analytics.alerts import MinuteBar
from btcstream.names import QUARANTINE_PARTITION_COLUMNS, RAW_PARTITION_COLUMNS, TRADES_PARTITION_COLUMNS
from btcstream.streaming import parse, transforms
from btcstream.streaming.records import QUOTE, TRADE, classify_records

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from btcstream.streaming.hour_partials import BatchPartials

log = logging.getLogger(__name__)

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
TRADE_KEY = ("symbol", "trade_id")
RAW_STRATEGIES = ("merge", "anti_join")
QUOTE_KEY_COLUMN = "_quote_key"  # `quote_key`: (symbol, update_id) for WebSocket quotes, (symbol, event_time) for REST ones
# Delta collects min/max/null-count statistics per data file for the first 32 columns by default;
# the readers use those of the symbol and time columns only (file pruning, `readers.latest_time`).
# Collecting them for these columns alone: a 500,000-row raw_data append 11.3 s -> 9.3 s (min of 3,
# one run, bench/results/streaming.md notes). A table property, set when the job creates the table
# (an existing table keeps its own).
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
RAW_STATS_COLUMNS = ("symbol", "event_time")
TRADES_STATS_COLUMNS = ("symbol", "trade_time", "trade_id")


@dataclass(frozen=True)
class BatchCounts:
    """What one micro-batch did: records read, ticks inserted, duplicates skipped, records refused."""

    batch_id: int
    records: int
    quarantined: int
    valid: int
    inserted: int  # new (symbol, event_time) keys written to raw_data
    late: int = 0  # valid ticks older than `late_before` (stored all the same: counted, never dropped)
    newest_event_time: datetime | None = None  # the largest event_time among the valid ticks
    hours: tuple[tuple[str, datetime], ...] = field(default=())  # (symbol, hour start) the valid ticks and trades fall in
    trades_valid: int = 0  # valid trades read (trades topic)
    trades_inserted: int = 0  # new (symbol, trade_id) keys written to the trades table
    # The batch's valid quotes and trades as 1-minute partial bars (btcstream.analytics.alerts), from the
    # records as read (a record repeated inside or across batches counts in its bar each time it is read).
    bars: tuple[MinuteBar, ...] = field(default=())
    # With `DeltaBatchWriter.partials`: the hourly partials of the rows this batch inserted (none when replayed).
    partials: BatchPartials | None = None

    @property
    def trade_duplicates(self) -> int:
        """Valid trades whose id was already stored or repeated inside the batch."""
        return self.trades_valid - self.trades_inserted

    @property
    def duplicates(self) -> int:
        """Valid ticks whose key was already stored or repeated inside the batch."""
        return self.valid - self.inserted


@dataclass(frozen=True)
class DeltaBatchWriter:
    """Writes each micro-batch to `raw_url` and `quarantine_url`; `app_id` names the writer for idempotency.

    One writer id per query checkpoint: batch ids restart from 0 with a new checkpoint, so a new
    checkpoint needs a new `app_id` (else its first batches would be taken for replays).
    """

    raw_url: str
    quarantine_url: str
    app_id: str
    trades_url: str | None = None  # where valid trades go (records of `trades_topic`)
    trades_topic: str | None = None  # the Kafka topic whose records are trades; None: every record is a quote
    # "anti_join" (default) or "merge" (Delta's insert-only MERGE). The anti join ends in a blind
    # append, which never conflicts with an OPTIMIZE running beside the job (`btcstream compact`):
    # a MERGE reads the files it may rewrite and fails when OPTIMIZE removed them meanwhile. It was
    # also the faster in the benchmarks (bench/results/delta_batches.md).
    raw_strategy: str = "anti_join"
    # Also give the hourly partials of the inserted rows (`BatchCounts.partials`, for the job's
    # `hour_partials.HourlyPartials`): aggregated from the rows to append just before the append
    # (persisted in between, so the append reads them from memory rather than joining again).
    # anti_join only (a MERGE does not say which rows it inserted).
    partials: bool = False
    grid_seconds: int = transforms.RV_GRID_SECONDS

    def __call__(self, kafka_rows: DataFrame, batch_id: int, late_before: datetime | None = None) -> BatchCounts:
        """The `foreachBatch` function: classify once, write every table, return the counts.

        `late_before`: valid quotes older than this are counted as late (and stored like the others).

        What stays in memory for the batch is one row per record with its typed quote or trade
        and the refusal reason; the record's bytes are kept only for refused records (the
        quarantine's `value`), so a batch of valid records does not hold its JSON twice.
        """
        from pyspark.sql import functions as F

        if self.raw_strategy not in RAW_STRATEGIES:
            raise ValueError(f"raw_strategy {self.raw_strategy!r}: expected one of {', '.join(RAW_STRATEGIES)}")
        rows = classify_records(kafka_rows, self.trades_topic).persist()
        try:
            groups = self._summary(rows, late_before)
            bars = tuple(_minute_bar(group) for group in groups if group["valid"])
            trade_span = _span_of(group for group in groups if group["valid"] and group["kind"] == TRADE)
            groups = _by_hour(groups)
            records = sum(group["records"] for group in groups)
            valid = sum(group["valid"] for group in groups if group["kind"] == QUOTE)
            trades_valid = sum(group["valid"] for group in groups if group["kind"] == TRADE)
            late = sum(group["late"] for group in groups)
            hours = tuple(sorted({(group["symbol"], utc(group["window_start"])) for group in groups if group["valid"]}))
            newest = max((utc(group["newest"]) for group in groups if group["newest"] is not None), default=None)
            quarantined = records - valid - trades_valid
            if quarantined:
                self._append_quarantine(parse.quarantined(rows), batch_id)
            quote_hours = {(g["symbol"], utc(g["window_start"])) for g in groups if g["valid"] and g["kind"] == QUOTE}
            if self.partials and self.raw_strategy != "anti_join":
                raise ValueError("partials need raw_strategy='anti_join'")
            inserted, quote_steps = 0, ()
            if valid:
                enriched = transforms.enrich(rows.where(F.col("kind") == QUOTE).where(F.col("quote").isNotNull())
                                             .select("quote.*"))
                if self.raw_strategy == "merge":
                    inserted = self._merge_raw(enriched, batch_id, _partitions_of(quote_hours))
                else:
                    inserted, quote_steps = self._append_new_raw(enriched, batch_id, _partitions_of(quote_hours))
            trades_inserted, trade_totals = 0, ()
            if trades_valid:
                if self.trades_url is None:
                    raise ValueError("trades arrived but the writer has no trades_url")
                trade_hours = {(g["symbol"], utc(g["window_start"])) for g in groups if g["valid"] and g["kind"] == TRADE}
                trades = rows.where(F.col("kind") == TRADE).where(F.col("trade").isNotNull()).select("trade.*")
                trades_inserted, trade_totals = self._append_new_trades(trades, batch_id, _partitions_of(trade_hours),
                                                                        trade_span)
            partials = None
            if self.partials:
                from btcstream.streaming.hour_partials import BatchPartials

                partials = BatchPartials(quote_steps, trade_totals)
                if partials.quote_count != inserted or partials.trade_count != trades_inserted:
                    # Should not happen (the partials are of the very rows appended): say so, and let the
                    # caller read the touched hours back from the tables rather than trust them.
                    log.warning("batch %d: partials of %d quotes and %d trades, but %d and %d were inserted; "
                                "the touched hours are read back from the tables", batch_id, partials.quote_count,
                                partials.trade_count, inserted, trades_inserted)
                    partials = None
        finally:
            rows.unpersist()
        return BatchCounts(batch_id, records, quarantined, valid, inserted, late, newest, hours, trades_valid,
                           trades_inserted, bars, partials)

    @staticmethod
    def _summary(rows: DataFrame, late_before: datetime | None) -> list:
        """One Spark job over the batch: per kind, symbol and minute of the valid records, and one group
        of the refused records (null keys): records, valid, late quotes, newest event/trade time, and
        the partial 1-minute bar aggregates (`btcstream.analytics.alerts.MinuteBar`) of the valid ones."""
        from pyspark.sql import functions as F

        is_valid = F.col("reason").isNull()
        moment = F.coalesce(F.col("quote.event_time"), F.col("trade.trade_time"))
        is_late = (is_valid & (F.col("kind") == QUOTE) & (F.col("quote.event_time") < F.lit(late_before))
                   if late_before is not None else F.lit(False))
        bid, ask = F.col("quote.bid_price"), F.col("quote.ask_price")
        mid = (bid + ask) / 2.0
        sells = F.col("trade.buyer_is_maker")
        return (rows.groupBy(F.when(is_valid, F.col("kind")).alias("kind"),
                             F.when(is_valid, F.coalesce(F.col("quote.symbol"), F.col("trade.symbol"))).alias("symbol"),
                             F.when(is_valid, F.date_trunc("minute", moment)).alias("minute"))
                .agg(F.count(F.lit(1)).alias("records"), F.count_if(is_valid).alias("valid"),
                     F.count_if(is_late).alias("late"),
                     F.max(F.when(is_valid, moment)).alias("newest"),
                     F.sum((ask - bid) / mid * transforms.BASIS_POINTS).alias("spread_bps_sum"),
                     F.max(mid).alias("high_mid"), F.min(mid).alias("low_mid"),
                     F.sum(F.when(~sells, F.col("trade.qty"))).alias("buy_qty"),
                     F.sum(F.when(sells, F.col("trade.qty"))).alias("sell_qty"))
                .collect())

    def _append_quarantine(self, refused: DataFrame, batch_id: int) -> None:
        from pyspark.sql import functions as F

        (refused.withColumn("date", F.to_date("kafka_timestamp"))
         .write.format("delta").mode("append").partitionBy(*QUARANTINE_PARTITION_COLUMNS)
         .option("txnAppId", self.app_id).option("txnVersion", batch_id).save(self.quarantine_url))

    def _append_new_raw(self, enriched: DataFrame, batch_id: int, touched: set[tuple[str, int]]) -> tuple[int, tuple]:
        """Keys inserted: the batch's ticks minus those already stored, as one idempotent append; with
        `partials`, also the step partials of the appended rows (`hour_partials.quote_steps_of`).

        Only the batch's (date, hour) partitions that already hold files (read from the Delta log)
        are joined against; ticks of partitions new to the table are appended without a join. A
        left anti join + append is what an insert-only MERGE does, minus the MERGE's second pass
        over the source and its session-conf idempotency marks (the append carries its own).
        Correct with one writer per table (the job) and any number of OPTIMIZE runs beside it.
        """
        spark = enriched.sparkSession
        if _applied(self.raw_url, self.app_id, batch_id):
            return 0, ()
        key = ["symbol", QUOTE_KEY_COLUMN]
        ticks = enriched.withColumn(QUOTE_KEY_COLUMN, quote_key(enriched.columns)).dropDuplicates(key)
        stored = touched & _stored_partitions(self.raw_url)
        if stored:
            table = spark.read.format("delta").load(self.raw_url)
            existing = (table.where(_within(sorted(stored), alias=""))
                        .select("symbol", quote_key(table.columns).alias(QUOTE_KEY_COLUMN)))
            ticks = ticks.join(existing, key, "left_anti")
        before = table_version(self.raw_url)
        new = ticks.drop(QUOTE_KEY_COLUMN)
        steps: tuple = ()
        if self.partials:  # before the write: once it is done, the anti join would find these rows stored
            from btcstream.streaming.hour_partials import quote_steps_of

            new = new.persist()
            steps = quote_steps_of(new, self.grid_seconds)
        try:
            # mergeSchema: tables written before tick schema 2 gain its columns (feed, update_id, received_at).
            (new.write.format("delta").mode("append").partitionBy(*RAW_PARTITION_COLUMNS)
             .option("mergeSchema", "true").option(STATS_COLUMNS_PROPERTY, ",".join(RAW_STATS_COLUMNS))
             .option("txnAppId", self.app_id).option("txnVersion", batch_id).save(self.raw_url))
        finally:
            new.unpersist()
        return _rows_added_since(self.raw_url, before), steps

    def _append_new_trades(self, trades: DataFrame, batch_id: int, touched: set[tuple[str, int]],
                           span: tuple[datetime, datetime] | None = None) -> tuple[int, tuple]:
        """Trades inserted: the batch's trades minus the (symbol, trade_id) keys already stored, as one
        idempotent append (as `_append_new_raw`).

        The stored keys are read from the batch's (date, hour) partitions of trade_time, and within
        them only from files whose trade_time range meets `span` (the batch's first minute to its
        newest trade_time; Delta skips the others by their statistics). Exact: a trade's time is the
        exchange's, the same each time the trade is received, so a stored copy lies within the span.
        A live batch then reads the last file or two of its hour, not every file the hour holds.
        """
        from pyspark.sql import functions as F

        assert self.trades_url is not None
        spark = trades.sparkSession
        if _applied(self.trades_url, self.app_id, batch_id):
            return 0, ()
        rows = (trades.dropDuplicates(list(TRADE_KEY))
                .withColumn("date", F.to_date("trade_time")).withColumn("hour", F.hour("trade_time")))
        stored = touched & _stored_partitions(self.trades_url)
        if stored:
            existing = spark.read.format("delta").load(self.trades_url).where(_within(sorted(stored), alias=""))
            if span is not None:
                existing = existing.where(F.col("trade_time").between(F.lit(span[0]), F.lit(span[1])))
            existing = existing.select(*TRADE_KEY)
            rows = rows.join(existing, list(TRADE_KEY), "left_anti")
        before = table_version(self.trades_url)
        totals: tuple = ()
        if self.partials:  # before the write, as in `_append_new_raw`
            from btcstream.streaming.hour_partials import trade_totals_of

            rows = rows.persist()
            totals = trade_totals_of(rows)
        try:
            (rows.write.format("delta").mode("append").partitionBy(*TRADES_PARTITION_COLUMNS)
             .option(STATS_COLUMNS_PROPERTY, ",".join(TRADES_STATS_COLUMNS))
             .option("txnAppId", self.app_id).option("txnVersion", batch_id).save(self.trades_url))
        finally:
            rows.unpersist()
        return _rows_added_since(self.trades_url, before), totals

    def _merge_raw(self, enriched: DataFrame, batch_id: int, touched: set[tuple[str, int]]) -> int:
        """Keys inserted: insert-only MERGE on the quote key (`quote_key`) within the batch's partitions."""
        spark = enriched.sparkSession
        if _applied(self.raw_url, self.app_id, batch_id):
            return 0
        ticks = (enriched.withColumn(QUOTE_KEY_COLUMN, quote_key(enriched.columns))
                 .dropDuplicates(["symbol", QUOTE_KEY_COLUMN]).drop(QUOTE_KEY_COLUMN).cache())
        try:
            partitions = sorted(touched)
            if not partitions:
                return 0
            table = _raw_table(spark, self.raw_url, ticks)
            before = table_version(self.raw_url)
            condition = (f"t.symbol = s.symbol AND {_quote_key_sql('t')} = {_quote_key_sql('s')} AND "
                         + _within(partitions))
            with _idempotent(spark, self.app_id, batch_id):
                table.alias("t").merge(ticks.alias("s"), condition).whenNotMatchedInsertAll().execute()
            return _rows_added_since(self.raw_url, before)
        finally:
            ticks.unpersist()


def _minute_bar(group) -> MinuteBar:
    """A valid group of `_summary` as a partial bar."""
    quotes = group["valid"] if group["kind"] == QUOTE else 0
    return MinuteBar(group["symbol"], utc(group["minute"]), quotes=quotes,
                     spread_bps_sum=float(group["spread_bps_sum"] or 0.0),
                     high_mid=float(group["high_mid"]) if group["high_mid"] is not None else -math.inf,
                     low_mid=float(group["low_mid"]) if group["low_mid"] is not None else math.inf,
                     trades=group["valid"] if group["kind"] == TRADE else 0,
                     buy_qty=float(group["buy_qty"] or 0.0), sell_qty=float(group["sell_qty"] or 0.0))


def _span_of(groups) -> tuple[datetime, datetime] | None:
    """(first minute, newest time) of `_summary` groups: every record time of theirs lies within."""
    groups = list(groups)
    if not groups:
        return None
    return min(utc(g["minute"]) for g in groups), max(utc(g["newest"]) for g in groups)


def _by_hour(groups: list) -> list[dict]:
    """`_summary`'s per-minute groups summed per (kind, symbol, hour): records, valid, late, newest, window_start."""
    hours: dict[tuple, dict] = {}
    for group in groups:
        start = utc(group["minute"]).replace(minute=0) if group["minute"] is not None else None
        key = (group["kind"], group["symbol"], start)
        into = hours.setdefault(key, {"kind": group["kind"], "symbol": group["symbol"], "window_start": start,
                                      "records": 0, "valid": 0, "late": 0, "newest": None})
        into["records"] += group["records"]
        into["valid"] += group["valid"]
        into["late"] += group["late"]
        if group["newest"] is not None and (into["newest"] is None or group["newest"] > into["newest"]):
            into["newest"] = group["newest"]
    return list(hours.values())


def quote_key(columns: list[str]):
    """A quote's identity within its symbol: the WebSocket update id, else minus the event time in
    microseconds (REST quotes have no update id; negative, so the two kinds never collide).
    Tables written before tick schema 2 have no update_id column: their quotes are REST quotes."""
    from pyspark.sql import functions as F

    by_time = -F.unix_micros("event_time")
    return F.coalesce(F.col("update_id"), by_time) if "update_id" in columns else by_time


def _quote_key_sql(alias: str) -> str:
    return f"coalesce({alias}.update_id, -unix_micros({alias}.event_time))"


def _partitions_of(hours: set[tuple[str, datetime]]) -> set[tuple[str, int]]:
    """The (date, hour) partitions of (symbol, hour start) keys."""
    return {(start.date().isoformat(), start.hour) for _, start in hours}


def utc(moment: datetime) -> datetime:
    """A timestamp collected from Spark (naive, in this process's local time) as a UTC-aware datetime."""
    return moment.astimezone(timezone.utc)


def _applied(url: str, app_id: str, batch_id: int) -> bool:
    """True when the Delta table at `url` already holds `app_id`'s batch `batch_id` (a replay)."""
    from deltalake import DeltaTable as LogReader  # reads the Delta log in the driver, no Spark job

    if not LogReader.is_deltatable(url):
        return False
    version = LogReader(url).transaction_version(app_id)
    return version is not None and version >= batch_id


def table_version(url: str) -> int:
    """The newest version of the Delta table at `url` (-1 before its first commit)."""
    from deltalake import DeltaTable as LogReader

    return LogReader(url).version() if LogReader.is_deltatable(url) else -1


# The commit metric holding the rows each operation added to the table.
ADDED_ROWS_METRIC = {"WRITE": "numOutputRows", "MERGE": "numTargetRowsInserted"}


def _rows_added_since(url: str, version: int) -> int:
    """Rows appended or MERGE-inserted after `version`: this writer's own, the job being the table's only
    writer (OPTIMIZE commits add none); 0 when Delta skipped a replayed batch."""
    from deltalake import DeltaTable as LogReader

    if not LogReader.is_deltatable(url):
        return 0
    newest = LogReader(url)
    commits = newest.history(max(1, newest.version() - version))
    return sum(int((c.get("operationMetrics") or {}).get(ADDED_ROWS_METRIC[c["operation"]], 0)) for c in commits
               if c.get("operation") in ADDED_ROWS_METRIC and int(c.get("version", -1)) > version)


def _stored_partitions(url: str) -> set[tuple[str, int]]:
    """The (date, hour) partitions of raw_data that hold files, from the Delta log (empty: no table yet)."""
    from deltalake import DeltaTable as LogReader

    if not LogReader.is_deltatable(url):
        return set()
    date_column, hour_column = RAW_PARTITION_COLUMNS
    return {(values[date_column], int(values[hour_column])) for values in LogReader(url).partitions()}


def _raw_table(spark: SparkSession, url: str, like: DataFrame):
    """The raw_data Delta table at `url`, created empty (partitioned by date, hour) on first use."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, url):
        (like.limit(0).write.format("delta").mode("ignore").partitionBy(*RAW_PARTITION_COLUMNS)
         .option(STATS_COLUMNS_PROPERTY, ",".join(RAW_STATS_COLUMNS)).save(url))
    return DeltaTable.forPath(spark, url)


def _within(partitions: list[tuple], alias: str = "t") -> str:
    """A condition keeping a table (`alias`, "" for none) to the batch's (date, hour) partitions (file pruning)."""
    prefix = f"{alias}." if alias else ""
    dates = sorted({str(date) for date, _ in partitions})
    hours = sorted({int(hour) for _, hour in partitions})
    date_list = ", ".join(f"DATE'{date}'" for date in dates)
    hour_list = ", ".join(str(hour) for hour in hours)
    return f"{prefix}date IN ({date_list}) AND {prefix}hour IN ({hour_list})"


class _idempotent:
    """Set Delta's idempotent-DML session confs for one statement, then remove them."""

    def __init__(self, spark: SparkSession, app_id: str, batch_id: int) -> None:
        self.conf = spark.conf
        self.values = {TXN_APP_ID_CONF: app_id, TXN_VERSION_CONF: str(batch_id)}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.conf.set(key, value)

    def __exit__(self, *exc: object) -> None:
        for key in self.values:
            self.conf.unset(key)
