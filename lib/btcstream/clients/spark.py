"""The one place a SparkSession is built: Kafka connector and Delta Lake on the classpath, UTC, quiet logs.

Every component (streaming job, readers, notebooks, tests) calls `spark_session(settings)`.
The Kafka connector and Delta Lake (`io.delta:delta-spark_2.13`, matching the pinned `delta-spark`
Python package) come from the local jar cache (`btcstream.infra.artifacts`), so once the jars
are resolved no network is needed.

Listeners: the driver's RPC endpoint and block manager bind to `bind_host`
(`spark.driver.bindAddress`; `spark.driver.host` is what executors connect back to), and its web
UI (4040...) to SPARK_LOCAL_IP, which Spark 4.2 reads from the JVM's environment only (unset: every
interface), so the JVM is started with SPARK_LOCAL_IP=`bind_host`. A wildcard `bind_host` leaves
both Spark defaults (the driver advertises this machine's address, the UI binds every interface).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from btcstream.errors import SparkSessionError
from btcstream.infra import addresses, artifacts
from btcstream.settings import Settings

if TYPE_CHECKING:  # pyspark loads inside spark_session, not when this module is imported
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SPARK_LOG_LEVEL = "WARN"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# Options of the driver and executor JVMs. HotSpot never JIT-compiles a method of more than 8,000
# bytes of bytecode (`DontCompileHugeMethods`, on by default): it interprets it, every call. Spark's
# whole-stage code generation fuses a query stage into one Java method and only gives up above
# 65,535 bytes (`spark.sql.codegen.hugeMethodLimit`), so a wide stage (the job's classification of
# the Kafka records: two JSON schemas, a dozen refusal checks, the typed quote and trade structs)
# ran interpreted. Letting HotSpot compile huge methods: 500,000 records classified in 3.5 s instead
# of 8.0 s (min of 3, bench/results/streaming.md, 2026-12-03).
JVM_OPTIONS = "-Duser.timezone=UTC -XX:-DontCompileHugeMethods"


def shuffle_partitions(master: str) -> int:
    """Tasks after a shuffle: one per local core (at most 8), else 4.

    Every stateful partition loads and commits its state-store files in every batch, so a tiny
    live batch pays per partition: at a 1 s trigger with all three queries, 2 partitions instead
    of 4 cut the raw query's median batch from 1.47-1.65 s to 1.27-1.31 s on 2 cores. A
    checkpoint keeps the number it was created with (Spark records it in the offset log).
    """
    if master == "local":
        return 1
    match = re.fullmatch(r"local\[(\*|\d+)(,\d+)?\]", master)
    if not match:
        return 4
    cores = (os.cpu_count() or 1) if match.group(1) == "*" else int(match.group(1))
    return max(1, min(cores, 8))


def driver_bind_conf(settings: Settings) -> dict[str, str]:
    """Spark settings placing the driver's RPC endpoint and block manager on `bind_host`."""
    if addresses.is_wildcard(settings.bind_host):
        return {"spark.driver.bindAddress": settings.bind_host}
    return {"spark.driver.bindAddress": settings.bind_host, "spark.driver.host": settings.bind_host}


