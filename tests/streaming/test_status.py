"""`btcstream status` on the Delta job, without a JVM or a broker: table versions, files and rows from
the Delta log alone, hourly rows open / final / revised, the query's state, totals and Kafka lag,
an unreachable broker (tables still shown, one warning), an unreachable HDFS and an old file-sink
root (one line each). One integration test checks the same numbers on the real HDFS and broker."""

from __future__ import annotations

import json
import logging
import math
import socket
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from btcstream.errors import LegacyLayout, StorageReadError
from btcstream.ingest.tick import FIELD_NAMES, TIME_FIELDS
from btcstream.names import (
    CHECKPOINTS_DIR, HOURLY_COLUMNS, HOURLY_DATASET, HOURLY_LIFECYCLE_COLUMNS, HOURLY_PARTITION_COLUMNS,
    INGEST_QUERY, LEGACY_SINK_LOG_DIR, QUARANTINE_COLUMNS, QUARANTINE_DATASET, QUARANTINE_PARTITION_COLUMNS,
    RAW_DATASET, RAW_DERIVED_COLUMNS, RAW_PARTITION_COLUMNS,
)
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path
from btcstream.streaming import status
from btcstream.streaming.progress import ProgressWriter
from btcstream.streaming.status import TopicEnds

UTC = pa.timestamp("us", tz="UTC")
HOUR = datetime(2025, 2, 14, 10, tzinfo=timezone.utc)
TOPIC = TopicEnds(beginning={0: 0, 1: 0, 2: 5}, end={0: 100, 1: 50, 2: 30})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}/store", topic="ticks", kafka_bootstrap="localhost:1",
                    state_dir=tmp_path / "state")


def column_type(name: str) -> pa.DataType:
    """The Arrow type of a column of our tables, as Spark writes it."""
    if name in TIME_FIELDS or name in ("window_start", "window_end", "updated_at", "kafka_timestamp", "detected_at"):
        return UTC
    types = {"symbol": pa.string(), "schema_version": pa.int32(), "date": pa.date32(), "hour": pa.int32(),
             "tick_count": pa.int64(), "is_final": pa.bool_(), "revision": pa.int32(), "value": pa.binary(),
             "value_preview": pa.string(), "reason": pa.string(), "topic": pa.string(), "partition": pa.int32(),
             "offset": pa.int64()}
    return types.get(name, pa.float64())


def rows_of(columns: tuple[str, ...], rows: list[dict]) -> pa.Table:
    """A table with every column of `columns`; values from `rows`, the others null."""
    return pa.table({name: pa.array([r.get(name) for r in rows], type=column_type(name)) for name in columns})


def write(settings: Settings, dataset: str, columns: tuple[str, ...], partitions: tuple[str, ...], rows: list[dict]):
    from deltalake import write_deltalake

    write_deltalake(settings.storage_url(dataset), rows_of(columns + partitions, rows),
                    partition_by=list(partitions), mode="append")


def write_raw(settings: Settings, hours: list[int]) -> None:
    """One commit of raw_data: a tick at each of `hours` (10:00 + h) on 2025-02-14."""
    rows = [{"symbol": "BTCUSDT", "event_time": HOUR + timedelta(hours=h, minutes=i), "bid_price": 1.0,
             "date": date(2025, 2, 14), "hour": 10 + h} for i, h in enumerate(hours)]
    write(settings, RAW_DATASET, FIELD_NAMES + RAW_DERIVED_COLUMNS, RAW_PARTITION_COLUMNS, rows)


def write_hourly(settings: Settings, lifecycle: list[tuple[bool, int]]) -> None:
    """hourly_metrics rows, one per (is_final, revision), consecutive hours of BTCUSDT."""
    rows = [{"symbol": "BTCUSDT", "window_start": HOUR + timedelta(hours=i), "tick_count": 3,
             "window_end": HOUR + timedelta(hours=i + 1), "is_final": final, "revision": revision,
             "updated_at": HOUR, "date": date(2025, 2, 14)} for i, (final, revision) in enumerate(lifecycle)]
    write(settings, HOURLY_DATASET, HOURLY_COLUMNS + HOURLY_LIFECYCLE_COLUMNS, HOURLY_PARTITION_COLUMNS, rows)


