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
from btcstream.tick import Tick, iso_utc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DRIVER_TIMEOUT_S = 420
FIRST_TICK = datetime(2025, 2, 14, 10, 0, tzinfo=timezone.utc)
TICK_EVERY = timedelta(minutes=5)
TICK_COUNT = 42  # 10:00 .. 13:25: the watermark (10 min lateness) closes hours 10, 11 and 12


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
    env.update({"BTCSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BTCSTREAM_TOPIC": settings.topic,
                "BTCSTREAM_STORAGE_ROOT": settings.storage_root, "BTCSTREAM_SPARK_MASTER": settings.spark_master,
                "BTCSTREAM_STATE_DIR": str(settings.state_dir), "BTCSTREAM_CACHE_DIR": str(settings.cache_dir),
                "SPARK_LOCAL_IP": "127.0.0.1",
                "PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false pyspark-shell"})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env, timeout=DRIVER_TIMEOUT_S)
    assert done.returncode == 0, f"driver on {settings.spark_master} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


KAFKA_TO_HDFS = """
    import json, sys
    from pyspark.sql import functions as F
    from btcstream.settings import load_settings
    from btcstream.spark import spark_session
    from btcstream.kafka_security import spark_kafka_options
    settings = load_settings()
    spark = spark_session(settings, "btcstream-kafka-batch")
    # Reading Kafka and writing HDFS both happen in executor tasks: the connector jars must have
    # been shipped to the executors by the driver (spark.jars).
    rows = (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .options(**spark_kafka_options(settings)).option("subscribe", settings.topic)
            .option("startingOffsets", "earliest").load())
    target = settings.storage_url("kafka_copy")
    rows.select(F.col("key").cast("string").alias("symbol"), F.col("value").cast("string").alias("json")) \\
        .write.mode("overwrite").parquet(target)
    copied = spark.read.parquet(target)
    block_managers = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    print(json.dumps({"master": spark.sparkContext.master, "rows": copied.count(),
                      "symbols": sorted({r.symbol for r in copied.select("symbol").collect()}),
                      "block_managers": block_managers}))
    spark.stop()
"""


def test_kafka_source_and_hdfs_sink_run_on_standalone_executors(standalone, test_settings):
    records = ticks()
    produce(test_settings, records)
    settings = test_settings.replace(spark_master=standalone.master_url)

    result = run_driver(KAFKA_TO_HDFS, settings)

    assert result["master"] == standalone.master_url
    assert result["rows"] == len(records)
    assert result["symbols"] == ["BTCUSDT"]
    assert result["block_managers"] >= 2  # the driver's and at least one executor's
    assert "btcstream-kafka-batch" in standalone.status().completed_apps