def driver_environment(settings: Settings) -> dict[str, str]:
    """Variables the driver JVM is started with: SPARK_LOCAL_IP places the web UI (none for a wildcard)."""
    return {} if addresses.is_wildcard(settings.bind_host) else {"SPARK_LOCAL_IP": settings.bind_host}


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Set `variables` in os.environ for the block (a JVM started in it inherits them), then restore."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def spark_session(settings: Settings, app_name: str = "btcstream", *, with_kafka: bool = True,
                  extra_conf: dict[str, str] | None = None, jvm_log: Path | None = None) -> SparkSession:
    """Get or create the SparkSession for `settings`.

    `jvm_log`: when this call starts the JVM, its own console output (the launcher's notes,
    log4j's console appender: start-up warnings, later WARN/ERROR lines) is appended to this file
    instead of this process's stdout/stderr, where a Jupyter kernel would show it as a red stderr
    block under the cell. The JVM keeps writing there for its whole life.

    `with_kafka=False` does not require the connector and Delta (pure DataFrame work needs no
    jars), but still puts them on the classpath when they are already resolved: configuration only takes effect
    on the first call in a process (a running SparkContext keeps its classpath), and a later
    caller in the same process may need Kafka. A running session without the connector asked for
    Kafka raises a clear error instead of failing later with "Failed to find data source: kafka".
    """
    # Spark's Python workers must run the same interpreter (with pandas/pyarrow) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.executor.extraJavaOptions", JVM_OPTIONS)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions(settings.spark_master)))
        # Delta rebuilds a table's snapshot from its log with a Spark job of 50 partitions by
        # default; our tables' logs are small and the job reads them in every micro-batch. One
        # partition per core: a live batch (upsert of 6 hourly rows) 15-30 s -> 5.5-7 s on 2 loaded
        # cores (IngestBatch timed step by step on batches of 120 ticks; docs/streaming.md).
        .config("spark.databricks.delta.snapshotPartitions", str(shuffle_partitions(settings.spark_master)))
        # A 1 s trigger adds a few small files to the hour's partition in every batch, and each
        # batch's duplicate check reads that partition: without compaction a live hour would grow to
        # thousands of files and the batches slow down as the hour goes on. Delta's auto compaction
        # (a post-commit OPTIMIZE of partitions holding >= 50 small files, committed as
        # OPTIMIZE with auto=true) keeps it bounded; `btcstream compact` remains for the rest.
        .config("spark.databricks.delta.autoCompact.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # Stateful queries here (notebook 02's windowed views; the job itself keeps no state: it
        # deduplicates against the Delta table) hold little state, bounded by their watermarks,
        # so the in-memory provider fits and was faster than RocksDB (bench/results/state_store.md).
        # A checkpoint keeps the provider it was created with (Spark records it in the offset log).
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider")
        # A partitioned file write keeps up to 16 files open per task instead of sorting the task's
        # rows by partition first (more partitions than that fall back to the sort). Raw query
        # draining a backlog (bench/results/stages.md): 32.8k against 28.6k ticks/s with 4 shuffle
        # partitions (clusters), no difference with 2 (40.9k against 40.1k).
        .config("spark.sql.maxConcurrentOutputFileWriters", "16")
        # HDFS on one machine has one DataNode: never wait for replicas that cannot exist.
        .config("spark.hadoop.dfs.replication", "1")
        .config("spark.hadoop.dfs.client.block.write.replace-datanode-on-failure.policy", "NEVER")
        # Closing an HDFS file asks the NameNode to complete it; until the DataNode has reported
        # the last block (tens of ms here) the answer is "not yet", and the client waits 400 ms
        # before asking again. Every Delta commit closes a commit file and every Parquet file, so
        # a live micro-batch paid that wait several times: 20 ms first (doubling, 10 tries: still
        # ~20 s in all before giving up, above the default's 12 s) took a small file's write+close
        # from 0.42 s to 0.01-0.05 s, a live batch from 6.6 s to 4.4 s and raw latency p95 from
        # 8.9 s to 6.1 s (bench/results/streaming.md, 2026-12-02).
        .config("spark.hadoop.dfs.client.block.write.locateFollowingBlock.initial.delay.ms", "20")
        .config("spark.hadoop.dfs.client.block.write.locateFollowingBlock.retries", "10")
    )
    if with_kafka or all(artifacts.is_resolved(settings, c) for c in artifacts.SPARK_COMPONENTS):
        builder = (builder.config("spark.jars", ",".join(str(j) for j in artifacts.spark_jars(settings)))
                   # Delta Lake tables: its SQL (MERGE, OPTIMIZE, VACUUM, time travel) and its catalog.
                   .config("spark.sql.extensions", DELTA_EXTENSION)
                   .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG))
    for key, value in {**driver_bind_conf(settings), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    with environment(driver_environment(settings)):
        if jvm_log is not None:
            with console_output_to(jvm_log):
                session = builder.getOrCreate()
            log.info("Spark's own log: %s", jvm_log)
        else:
            session = builder.getOrCreate()
    session.sparkContext.setLogLevel(SPARK_LOG_LEVEL)
    if with_kafka and "spark-sql-kafka" not in session.sparkContext.getConf().get("spark.jars", ""):
        raise SparkSessionError(
            "this process already runs a SparkSession without Spark's Kafka connector; restart the kernel "
            "(or process) and call btcstream.clients.spark.spark_session before anything else creates a session")
    return session


def jvm_log_file(settings: Settings, app_name: str) -> Path:
    """Where a session started for `app_name` with its output kept out of the console logs: under the state dir."""
    return settings.state_dir / "logs" / f"{app_name}.log"


@contextmanager
def console_output_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at `path` (appending) for the block: processes started in it keep the file.

    Python's own `sys.stdout`/`sys.stderr` objects in a Jupyter kernel write to the notebook, not
    to these descriptors, so cell output is unaffected; only child processes (the JVM) write here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 1)
            os.dup2(target.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for descriptor in saved:
            os.close(descriptor)
