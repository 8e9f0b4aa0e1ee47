"""Cluster mode for real: a Spark standalone master and worker, the local Kafka and HDFS, and the
same code submitted to `spark://` as runs on `local[*]`.

Drivers run in their own processes (one JVM holds one SparkContext; other tests may own this
process's), bound to 127.0.0.1, with the Spark UI off so they never take the shared port 4040.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaProducer

from btcstream.infra.spark_standalone import StandaloneCluster
from btcstream.settings import Settings
from btcstream.ingest.tick import Tick, iso_utc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DRIVER_TIMEOUT_S = 420
FIRST_TICK = datetime(2025, 2, 14, 10, 0, tzinfo=timezone.utc)
TICK_EVERY = timedelta(minutes=5)
TICK_COUNT = 42  # 10:00 .. 13:25: hours 10, 11 and 12 final (10 min lateness), 13 in progress


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> StandaloneCluster:
    """One small standalone cluster (1 worker, 1 core, 1 GiB) for this module's tests."""
    with StandaloneCluster(tmp_path_factory.mktemp("spark-standalone"), cores=1, memory="1g") as cluster:
        yield cluster


def ticks() -> list[Tick]:
    """Deterministic BTCUSDT ticks every 5 minutes; prices wander so every hourly metric is non-trivial."""
    result = []
    for index in range(TICK_COUNT):
        moment = FIRST_TICK + index * TICK_EVERY
        mid = 97000.0 + 35.0 * ((index * 7) % 11) - 12.5 * (index % 4)
        spread = 0.5 + (index % 5) * 0.25
        result.append(Tick(symbol="BTCUSDT", event_time=iso_utc(moment), timestamp=iso_utc(moment + timedelta(seconds=1)),
                           bid_price=mid - spread / 2, ask_price=mid + spread / 2, bid_qty=0.1 + index % 3,
                           ask_qty=0.2 + index % 2, volume_24h=18000.0 + index, quote_volume_24h=1.7e9 + index * 1e5,
                           high_24h=97500.0, low_24h=96500.0, price_change_24h=10.0 * index,
                           price_change_percentage_24h=0.01 * index, trade_timestamp=iso_utc(moment),
                           market_cap=1.9e12, coingecko_total_volume=3.0e10, coingecko_last_updated=iso_utc(moment)))
    return result


def produce(settings: Settings, records: list[Tick]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for tick in records:
            producer.send(settings.topic, key=tick.symbol.encode(), value=tick.to_json())
        producer.flush(timeout=60)
    finally:
        producer.close()


def run_driver(script: str, settings: Settings, *args: str) -> dict:
    """Run a driver script with `settings` as BTCSTREAM_* variables; returns its last stdout line as JSON."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BTCSTREAM_")}
    env.update({"BTCSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BTCSTREAM_TOPIC": settings.topic, "BTCSTREAM_TRADES_TOPIC": settings.trades_topic,
                "BTCSTREAM_STORAGE_ROOT": settings.storage_root, "BTCSTREAM_SPARK_MASTER": settings.spark_master,
                "BTCSTREAM_STATE_DIR": str(settings.state_dir), "BTCSTREAM_CACHE_DIR": str(settings.cache_dir),
                "SPARK_LOCAL_IP": "127.0.0.1",
                "PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false pyspark-shell"})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env, timeout=DRIVER_TIMEOUT_S)
    assert done.returncode == 0, f"driver on {settings.spark_master} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


STREAMING_JOB = """
    import json, sys, time
    from btcstream import names
    from btcstream.settings import load_settings
    from btcstream.clients.spark import spark_session
    from btcstream.streaming import job
    settings = load_settings()
    expected_hours, timeout_s = int(sys.argv[1]), float(sys.argv[2])
    spark = spark_session(settings, sys.argv[3])

    def committed_rows(dataset):
        try:  # the Delta table's current version
            return spark.read.format("delta").load(settings.storage_url(dataset)).count()
        except Exception:  # not created yet
            return 0

    queries = job.start_queries(spark, settings, trigger_interval_s=1.0)
    started = time.monotonic()
    try:
        # Every hour has a row as soon as its first tick is stored (the hour in progress too).
        while committed_rows(names.HOURLY_DATASET) < expected_hours and time.monotonic() - started < timeout_s:
            for query in queries:
                query.processAllAvailable()
            time.sleep(1.0)
    finally:
        job.stop_queries(queries)
    print(json.dumps({"master": spark.sparkContext.master, "seconds": round(time.monotonic() - started, 1),
                      "executors": spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1,
                      "raw": committed_rows(names.RAW_DATASET), "hourly": committed_rows(names.HOURLY_DATASET),
                      "quarantine": committed_rows(names.QUARANTINE_DATASET)}))
    spark.stop()
"""
HOURS = 4  # 10:00, 11:00, 12:00 final; 13:00 live (the event clock, 13:25, is within its end + 10 min)


def test_streaming_job_on_standalone_writes_the_hourly_metrics_a_recomputation_gives(standalone, test_settings):
    """The job's query on `spark://`: the Kafka source and the Delta sink on HDFS run in the executor's
    tasks (the connector and Delta jars were shipped to it, spark.jars), and what it stores equals an
    independent pandas recomputation, as the local runs' values do in tests/streaming."""
    from btcstream.names import HOURLY_COLUMNS
    from btcstream.storage.readers import read_hourly_metrics, read_raw_ticks
    from helpers.hourly import assert_hourly_equal, independent_hourly

    records = ticks()
    produce(test_settings, records)
    settings = test_settings.replace(spark_master=standalone.master_url)
    result = run_driver(STREAMING_JOB, settings, str(HOURS), "300", "btcstream-stream-cluster")
    print("cluster-mode run:", result)

    assert result["master"] == standalone.master_url and result["executors"] == 1
    assert (result["raw"], result["hourly"], result["quarantine"]) == (len(records), HOURS, 0)
    assert "btcstream-stream-cluster" in standalone.status().completed_apps

    hourly = read_hourly_metrics(settings).sort_values(["symbol", "window_start"]).reset_index(drop=True)
    assert list(hourly["window_start"]) == [FIRST_TICK + timedelta(hours=h) for h in range(HOURS)]
    assert list(hourly["tick_count"]) == [12, 12, 12, 6]
    assert list(hourly["is_final"]) == [True, True, True, False]
    naive = hourly[list(HOURLY_COLUMNS)].assign(window_start=hourly["window_start"].dt.tz_convert(None),
                                                window_end=hourly["window_end"].dt.tz_convert(None))
    assert_hourly_equal(naive, independent_hourly(records, grid_seconds=int(settings.rv_grid_span.total_seconds())))
    raw = read_raw_ticks(settings).sort_values("event_time").reset_index(drop=True)
    assert list(raw["event_time"]) == [FIRST_TICK + i * TICK_EVERY for i in range(TICK_COUNT)]
    assert list(raw["bid_price"]) == [t.bid_price for t in records]
