"""What `btcstream status` shows: the Delta tables, the ingest query's rates and Kafka lag, the hourly rows.

Runs in any process, without Spark, and reads no data file it does not need:

- per table (raw_data, hourly_metrics, quarantine): the Delta version, data files and rows from the
  Delta log (`deltalake`: each add action's `num_records` statistic) and the last commit's time;
- per query: the progress document the job persists after every batch
  (`btcstream.streaming.progress`: Spark's rates and batch time, the job's totals) and the Kafka
  offsets of the last committed batch in its checkpoint, against the broker's end of the topic,
  so the lag is current even when the job is stopped;
- hourly rows open / final / revised: only the `is_final` and `revision` columns of hourly_metrics,
  counted by delta-rs' query engine (DataFusion), plus the totals of the progress document.

A storage root of the old file-sink layout stops with `LegacyLayout` (one line naming `btcstream
migrate`). An unreachable broker does not: the lag is unknown and `StatusReport.warnings` says why.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from btcstream.errors import StorageReadError
from btcstream.infra.processes import port_answers
from btcstream.ingest.feed_status import read_feed_status
from btcstream.names import (ALERTS_DATASET, CHECKPOINT_FOLDERS, DATASETS, FORECASTS_DATASET, HOURLY_DATASET,
                             INGEST_QUERY, KAFKA_QUERIES, QUERY_NAMES)
from btcstream.settings import Settings
from btcstream.storage.checkpoints import committed_kafka_offsets
from btcstream.storage.layout import require_delta_layout
from btcstream.streaming.progress import read_progress

# A query that reported nothing (progress or idle) for this long is shown as not running.
STALE_AFTER_S = 120.0
RECENT_GAPS_SHOWN = 5  # gaps listed by `btcstream status` (all are in the feed-status document)
# How long status waits for the broker before it prints the tables without the lag.
KAFKA_TIMEOUT_MS = 5_000
WIDTH = 120  # the tables fit a terminal this wide


@dataclass(frozen=True)
class TableStatus:
    """One Delta table from its log; `version` None when there is no table yet."""

    name: str
    version: int | None = None
    files: int = 0
    rows: int | None = 0  # None when a data file has no row-count statistic
    last_commit: datetime | None = None


@dataclass(frozen=True)
class QueryStatus:
    """One query as `btcstream status` prints it; None where a value is unknown."""

    name: str
    state: str  # running | stopped | failed | never started
    updated_at: datetime | None
    last_batch_id: int | None
    input_rows_per_s: float | None
    processed_rows_per_s: float | None
    batch_duration_ms: int | None
    lag_offsets: int | None  # Kafka offsets behind the end of the topic
    late_rows_total: int = 0
    quarantined_rows_total: int = 0
    inserted_rows_total: int = 0
    duplicate_rows_total: int = 0
    trades_inserted_total: int = 0
    trade_duplicates_total: int = 0
    error: str | None = None
    restarts: int = 0  # restarts after a failure by `btcstream stream` (its --max-restarts)
    last_restart_reason: str | None = None
    stage_ms: dict[str, int] | None = None  # where the last batch's time went (progress.BATCH_STAGES)


@dataclass(frozen=True)
class HourlyStatus:
    """hourly_metrics rows by lifecycle (None: no table yet), and the job's hourly totals since it started."""

    open_rows: int | None  # is_final false: the hour is still live
    final_rows: int | None
    revised_rows: int | None  # revision > 1: changed by a tick that arrived after the hour was final
    opened_total: int = 0
    updated_total: int = 0
    revised_total: int = 0
    finalised_total: int = 0