def record_batches(settings: Settings, batches: list[dict[str, int]]) -> ProgressWriter:
    """The job's progress document after `batches` (the counts its batch function notes)."""
    writer = ProgressWriter(settings)
    writer.mark_started(INGEST_QUERY)
    for batch_id, counts in enumerate(batches):
        writer.note_batch(INGEST_QUERY, batch_id, counts)
        writer.record({"name": INGEST_QUERY, "batchId": batch_id, "numInputRows": counts["input_rows"],
                       "inputRowsPerSecond": 1500.0, "processedRowsPerSecond": 2500.5,
                       "durationMs": {"triggerExecution": 812}})
    return writer


def write_checkpoint(settings: Settings, offsets: dict[int, dict[int, int]], commits: list[int]) -> None:
    """Spark's checkpoint of the ingest query: offsets/<batch> ("v1", metadata, one line per source), commits/<batch>."""
    fs = storage_filesystem(settings)
    checkpoint = storage_path(settings, CHECKPOINTS_DIR, "ingest")
    for folder in ("offsets", "commits"):
        fs.makedirs(f"{checkpoint}/{folder}", exist_ok=True)
    for batch, by_partition in offsets.items():
        source = {settings.topic: {str(p): o for p, o in by_partition.items()}}
        fs.pipe_file(f"{checkpoint}/offsets/{batch}",
                     f'v1\n{{"batchWatermarkMs":0,"batchTimestampMs":0,"conf":{{}}}}\n{json.dumps(source)}'.encode())
    for batch in commits:
        fs.pipe_file(f"{checkpoint}/commits/{batch}", b'v1\n{"nextBatchWatermarkMs":0}')


def test_tables_show_version_files_rows_and_last_commit_from_the_delta_log_alone(settings: Settings) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    write_raw(settings, [0, 0, 1])  # version 0: two (date, hour) partitions, so two files
    write_raw(settings, [2, 2])  # version 1: one more file
    write_hourly(settings, [(True, 1)])
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    for data_file in Path(settings.storage_path, RAW_DATASET).rglob("*.parquet"):
        data_file.unlink()  # the log alone must answer: no data file is read

    report = status.status_report(settings, topic=TOPIC)

    tables = {t.name: t for t in report.tables}
    raw = tables[RAW_DATASET]
    assert (raw.version, raw.files, raw.rows) == (1, 3, 5)
    assert raw.last_commit is not None and before <= raw.last_commit <= after
    assert (tables[HOURLY_DATASET].version, tables[HOURLY_DATASET].files, tables[HOURLY_DATASET].rows) == (0, 1, 1)
    assert tables[QUARANTINE_DATASET].version is None
    lines = status.format_tables(report.tables).splitlines()
    assert lines[1].split()[:4] == ["raw_data", "1", "3", "5"]
    assert lines[3].split() == ["quarantine", "no", "table", "yet"]


def test_hourly_rows_open_final_revised_and_the_jobs_hourly_totals(settings: Settings) -> None:
    assert status.status_report(settings, topic=TOPIC).hourly.open_rows is None  # no table yet
    write_hourly(settings, [(True, 1), (True, 2), (True, 3), (True, 1), (False, 1), (False, 1)])
    record_batches(settings, [
        {"input_rows": 10, "hourly_opened": 6, "hourly_updated": 4, "hourly_finalised": 4},
        {"input_rows": 3, "hourly_updated": 3, "hourly_revised": 3},
    ])

    hourly = status.status_report(settings, topic=TOPIC).hourly

    assert (hourly.open_rows, hourly.final_rows, hourly.revised_rows) == (2, 4, 2)
    assert (hourly.opened_total, hourly.updated_total, hourly.finalised_total, hourly.revised_total) == (6, 7, 4, 3)
    assert status.format_hourly(hourly).splitlines()[0] == "hourly rows: 2 open, 4 final, 2 revised (changed after final)"


