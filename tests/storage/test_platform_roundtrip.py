"""The platform end to end: kafka-python -> Kafka -> Spark's Kafka source -> a Delta table on HDFS -> delta-rs.

The reading side runs in a separate Python process that never starts a JVM (delta-rs over HDFS
RPC + pyarrow), as notebooks and `btcstream data` do.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from btcstream.settings import Settings
from btcstream.clients.spark import spark_session

pytestmark = pytest.mark.integration

MESSAGES = [(f"BTCUSDT-{i}".encode(), json.dumps({"n": i, "bid_price": 97000.0 + i}).encode()) for i in range(25)]

_JVM_FREE_READER = """
import json, sys
from btcstream.settings import Settings
from btcstream.storage import readers
settings = Settings(storage_root=sys.argv[1])
files = readers.scanned_files(settings, "roundtrip")
rows = readers.read_dataset(settings, "roundtrip", None)
assert "pyspark" not in sys.modules and "py4j" not in sys.modules
print(json.dumps({"files": files, "values": sorted(rows["value"])}))
"""


def _produce(settings: Settings, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for key, value in MESSAGES:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=30)
    producer.close()


def _consume_all(settings: Settings, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    consumer.seek_to_beginning()
    values = [record.value for record in consumer]
    consumer.close()
    return values


def test_message_round_trips_through_kafka_and_survives_a_broker_restart(
        local_stack: Settings, fresh_topic: str, restart_kafka) -> None:
    _produce(local_stack, fresh_topic)
    assert sorted(_consume_all(local_stack, fresh_topic)) == sorted(v for _, v in MESSAGES)
    restart_kafka()
    assert sorted(_consume_all(local_stack, fresh_topic)) == sorted(v for _, v in MESSAGES)


def test_spark_reads_kafka_and_writes_delta_on_hdfs_read_back_without_a_jvm(
        test_settings: Settings) -> None:
    _produce(test_settings, test_settings.topic)
    spark = spark_session(test_settings.replace(spark_master="local[2]"), "platform-roundtrip")
    frame = (spark.read.format("kafka")
             .option("kafka.bootstrap.servers", test_settings.kafka_bootstrap)
             .option("subscribe", test_settings.topic)
             .option("startingOffsets", "earliest").load()
             .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "partition", "offset"))
    target = test_settings.storage_url("roundtrip")
    assert target.startswith("hdfs://localhost:9000/")
    frame.write.format("delta").mode("overwrite").save(target)
    assert spark.read.format("delta").load(target).count() == len(MESSAGES)

    # Several short reader processes through btcstream's reader: each must also *exit* cleanly
    # (Arrow threads calling into delta-rs' Python filesystem handler abort a short process at
    # exit now and then when a scan is multi-threaded; see readers._scan_pyarrow).
    for _ in range(8):
        done = subprocess.run([sys.executable, "-c", _JVM_FREE_READER, test_settings.storage_root],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["files"] and all(path.endswith(".parquet") for path in answer["files"])
        assert answer["values"] == sorted(v.decode() for _, v in MESSAGES)