@dataclass(frozen=True)
class FeedStatus:
    """The WebSocket producer's counters and gaps (its feed-status document, `ingest.feed_status`).

    received = sent + conflated + overflowed (+ held back for conflation) per the producer; gaps are
    update-id/trade-id discontinuities and downtime windows, filled from REST where possible.
    """

    state: str  # running | stopped (as the producer last wrote; stale documents say so)
    written_at: datetime | None
    received_quotes: int
    received_trades: int
    sent_quotes: int
    sent_trades: int  # from the stream, plus those refetched from REST to fill gaps
    conflated: int
    overflowed: int
    malformed: int
    reconnects: int
    gaps: dict[str, int]  # per kind, how many
    unfilled_trade_gaps: int
    missing_trade_ids: int
    recent_gaps: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SignalsStatus:
    """The live forecasts per model and the latest alerts (from their tables), with the job's totals since it started."""

    forecasts_written_total: int = 0
    alerts_raised_total: int = 0
    alert_late_bars_total: int = 0  # records of minutes already scored (stored, not scored)
    alerts_unpublished_total: int = 0  # alerts the alerts topic did not take (the table holds them)
    # per model: model, forecasts, scored (realized known), qlike (mean, on variances), newest (for_hour)
    models: list[dict[str, Any]] = field(default_factory=list)
    recent_alerts: list[dict[str, Any]] = field(default_factory=list)  # newest first


@dataclass(frozen=True)
class StatusReport:
    """Everything `btcstream status` prints, as of one moment."""

    tables: list[TableStatus]
    queries: list[QueryStatus]
    hourly: HourlyStatus
    warnings: list[str] = field(default_factory=list)
    feed: FeedStatus | None = None  # None: no WebSocket producer has run with these settings on this machine
    signals: SignalsStatus = field(default_factory=SignalsStatus)

    def to_json(self) -> str:
        """One JSON object: tables, queries, hourly, feed, signals, warnings (times in ISO 8601, UTC)."""
        document = {
            "tables": [_plain(t) for t in self.tables], "queries": [_plain(q) for q in self.queries],
            "hourly": _plain(self.hourly), "feed": _plain(self.feed) if self.feed else None,
            "signals": _plain(self.signals),
            "warnings": self.warnings,
        }
        return json.dumps(document, indent=2)


@dataclass(frozen=True)
class TopicEnds:
    """Per partition, the first and the next offset of the topic; `problem` when the broker could not tell."""

    beginning: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)
    problem: str | None = None


def status_report(settings: Settings, now: datetime | None = None, topic: TopicEnds | None = None) -> StatusReport:
    """The whole status of the storage root; `topic` defaults to asking the broker (`topic_ends`).

    Raises `LegacyLayout` for an old file-sink root, `StorageReadError` when the root cannot be read.
    """
    now = now or datetime.now(timezone.utc)
    try:
        require_delta_layout(settings)
        topic = topic or topic_ends(settings)
        documents, unreadable = _progress_documents(settings)
        return StatusReport(
            tables=[table_status(settings, dataset) for dataset in DATASETS],
            queries=[query_status(settings, name, documents[name], topic, now) for name in QUERY_NAMES],
            hourly=hourly_status(settings, _totals(documents[INGEST_QUERY])),
            warnings=unreadable + ([topic.problem] if topic.problem else []),
            feed=feed_status(settings, now),
            signals=signals_status(settings, _totals(documents[INGEST_QUERY])),
        )
    except OSError as error:  # HDFS down or the root unreadable (requests' errors are OSErrors too)
        raise StorageReadError(f"cannot read the storage root {settings.storage_root} ({_first_line(error)}): "
                               f"start HDFS (`btcstream infra up`) or check BTCSTREAM_STORAGE_ROOT") from error


def table_status(settings: Settings, dataset: str) -> TableStatus:
    """Version, data files, rows and last commit time of one dataset's Delta table, from its log only."""
    from deltalake import DeltaTable

    url = settings.storage_url(dataset)
    if not DeltaTable.is_deltatable(url):
        return TableStatus(dataset, version=None, files=0, rows=None)
    table = DeltaTable(url)
    records = table.get_add_actions().column("num_records").to_pylist()
    history = table.history(1)
    committed = history[0].get("timestamp") if history else None
    return TableStatus(
        name=dataset, version=table.version(), files=len(records),
        rows=None if any(r is None for r in records) else sum(records),
        last_commit=datetime.fromtimestamp(committed / 1000, timezone.utc) if committed is not None else None,
    )


