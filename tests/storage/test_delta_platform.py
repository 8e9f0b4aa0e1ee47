"""Delta Lake on our stack: Spark (with the resolved delta-spark jars) writes on the real HDFS,
delta-rs (`deltalake`, no JVM) reads the same table natively over HDFS RPC.

What the Delta tables of the streaming job rely on, checked on the real NameNode and DataNode:
idempotent appends (`txnAppId` / `txnVersion`: a replayed micro-batch writes nothing twice),
`OPTIMIZE` that readers see as one consistent version, and time travel by version.
"""

from __future__ import annotations

import pytest

from btcstream.clients.spark import spark_session
from btcstream.settings import Settings

pytestmark = pytest.mark.integration

APP_ID = "btcstream-test-writer"
AUTO_COMPACT = "spark.databricks.delta.autoCompact.enabled"


def rows(spark, start: int, count: int):
    """`count` rows with ids from `start`, in three date partitions."""
    return spark.range(start, start + count).selectExpr(
        "id", "cast(id * 1.5 as double) as price", "concat('2025-02-1', cast(id % 3 as string)) as date")


@pytest.fixture
def spark_without_autocompact(test_settings: Settings):
    """The session with Delta's auto compaction off (the job's sessions turn it on), then back on.

    Taken from here, not from `spark_session` again: a second `spark_session` call re-applies the
    builder's settings to the running session, auto compaction included.
    """
    spark = spark_session(test_settings, "btcstream-test-delta")
    spark.conf.set(AUTO_COMPACT, "false")
    yield spark
    spark.conf.set(AUTO_COMPACT, "true")


def test_delta_on_hdfs_is_idempotent_compacts_and_reads_without_a_jvm(test_settings: Settings,
                                                                      spark_without_autocompact) -> None:
    from deltalake import DeltaTable

    spark = spark_without_autocompact  # commits are counted below: none may come from auto compaction
    url = test_settings.storage_url("delta_probe")

    def append(frame, batch_id: int) -> None:
        (frame.write.format("delta").mode("append").partitionBy("date")
         .option("txnAppId", APP_ID).option("txnVersion", batch_id).save(url))

    append(rows(spark, 0, 100), 0)
    append(rows(spark, 0, 100), 0)  # the same batch replayed after a crash: skipped
    append(rows(spark, 100, 50), 1)
    append(rows(spark, 100, 50), 1)
    assert spark.read.format("delta").load(url).count() == 150

    before = DeltaTable(url)
    assert before.version() == 1  # two commits: the replays added none
    spark.sql(f"OPTIMIZE delta.`{url}`")

    table = DeltaTable(url)  # JVM-free, over HDFS RPC (no WebHDFS)
    assert table.version() == 2
    assert len(table.file_uris()) == 3  # one file per date partition after OPTIMIZE
    ids = sorted(table.to_pyarrow_table().column("id").to_pylist())
    assert ids == list(range(150))
    spark_ids = sorted(r.id for r in spark.read.format("delta").load(url).select("id").collect())
    assert spark_ids == ids

    first = DeltaTable(url, version=0).to_pyarrow_table()
    assert sorted(first.column("id").to_pylist()) == list(range(100))
    assert spark.read.format("delta").option("versionAsOf", 0).load(url).count() == 100