def test_query_totals_rates_and_kafka_lag_behind_the_topic_end(settings: Settings) -> None:
    record_batches(settings, [
        {"input_rows": 100, "quarantined_rows": 2, "late_rows": 7, "inserted_rows": 90, "duplicate_rows": 1},
        {"input_rows": 60, "quarantined_rows": 1, "late_rows": 3, "inserted_rows": 55, "duplicate_rows": 4},
    ])
    # Batch 1 planned but not committed: the lag counts from batch 0's end offsets; partition 2
    # has no offset yet, so it counts from the topic's first offset (5: older records expired).
    write_checkpoint(settings, {0: {0: 40, 1: 50}, 1: {0: 90, 1: 50}}, commits=[0])

    (query,) = status.status_report(settings, topic=TOPIC).queries

    assert query.name == INGEST_QUERY and query.state == "running" and query.last_batch_id == 1
    assert (query.input_rows_per_s, query.processed_rows_per_s, query.batch_duration_ms) == (1500.0, 2500.5, 812)
    assert query.lag_offsets == (100 - 40) + (50 - 50) + (30 - 5)
    assert (query.inserted_rows_total, query.duplicate_rows_total, query.late_rows_total,
            query.quarantined_rows_total) == (145, 5, 10, 3)
    lines = status.format_queries([query]).splitlines()
    assert lines[1].split() == ["btcstream_ingest", "running", "1", "1,500.0", "2,500.5", "812", "85", "10", "3"]
    assert lines[2] == "  raw_data: 145 ticks inserted, 5 duplicates skipped"


def test_states_never_started_stale_stopped_and_failed_with_its_error(settings: Settings) -> None:
    (query,) = status.status_report(settings, topic=TOPIC).queries
    assert query.state == "never started" and query.lag_offsets == 100 + 50 + 25  # the whole topic ahead

    writer = record_batches(settings, [{"input_rows": 5}])
    now = datetime.now(timezone.utc)
    assert status.status_report(settings, now=now, topic=TOPIC).queries[0].state == "running"
    stale = now + timedelta(seconds=status.STALE_AFTER_S + 1)  # no progress, no idle event: not running
    assert status.status_report(settings, now=stale, topic=TOPIC).queries[0].state == "stopped"

    writer.mark_stopped(INGEST_QUERY, None)
    assert status.status_report(settings, topic=TOPIC).queries[0].state == "stopped"
    writer.mark_stopped(INGEST_QUERY, "StreamingQueryException: [DELTA_CONCURRENT_APPEND] boom\n\tat org.apache...")
    report = status.status_report(settings, topic=TOPIC)
    assert report.queries[0].state == "failed"
    assert status.format_queries(report.queries).splitlines()[4] == (
        "  error: StreamingQueryException: [DELTA_CONCURRENT_APPEND] boom")


def test_restarts_after_failures_are_counted_with_the_last_reason(settings: Settings) -> None:
    writer = record_batches(settings, [{"input_rows": 5}])
    writer.mark_stopped(INGEST_QUERY, "java.net.ConnectException: Connection refused")
    writer.note_restart(INGEST_QUERY, "java.net.ConnectException: Connection refused")
    writer.mark_started(INGEST_QUERY)
    writer.note_restart(INGEST_QUERY, "java.io.EOFException: End of File Exception between local host and NameNode")
    writer.record({"name": INGEST_QUERY, "batchId": 1, "numInputRows": 3})  # runs again
    (query,) = status.status_report(settings, topic=TOPIC).queries
    assert query.state == "running" and query.restarts == 2
    assert "restarted 2 time(s) after a failure; last: java.io.EOFException" in status.format_queries([query])


def test_the_last_batch_shows_where_its_time_went(settings: Settings) -> None:
    writer = record_batches(settings, [{"input_rows": 10}])
    writer.note_batch(INGEST_QUERY, 1, {"input_rows": 5}, {"clock": 0, "tables": 4200, "hourly": 7340, "forecasts": 90,
                                                           "alerts": 1010})
    writer.record({"name": INGEST_QUERY, "batchId": 1, "numInputRows": 5, "durationMs": {"triggerExecution": 12700}})

    query = status.status_report(settings, topic=TOPIC).queries[0]

    assert query.stage_ms == {"clock": 0, "tables": 4200, "hourly": 7340, "forecasts": 90, "alerts": 1010}
    assert ("last batch: clock 0.0 s, tables 4.2 s, hourly 7.3 s, forecasts 0.1 s, alerts 1.0 s"
            in status.format_queries([query]))