def hourly_rows(settings: Settings) -> tuple[int, int, int] | None:
    """hourly_metrics rows (open, final, revised), reading only `is_final` and `revision`; None: no table."""
    from deltalake import DeltaTable, QueryBuilder

    url = settings.storage_url(HOURLY_DATASET)
    if not DeltaTable.is_deltatable(url):
        return None
    # DataFusion in delta-rs reads only the two columns, in Rust (no Python file handles, no Arrow
    # thread pool left running at exit; see storage.filesystem.read_parquet).
    counts = QueryBuilder().register("hourly", DeltaTable(url)).execute(
        "SELECT count(*) FILTER (WHERE NOT is_final) AS open_rows, count(*) FILTER (WHERE is_final) AS final_rows, "
        "count(*) FILTER (WHERE revision > 1) AS revised_rows FROM hourly").read_all()
    # Read off the arro3 table directly: converting it with pyarrow would import pandas (0.8 s).
    open_rows, final_rows, revised_rows = (int(counts.column(name).to_pylist()[0])
                                           for name in ("open_rows", "final_rows", "revised_rows"))
    return open_rows, final_rows, revised_rows


def hourly_status(settings: Settings, totals: dict[str, Any]) -> HourlyStatus:
    """The hourly rows by lifecycle, with the totals of the ingest query's progress document."""
    rows = hourly_rows(settings)
    open_rows, final_rows, revised_rows = rows if rows is not None else (None, None, None)
    return HourlyStatus(
        open_rows=open_rows, final_rows=final_rows, revised_rows=revised_rows,
        opened_total=int(totals.get("hourly_opened", 0)), updated_total=int(totals.get("hourly_updated", 0)),
        revised_total=int(totals.get("hourly_revised", 0)), finalised_total=int(totals.get("hourly_finalised", 0)),
    )


RECENT_ALERTS = 5
# QLIKE of a volatility forecast v against the realized volatility r, on variances (btcstream.analytics.evaluation):
# r^2 / v^2 - ln(r^2 / v^2) - 1.
_FORECASTS_SQL = (
    "SELECT model, count(*) AS forecasts, count(realized) AS scored, "
    "avg(CASE WHEN realized > 0 AND value > 0 THEN (realized * realized) / (value * value) "
    "- ln((realized * realized) / (value * value)) - 1 END) AS qlike, max(for_hour) AS newest "
    "FROM forecasts GROUP BY model ORDER BY model")
_ALERTS_SQL = (f"SELECT symbol, time, metric, value, baseline, z FROM alerts ORDER BY time DESC, symbol, metric "
               f"LIMIT {RECENT_ALERTS}")


def signals_status(settings: Settings, totals: dict[str, Any]) -> SignalsStatus:
    """Forecasts per model and the latest alerts, read with DataFusion in delta-rs (only the needed columns)."""
    from deltalake import DeltaTable, QueryBuilder

    def query(dataset: str, sql: str) -> list[dict[str, Any]]:
        url = settings.storage_url(dataset)
        if not DeltaTable.is_deltatable(url):
            return []
        table = QueryBuilder().register(dataset, DeltaTable(url)).execute(sql).read_all()
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    return SignalsStatus(
        forecasts_written_total=int(totals.get("forecasts_written", 0)),
        alerts_raised_total=int(totals.get("alerts_raised", 0)),
        alert_late_bars_total=int(totals.get("alert_late_bars", 0)),
        alerts_unpublished_total=int(totals.get("alerts_unpublished", 0)),
        models=query(FORECASTS_DATASET, _FORECASTS_SQL), recent_alerts=query(ALERTS_DATASET, _ALERTS_SQL))


def query_status(settings: Settings, name: str, document: dict[str, Any] | None, topic: TopicEnds,
                 now: datetime) -> QueryStatus:
    """One query from its progress document, and its Kafka lag from its checkpoint and `topic`."""
    lag = None
    if name in KAFKA_QUERIES and topic.problem is None:
        committed = committed_kafka_offsets(settings, CHECKPOINT_FOLDERS[name]) or {}
        lag = kafka_lag(committed, topic)
    if document is None:
        return QueryStatus(name, "never started", None, None, None, None, None, lag)
    latest = document.get("latest") or {}
    updated = _utc(document.get("updated_at"))
    if document.get("error"):
        state = "failed"
    elif document.get("stopped_at") or updated is None or (now - updated).total_seconds() > STALE_AFTER_S:
        state = "stopped"
    else:
        state = "running"
    totals = _totals(document)
    last_batch = document.get("last_batch_id")
    return QueryStatus(
        name=name, state=state, updated_at=updated,
        last_batch_id=last_batch if isinstance(last_batch, int) and last_batch >= 0 else None,
        input_rows_per_s=_finite(latest.get("inputRowsPerSecond")),
        processed_rows_per_s=_finite(latest.get("processedRowsPerSecond")),
        batch_duration_ms=(latest.get("durationMs") or {}).get("triggerExecution"), lag_offsets=lag,
        late_rows_total=int(totals.get("late_rows", 0)), quarantined_rows_total=int(totals.get("quarantined_rows", 0)),
        inserted_rows_total=int(totals.get("inserted_rows", 0)),
        duplicate_rows_total=int(totals.get("duplicate_rows", 0)),
        trades_inserted_total=int(totals.get("trades_inserted", 0)),
        trade_duplicates_total=int(totals.get("trade_duplicates", 0)), error=document.get("error"),
        restarts=int(document.get("restarts") or 0),
        last_restart_reason=(document.get("last_restart") or {}).get("reason"),
        stage_ms=((document.get("history") or [{}])[-1] or {}).get("stage_ms"),
    )


def feed_status(settings: Settings, now: datetime) -> FeedStatus | None:
    """The producer's feed-status document as a FeedStatus; None when there is none (REST feed, other machine)."""
    document = read_feed_status(settings)
    if not document:
        return None
    counts = document.get("counts") or {}
    received, sent = counts.get("received") or {}, counts.get("sent") or {}
    overflowed = counts.get("overflowed") or {}
    gaps = document.get("gaps") or {}
    written = _utc(document.get("written_at"))
    state = str(document.get("state", "unknown"))
    if state == "running" and (written is None or (now - written).total_seconds() > STALE_AFTER_S):
        state = "silent (no update)"
    return FeedStatus(
        state=state, written_at=written,
        received_quotes=int(received.get("quote", 0)), received_trades=int(received.get("trade", 0)),
        sent_quotes=int(sent.get("quote", 0)), sent_trades=int(sent.get("trade", 0)) + int(sent.get("trade_rest", 0)),
        conflated=int(counts.get("conflated", 0)), overflowed=sum(int(v) for v in overflowed.values()),
        malformed=sum(int(v) for v in (counts.get("malformed") or {}).values()),
        reconnects=sum(int(v) for v in ((document.get("connections") or {}).get("reconnects") or {}).values()),
        gaps={str(k): int(v) for k, v in (gaps.get("total") or {}).items()},
        unfilled_trade_gaps=int(gaps.get("unfilled_trade_gaps", 0)),
        missing_trade_ids=int(gaps.get("missing_trade_ids", 0)),
        recent_gaps=list(gaps.get("recent") or [])[-RECENT_GAPS_SHOWN:],
    )


def kafka_lag(committed: dict[int, int], topic: TopicEnds) -> int:
    """Offsets still to read: per partition from the committed offset (the topic's first one if none) to the end."""
    return sum(max(0, end - max(committed.get(partition, 0), topic.beginning.get(partition, 0)))
               for partition, end in topic.end.items())


def topic_ends(settings: Settings) -> TopicEnds:
    """The first and next offset of every partition of the topic, or the broker's problem in one line."""
    from kafka import KafkaConsumer, TopicPartition

    from btcstream.clients.kafka import kafka_python_options

    where = f"Kafka at {settings.kafka_bootstrap}"
    fix = "start it (`btcstream infra up`) or check BTCSTREAM_KAFKA_BOOTSTRAP"
    if not any(port_answers(port, host, KAFKA_TIMEOUT_MS / 1000) for host, port in settings.kafka_hosts):
        # kafka-python would retry a refused connection with backoff until its timeout: answer at once
        return TopicEnds(problem=f"cannot reach {where} (no broker accepts connections): Kafka lag unknown; {fix}")
    with _quiet("kafka"):  # kafka-python logs every failed connection attempt: one warning says it all
        try:
            consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=KAFKA_TIMEOUT_MS,
                                     bootstrap_timeout_ms=KAFKA_TIMEOUT_MS, **kafka_python_options(settings))
        except Exception as error:  # status must still print what it knows
            return TopicEnds(problem=f"cannot reach {where} ({_first_line(error)}): Kafka lag unknown; {fix}")
        try:
            partitions = [TopicPartition(settings.topic, p) for p in consumer.partitions_for_topic(settings.topic) or ()]
            if not partitions:
                return TopicEnds(problem=f"topic {settings.topic} does not exist on {where}: Kafka lag unknown")
            beginning = consumer.beginning_offsets(partitions)
            end = consumer.end_offsets(partitions)
            return TopicEnds(beginning={tp.partition: offset for tp, offset in beginning.items()},
                             end={tp.partition: offset for tp, offset in end.items()})
        except Exception as error:
            return TopicEnds(problem=f"cannot read the offsets of {settings.topic} from {where} "
                                     f"({_first_line(error)}): Kafka lag unknown")
        finally:
            consumer.close()