def test_json_is_one_object_of_tables_queries_and_hourly(settings: Settings) -> None:
    write_raw(settings, [0])
    record_batches(settings, [{"input_rows": 1, "inserted_rows": 1}])

    document = json.loads(status.status_report(settings, topic=TOPIC).to_json())

    assert set(document) == {"tables", "queries", "hourly", "feed", "signals", "warnings"}
    raw = next(t for t in document["tables"] if t["name"] == RAW_DATASET)
    assert (raw["version"], raw["files"], raw["rows"]) == (0, 1, 1)
    assert datetime.fromisoformat(raw["last_commit"]).utcoffset() == timedelta(0)
    assert document["queries"][0]["inserted_rows_total"] == 1 and document["queries"][0]["lag_offsets"] == 175
    assert document["hourly"]["open_rows"] is None and document["warnings"] == []


def test_the_tables_fit_120_columns_with_large_numbers() -> None:
    """A year of ticks at 1,000/s (eleven digits), a lag of a billion offsets, a long error."""
    year = 31_536_000_000
    big = status.QueryStatus(INGEST_QUERY, "never started", None, 9_999_999, 9_999_999.9, 9_999_999.9, 9_999_999,
                             999_999_999, year, year, year, year, error="x" * 300)
    report = status.StatusReport(
        tables=[status.TableStatus(RAW_DATASET, 9_999_999, 9_999_999, year, datetime.now(timezone.utc))],
        queries=[big], hourly=status.HourlyStatus(9_999_999, 9_999_999, 9_999_999, year, year, year, year))
    assert max(len(line) for line in status.format_report(report).splitlines()) <= status.WIDTH


def status_command(settings: Settings, *arguments: str) -> int:
    """`btcstream status ...` as the CLI parses and runs it (cli.main adds only the one-line error print)."""
    import argparse

    from btcstream.commands import status as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["status", *arguments])
    return args.func(args, settings)


@pytest.mark.parametrize("broker", ["nothing listens", "not a Kafka broker"])
def test_unreachable_kafka_still_shows_the_tables_with_one_warning(settings: Settings, broker: str, monkeypatch,
                                                                   capsys, caplog) -> None:
    write_raw(settings, [0, 1])
    record_batches(settings, [{"input_rows": 2}])
    monkeypatch.setattr(status, "KAFKA_TIMEOUT_MS", 1_000)
    caplog.set_level(logging.DEBUG)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = 1 if broker == "nothing listens" else silent.getsockname()[1]

        code = status_command(replace(settings, kafka_bootstrap=f"localhost:{port}"))

    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.strip().splitlines() == [captured.err.strip()]
    assert f"cannot reach Kafka at localhost:{port}" in captured.err and "lag unknown" in captured.err
    assert not [r for r in caplog.records if r.name.startswith("kafka")]  # no library noise on stderr
    raw_line = next(line for line in captured.out.splitlines() if line.startswith(RAW_DATASET))
    assert raw_line.split()[1:4] == ["0", "2", "2"]  # version 0: one commit of two files
    query_line = next(line for line in captured.out.splitlines() if line.startswith(INGEST_QUERY))
    assert query_line.split()[6] == "-"  # the lag


def test_an_old_file_sink_root_stops_with_the_one_line_migrate_error(settings: Settings) -> None:
    write_raw(settings, [0])
    Path(settings.storage_path, QUARANTINE_DATASET, LEGACY_SINK_LOG_DIR).mkdir(parents=True)  # no _delta_log

    with pytest.raises(LegacyLayout) as raised:
        status_command(settings, "--json")

    message = str(raised.value)
    assert len(message.splitlines()) == 1 and "quarantine" in message and "`btcstream migrate`" in message


def test_an_unreachable_hdfs_root_is_one_line_naming_the_root_and_the_fix() -> None:
    nowhere = Settings(storage_root="hdfs://localhost:1/bitcoin", webhdfs_port=1)  # neither RPC nor WebHDFS answers

    with pytest.raises(StorageReadError) as raised:
        status.status_report(nowhere, topic=TOPIC)

    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert "hdfs://localhost:1/bitcoin" in message and "`btcstream infra up`" in message