def format_report(report: StatusReport) -> str:
    """The report as three fixed-width blocks (tables, queries, hourly rows), each line at most `WIDTH` wide."""
    blocks = [format_tables(report.tables), format_queries(report.queries), format_hourly(report.hourly)]
    if report.feed is not None:
        blocks.append(format_feed(report.feed))
    blocks.append(format_signals(report.signals))
    return "\n\n".join(blocks)


def format_signals(signals: SignalsStatus) -> str:
    """Forecasts per model (count, scored, mean QLIKE, newest hour), then the alerts: totals and the latest."""
    lines = [f"forecasts: {signals.forecasts_written_total:,} written since the job started"]
    if not signals.models:
        lines[0] += "; no forecasts table yet"
    for model in signals.models:
        newest = _moment(model.get("newest"))
        qlike = model.get("qlike")
        lines.append(_clip(f"  {model['model']:18} {int(model['forecasts']):>8,} forecasts, {int(model['scored']):,} "
                           f"scored, mean QLIKE {_number(qlike, 4) if qlike is not None else '-'}, "
                           f"newest for {newest}"))
    lines.append(f"alerts: {signals.alerts_raised_total:,} raised since the job started "
                 f"({signals.alerts_unpublished_total:,} not published to the topic, "
                 f"{signals.alert_late_bars_total:,} late bars not scored)")
    for alert in signals.recent_alerts:
        lines.append(_clip(f"  {_moment(alert.get('time'))} {alert['symbol']} {alert['metric']} "
                           f"{alert['value']:.4g} (baseline {alert['baseline']:.4g}, z {alert['z']:+.1f})"))
    if not signals.recent_alerts:
        lines.append("  none")
    return "\n".join(lines)


def _moment(value: Any) -> str:
    """A timestamp from a DataFusion result as 'YYYY-MM-DD HH:MM UTC' ('-' when missing)."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"
    return str(value)


def format_feed(feed: FeedStatus) -> str:
    """The WebSocket feed: counts that add up, reconnects, gaps (the most recent ones listed)."""
    when = f"{feed.written_at:%Y-%m-%d %H:%M:%S}" if feed.written_at else "-"
    gaps = ", ".join(f"{n:,} {kind}" for kind, n in sorted(feed.gaps.items())) or "none"
    lines = [
        f"websocket feed: {feed.state} (updated {when} UTC), {feed.reconnects:,} reconnects",
        f"  quotes: {feed.received_quotes:,} received, {feed.sent_quotes:,} sent, {feed.conflated:,} conflated; "
        f"trades: {feed.received_trades:,} received, {feed.sent_trades:,} sent",
        f"  dropped: {feed.overflowed:,} overflowed (buffer full), {feed.malformed:,} malformed frames",
        _clip(f"  gaps: {gaps}; {feed.unfilled_trade_gaps:,} trade gaps unfilled ({feed.missing_trade_ids:,} ids)"),
    ]
    for gap in feed.recent_gaps:
        ids = f"ids {gap.get('from_id')}-{gap.get('to_id')}" if gap.get("from_id") is not None else "no ids"
        duration = gap.get("duration_s")
        lasted = f", {duration:.1f} s" if isinstance(duration, (int, float)) else ""
        filled = "filled" if gap.get("filled") else "NOT filled"
        lines.append(_clip(f"    {gap.get('symbol', '?')} {gap.get('kind', '?')} {ids}{lasted}, "
                           f"from {gap.get('start', '?')}: {filled}"))
    return "\n".join(lines)


def format_tables(tables: list[TableStatus]) -> str:
    """One line per Delta table: version, files, rows, last commit."""
    lines = [f"{'table':16} {'version':>10} {'files':>10} {'rows':>16}  last commit (UTC)"]
    for t in tables:
        if t.version is None:
            lines.append(f"{t.name:16} no table yet")
            continue
        when = f"{t.last_commit:%Y-%m-%d %H:%M:%S}" if t.last_commit else "-"
        lines.append(f"{t.name:16} {t.version:>10,} {t.files:>10,} {_number(t.rows):>16}  {when}")
    return "\n".join(lines)


def format_queries(queries: list[QueryStatus]) -> str:
    """Per query a line (state, last batch, rates, batch time, Kafka lag, late and quarantined totals),
    then its raw_data totals and, if it failed, its error's first line."""
    lines = [f"{'query':16} {'state':13} {'batch':>9} {'in rows/s':>11} {'done rows/s':>11} {'batch ms':>9} "
             f"{'kafka lag':>13} {'late':>14} {'quarantined':>14}"]
    for q in queries:
        lines.append(f"{q.name:16} {q.state:13} {_number(q.last_batch_id):>9} {_number(q.input_rows_per_s, 1):>11} "
                     f"{_number(q.processed_rows_per_s, 1):>11} {_number(q.batch_duration_ms):>9} "
                     f"{_number(q.lag_offsets):>13} {_number(q.late_rows_total):>14} "
                     f"{_number(q.quarantined_rows_total):>14}")
        lines.append(f"  raw_data: {q.inserted_rows_total:,} ticks inserted, {q.duplicate_rows_total:,} duplicates skipped")
        lines.append(f"  trades: {q.trades_inserted_total:,} inserted, {q.trade_duplicates_total:,} duplicates skipped")
        if q.stage_ms:
            split = ", ".join(f"{stage} {ms / 1000:.1f} s" for stage, ms in q.stage_ms.items())
            lines.append(_clip(f"  last batch: {split}"))
        if q.restarts:
            lines.append(_clip(f"  restarted {q.restarts} time(s) after a failure; last: {q.last_restart_reason}"))
        if q.error:
            lines.append(_clip(f"  error: {_first_line(q.error)}"))
    return "\n".join(lines)


def format_hourly(hourly: HourlyStatus) -> str:
    """The hourly rows by lifecycle, then what the job did to them since it started."""
    if hourly.open_rows is None:
        rows = "hourly rows: no table yet"
    else:
        rows = (f"hourly rows: {_number(hourly.open_rows)} open, {_number(hourly.final_rows)} final, "
                f"{_number(hourly.revised_rows)} revised (changed after final)")
    totals = (f"hourly changes: {hourly.opened_total:,} opened, {hourly.updated_total:,} updated, "
              f"{hourly.finalised_total:,} finalised, {hourly.revised_total:,} revised")
    return f"{rows}\n{totals}"


def _totals(document: dict[str, Any] | None) -> dict[str, Any]:
    return (document or {}).get("totals") or {}


def _progress_documents(settings: Settings) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """Each query's progress document (None: never ran), and a warning per document that stayed
    unreadable (`read_progress` reads again one caught mid-replacement): the rest is still shown."""
    documents: dict[str, dict[str, Any] | None] = {}
    unreadable: list[str] = []
    for name in QUERY_NAMES:
        try:
            documents[name] = read_progress(settings, name)
        except StorageReadError as error:
            documents[name], unreadable = None, [*unreadable, str(error)]
    return documents, unreadable


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library's logger for the duration of a call."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _utc(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _finite(value: Any) -> float | None:
    """Spark's rates as floats; None when absent or not a number (NaN, infinite)."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _number(value: float | int | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _first_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _clip(line: str) -> str:
    return line if len(line) <= WIDTH else line[:WIDTH - 3] + "..."


def _plain(record: Any) -> dict[str, Any]:
    """A status dataclass as JSON-ready values (datetimes as ISO 8601)."""
    return {key: _jsonable(value) for key, value in record.__dict__.items()}


def _jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601 (naive ones taken as UTC), inside lists and dicts too."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value