def test_quarantine_table_counts_like_the_others(settings: Settings) -> None:
    rows = [{"value": b"\xff\xfe", "value_preview": "\ufffd\ufffd", "reason": "unparseable JSON", "topic": "ticks",
             "partition": 0, "offset": i, "kafka_timestamp": HOUR, "detected_at": HOUR, "date": date(2025, 2, 14)}
            for i in range(4)]
    write(settings, QUARANTINE_DATASET, QUARANTINE_COLUMNS, QUARANTINE_PARTITION_COLUMNS, rows)
    quarantine = status.table_status(settings, QUARANTINE_DATASET)
    assert (quarantine.version, quarantine.files, quarantine.rows) == (0, 1, 4)


@pytest.mark.integration
def test_status_on_the_real_stack_reads_the_hdfs_tables_and_the_brokers_lag(test_settings: Settings) -> None:
    """The same numbers with the tables on HDFS (delta-rs over RPC, progress and checkpoint over WebHDFS)
    and the lag from the real broker's end offsets."""
    from kafka import KafkaProducer

    from btcstream.clients.kafka import kafka_python_options
    from btcstream.ingest.publisher import ensure_topic

    settings = test_settings.replace(topic_partitions=3)
    ensure_topic(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    for partition, count in ((0, 10), (1, 5)):
        for i in range(count):
            producer.send(settings.topic, value=b"{}", partition=partition)
    producer.flush()
    producer.close()
    write_raw(settings, [0, 0, 1])
    write_hourly(settings, [(True, 2), (False, 1)])
    record_batches(settings, [{"input_rows": 4, "inserted_rows": 3, "quarantined_rows": 1}])
    write_checkpoint(settings, {0: {0: 4, 1: 0, 2: 0}}, commits=[0])

    report = status.status_report(settings)

    assert report.warnings == []
    tables = {t.name: t for t in report.tables}
    assert (tables[RAW_DATASET].version, tables[RAW_DATASET].files, tables[RAW_DATASET].rows) == (0, 2, 3)
    assert tables[QUARANTINE_DATASET].version is None
    (query,) = report.queries
    assert query.state == "running" and query.lag_offsets == (10 - 4) + (5 - 0)
    assert (query.inserted_rows_total, query.quarantined_rows_total) == (3, 1)
    assert (report.hourly.open_rows, report.hourly.final_rows, report.hourly.revised_rows) == (1, 1, 1)


def test_the_websocket_feed_counts_and_gaps_are_shown_when_a_producer_wrote_them(settings: Settings) -> None:
    from btcstream.ingest.feed_status import write_feed_status

    now = datetime(2025, 2, 14, 12, tzinfo=timezone.utc)
    assert status.status_report(settings, now, TOPIC).feed is None  # no WebSocket producer ran here
    write_feed_status(settings, {
        "version": 1, "feed": "websocket", "state": "running", "written_at": (now - timedelta(seconds=3)).isoformat(),
        "counts": {"received": {"quote": 1_000, "ticker": 40, "trade": 300}, "sent": {"quote": 700, "trade": 295,
                                                                                     "trade_rest": 5},
                   "conflated": 290, "held": 0, "overflowed": {"quote": 10, "trade": 5}, "malformed": {"json": 2}},
        "connections": {"reconnects": {"closed": 2, "stale": 1}},
        "gaps": {"total": {"downtime": 1, "trade_ids": 1}, "unfilled_trade_gaps": 0, "missing_trade_ids": 0,
                 "recent": [{"symbol": "BTCUSDT", "kind": "trade_ids", "from_id": 41, "to_id": 45,
                             "start": "2025-02-14T11:59:00+00:00", "duration_s": 2.5, "filled": True}]},
    })
    report = status.status_report(settings, now, TOPIC)
    feed = report.feed
    assert feed is not None and feed.state == "running"
    assert feed.received_quotes == feed.sent_quotes + feed.conflated + 10  # the counts add up
    assert (feed.sent_trades, feed.overflowed, feed.malformed, feed.reconnects) == (300, 15, 2, 3)
    text = status.format_report(report)
    assert "websocket feed: running" in text and "BTCUSDT trade_ids ids 41-45, 2.5 s" in text
    assert all(len(line) <= status.WIDTH for line in text.splitlines())
    assert json.loads(report.to_json())["feed"]["gaps"] == {"downtime": 1, "trade_ids": 1}
    # A producer that stopped writing long ago is not shown as running.
    assert status.feed_status(settings, now + timedelta(hours=1)).state.startswith("silent")


def test_forecasts_per_model_and_the_latest_alerts_with_the_jobs_totals(settings: Settings) -> None:
    from btcstream.names import ALERTS_COLUMNS, ALERTS_DATASET, FORECASTS_COLUMNS, FORECASTS_DATASET

    def forecast(model: str, hour: int, value: float, realized: float | None) -> dict:
        return {"symbol": "BTCUSDT", "model": model, "made_at": HOUR, "for_hour": HOUR + timedelta(hours=hour),
                "value": value, "realized": realized, "updated_at": HOUR}

    forecasts = [forecast("ewma", 1, 0.01, 0.02), forecast("ewma", 2, 0.01, 0.01), forecast("ewma", 3, 0.01, None),
                 forecast("har_rv", 3, 0.02, None)]
    types = {"symbol": pa.string(), "model": pa.string(), "metric": pa.string(), "date": pa.date32()}
    table = pa.table({name: pa.array([row[name] for row in forecasts],
                                     type=UTC if name in ("made_at", "for_hour", "updated_at") else types.get(name, pa.float64()))
                      for name in FORECASTS_COLUMNS})
    from deltalake import write_deltalake

    write_deltalake(settings.storage_url(FORECASTS_DATASET), table)
    alerts = [{"symbol": "BTCUSDT", "time": HOUR + timedelta(minutes=m), "metric": "spread_bps", "value": 40.0 + m,
               "baseline": 1.0, "mad": 0.1, "z": 260.0, "detected_at": HOUR, "date": date(2025, 2, 14)} for m in range(7)]
    write_deltalake(settings.storage_url(ALERTS_DATASET),
                    pa.table({name: pa.array([row[name] for row in alerts],
                                             type=UTC if name in ("time", "detected_at") else types.get(name, pa.float64()))
                              for name in (*ALERTS_COLUMNS, "date")}), partition_by=["date"])
    record_batches(settings, [{"input_rows": 5, "forecasts_written": 4, "alerts_raised": 7, "alert_late_bars": 2}])

    report = status.status_report(settings, topic=TOPIC)
    signals = report.signals
    assert (signals.forecasts_written_total, signals.alerts_raised_total, signals.alert_late_bars_total) == (4, 7, 2)
    ewma = next(m for m in signals.models if m["model"] == "ewma")
    assert (ewma["forecasts"], ewma["scored"]) == (3, 2)
    ratio = (0.02 / 0.01) ** 2  # QLIKE on variances: r/f - ln(r/f) - 1; the second forecast was exact (0)
    assert ewma["qlike"] == pytest.approx((ratio - math.log(ratio) - 1) / 2)
    assert [a["value"] for a in signals.recent_alerts] == [46.0, 45.0, 44.0, 43.0, 42.0]  # newest first, five
    text = status.format_report(report)
    assert "ewma" in text and "3 forecasts, 2 scored" in text and "7 raised since the job started" in text
    assert "2025-02-14 10:06 UTC BTCUSDT spread_bps 46" in text
    assert all(len(line) <= status.WIDTH for line in text.splitlines())
    document = json.loads(report.to_json())
    assert document["signals"]["recent_alerts"][0]["time"] == "2025-02-14T10:06:00+00:00"


def test_a_progress_document_that_stays_torn_is_a_warning_and_the_other_queries_still_show(monkeypatch) -> None:
    settings = Settings(storage_root="file:///nowhere")
    documents = {name: {"totals": {"batches": 1}} for name in status.QUERY_NAMES}
    torn = status.QUERY_NAMES[0]

    def read(settings_: Settings, name: str):
        if name == torn:
            raise StorageReadError(f"the progress document /x/{name}.json could not be read after 6 attempts: torn")
        return documents[name]

    monkeypatch.setattr(status, "read_progress", read)
    found, warnings = status._progress_documents(settings)
    assert found[torn] is None and all(found[name] == documents[name] for name in status.QUERY_NAMES if name != torn)
    assert warnings == [f"the progress document /x/{torn}.json could not be read after 6 attempts: torn"]
