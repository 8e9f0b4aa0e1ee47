"""Benchmark of the Delta streaming job: backlog drain vs Spark batch, ticks lost, latency at a 1 s trigger.

One run on `local[2]` against the local Kafka and HDFS (`btcstream infra up`):

1. Warm-up (discarded): a small backlog drained by the job, then Spark's batch over it; without it,
   whichever of the two ran second was faster (bench/results/delta_batches.md).
2. Backlog drain: N ticks written as two interleaved writers leave a topic (out of event-time order,
   the second half hours ahead: `fill_topic(interleaved_writers=True)`). Per round, on a fresh
   storage root: the job's one query (`btcstream_ingest`) from query start until its checkpoint's
   committed offsets reach the topic end, and Spark's batch `from_json -> Parquet` over the same
   records; the order of the two alternates between rounds (`--repeats`). Ratio job / batch.
3. Ticks lost: N unique (symbol, event_time) keys sent - distinct keys in raw_data (must be 0),
   beside the job's late, duplicate and quarantined totals (its progress document).
4. Latency at a 1 s trigger, on a fresh topic and root with the job running: ticks stamped with
   now, sent at a steady rate; poller threads follow raw_data and hourly_metrics with delta-rs
   (`update_incremental` every ~100 ms) and read only the files each new version added. A tick is
   readable when its (symbol, event_time) is in such a file, and reflected in the hourly table when
   its (symbol, hour) row's tick_count reaches the tick's ordinal within that hour. p50/p95 of
   event_time -> readable / reflected, and of the job's batch durations (progress document).

`--conf key=value` (repeatable) sets Spark configuration, to compare settings run against run.

Run: `btcstream infra up`, then `python bench/bench_streaming.py [--ticks 2000000]`. Writes
bench/results/streaming.md (keeps its "## Notes"). Heavy (minutes of both cores): run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from btcstream import names
from btcstream.clients.kafka import kafka_python_options
from btcstream.clients.spark import spark_session
from btcstream.ingest import tick
from btcstream.settings import Settings, load_settings
from btcstream.storage import checkpoints
from btcstream.storage.filesystem import read_parquet, storage_filesystem
from btcstream.streaming import job
from btcstream.streaming.delta_batches import DeltaBatchWriter
from btcstream.streaming.progress import read_progress

log = logging.getLogger("bench_streaming")
RESULTS = Path(__file__).parent / "results" / "streaming.md"
NOTES_HEADING = "## Notes"
SYMBOL_COUNT = 21  # 7 per partition: every partition covers the same event time per offset
PARTITIONS = 3
INGEST_CHECKPOINT = names.CHECKPOINT_FOLDERS[names.INGEST_QUERY]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
HOUR_US = 3_600_000_000
LATENCY_SYMBOLS = 5


def write_results(path: Path, text: str) -> None:
    """Write a results file, keeping its hand-written "## Notes" section (run history, analysis)."""
    previous = path.read_text() if path.exists() else ""
    notes = previous[previous.index(NOTES_HEADING):] if NOTES_HEADING in previous else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n" + (f"\n{notes.rstrip()}\n" if notes else ""))


def bench_settings(name: str):
    """Set up logging; settings of one run: a fresh topic of PARTITIONS partitions and storage root."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    run = uuid.uuid4().hex[:8]
    base = load_settings()
    settings = base.replace(spark_master="local[2]", trigger_interval_s=1.0,
                            storage_root=base.storage_url("bench", f"{name}-{run}"))
    return fresh_topic(settings, f"bench-{name}-{run}")


def fresh_topic(settings: Settings, topic: str) -> Settings:
    """`settings` with a newly created topic of PARTITIONS partitions."""
    settings = settings.replace(topic=topic, trades_topic=f"{topic}-trades")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    try:
        admin.create_topics([NewTopic(settings.topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()
    return settings


def fill_topic(spark, settings, count: int, *, interleaved_writers: bool = False) -> None:
    """Write `count` tick JSON values to the topic with Spark (keyed by symbol).

    `interleaved_writers`: record i carries the event time of tick `(i % 2) * count/2 + i // 2`,
    as two writers would leave the topic, each in its own order, the second half hours ahead
    (`count` even: every tick index, hence every (symbol, event_time) key, exactly once).
    """
    from pyspark.sql import functions as F

    base = int(datetime(2025, 2, 14, tzinfo=timezone.utc).timestamp())
    ids = spark.range(count)
    tick_index = ((F.col("id") % 2) * (count // 2) + F.floor(F.col("id") / 2)) if interleaved_writers else F.col("id")
    symbol = F.concat(F.lit("SYM"), F.lpad((tick_index % SYMBOL_COUNT).cast("string"), 2, "0"), F.lit("USDT"))
    moment = F.date_format(F.timestamp_seconds(F.lit(base) + F.floor(tick_index / SYMBOL_COUNT)),
                           "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    mid = F.lit(100.0) + F.sin(tick_index / 1000.0) * 10 + (tick_index % SYMBOL_COUNT)
    fields = {name: F.lit(None).cast("double") for name in tick.FIELD_NAMES}
    fields.update(symbol=symbol, event_time=moment, timestamp=moment, bid_price=mid - 0.01, ask_price=mid + 0.01,
                  bid_qty=F.lit(1.5), ask_qty=F.lit(2.5), volume_24h=F.lit(18000.0), high_24h=mid + 5,
                  low_24h=mid - 5, trade_timestamp=moment, coingecko_last_updated=moment,
                  schema_version=F.lit(tick.SCHEMA_VERSION))
    values = F.to_json(F.struct(*[fields[name].alias(name) for name in tick.FIELD_NAMES]))
    partition = (tick_index % SYMBOL_COUNT % PARTITIONS).cast("int")
    # One writing task: each partition then holds its ticks in the order above (parallel tasks would
    # interleave the two halves of the range differently on every run).
    (ids.select(symbol.alias("key"), values.alias("value"), partition.alias("partition")).coalesce(1).write.format("kafka")
     .option("kafka.bootstrap.servers", settings.kafka_bootstrap).option("topic", settings.topic).save())


def end_offsets(settings) -> dict[int, int]:
    """Per partition, the topic's end offset."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
    try:
        parts = consumer.partitions_for_topic(settings.topic) or set()
        ends = consumer.end_offsets([TopicPartition(settings.topic, p) for p in parts])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def wait_drained(settings, checkpoint: str, ends: dict[int, int], timeout: float, query=None) -> float:
    """monotonic() when the checkpoint's committed offsets reached `ends`; raises if `query` stops first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            committed = checkpoints.committed_kafka_offsets(settings, checkpoint) or {}
        except (FileNotFoundError, IndexError, json.JSONDecodeError):
            committed = {}
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return time.monotonic()
        if query is not None and not query.isActive:
            raise RuntimeError(f"the job's query stopped before draining the topic: {_first_line(query.exception())}")
        time.sleep(0.25)
    raise TimeoutError(f"{checkpoint} did not drain within {timeout}s")


def batch_throughput(spark, settings, count: int) -> float:
    """Spark batch: read the same Kafka records, from_json, write Parquet; ticks/s."""
    from pyspark.sql import functions as F

    started = time.monotonic()
    records = (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
               .option("subscribe", settings.topic).option("startingOffsets", "earliest")
               .option("endingOffsets", "latest").load())
    parsed = records.select(F.from_json(F.col("value").cast("string"), tick.spark_schema()).alias("t")).select("t.*")
    parsed.write.mode("overwrite").parquet(settings.storage_url("batch_baseline"))
    return count / (time.monotonic() - started)


@dataclass
class Drain:
    """One backlog drain by the job on a fresh storage root."""

    seconds: float
    raw_rows: int
    raw_keys: int
    totals: dict[str, int]


def job_drain(spark, settings: Settings, ends: dict[int, int], trigger_s: float) -> Drain:
    """Start the job on `settings` (a fresh root), time it until the topic is drained, then count raw_data."""
    records = sum(ends.values())
    started = time.monotonic()
    queries = job.start_queries(spark, settings, queries=[names.INGEST_QUERY], trigger_interval_s=trigger_s)
    try:
        seconds = wait_drained(settings, INGEST_CHECKPOINT, ends, timeout=3600, query=queries[0]) - started
        totals = wait_progress_totals(settings, records)
    finally:
        job.stop_queries(queries)
    raw = spark.read.format("delta").load(settings.storage_url(names.RAW_DATASET))
    return Drain(seconds, raw.count(), raw.select("symbol", "event_time").distinct().count(), totals)


def wait_progress_totals(settings: Settings, records: int, timeout: float = 60.0) -> dict[str, int]:
    """The job's progress totals once they count `records` input rows (the listener writes them
    asynchronously after the batch commits); the latest totals seen if that takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    totals: dict[str, int] = {}
    while time.monotonic() < deadline:
        totals = ((read_progress(settings, names.INGEST_QUERY) or {}).get("totals")) or {}
        if totals.get("input_rows", 0) >= records:
            break
        time.sleep(0.5)
    else:
        log.warning("progress totals count %s input rows of %d", totals.get("input_rows"), records)
    return totals


@dataclass
class Round:
    """One measured round: the job's drain and the batch reference over the same records."""

    order: str
    drain: Drain
    batch_rate: float


def backlog_rounds(spark, settings: Settings, count: int, repeats: int, trigger_s: float) -> list[Round]:
    """`repeats` rounds over the filled topic, job and batch alternating which goes first."""
    ends = end_offsets(settings)
    rounds = []
    for number in range(repeats):
        order = ("job", "batch") if number % 2 == 0 else ("batch", "job")
        attempt = settings.replace(storage_root=settings.storage_url(f"round{number}"))
        results: dict[str, object] = {}
        for what in order:
            if what == "job":
                results["job"] = job_drain(spark, attempt, ends, trigger_s)
            else:
                results["batch"] = batch_throughput(spark, settings, count)
            log.info("round %d %s: %s", number, what, results[what])
        rounds.append(Round(" then ".join(order), results["job"], results["batch"]))
    return rounds


# --- latency -------------------------------------------------------------------------------------


def micros(moment: datetime) -> int:
    """Microseconds since the epoch of a tz-aware datetime (exact, no float rounding)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def _column_micros(column) -> list[int]:
    """An Arrow timestamp column as microseconds since the epoch."""
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0}[column.type.unit]
    values = column.cast("int64").to_pylist()
    return [v // 1_000 if scale == 0 else v * scale for v in values]


class TablePoller(threading.Thread):
    """Follows a Delta table with delta-rs: every `interval` s, when its version changed, stamps the
    moment and hands the files that version added (Arrow tables of `columns`) to `observe`."""

    def __init__(self, settings: Settings, dataset: str, columns: list[str], interval: float = 0.1) -> None:
        super().__init__(name=f"poll-{dataset}", daemon=True)
        self.url = settings.storage_url(dataset)
        self.fs = storage_filesystem(settings)
        self.columns = columns
        self.interval = interval
        self.stopping = threading.Event()
        self.observations: list[tuple[float, object]] = []  # (time.time() the version was seen, Arrow table)
        self.versions = 0
        self.error: BaseException | None = None
        from deltalake import DeltaTable

        self.table = DeltaTable(self.url)
        self.version = self.table.version()
        self.files = set(self.table.file_uris())  # present before the poll: never read

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.interval):
                self.table.update_incremental()
                if self.table.version() == self.version:
                    continue
                seen_at = time.time()
                self.version = self.table.version()
                self.versions += 1
                files = set(self.table.file_uris())
                for uri in sorted(files - self.files):
                    path = unquote(urlparse(uri).path)
                    self.observations.append((seen_at, read_parquet(self.fs, path, columns=self.columns)))
                self.files = files
        except BaseException as error:  # reported by the caller
            self.error = error

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"poller of {self.url} failed: {self.error}") from self.error


@dataclass
class Sent:
    """The ticks sent for the latency measurement: key -> send time, and ordinals within their hour."""

    at: dict[tuple[str, int], float] = field(default_factory=dict)  # (symbol, event_time us) -> event time (s)
    ordinal: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # key -> (hour us, n-th in it)
    per_hour: dict[tuple[str, int], int] = field(default_factory=dict)


def send_ticks(settings: Settings, seconds: float, rate: float, prefix: str, sent: Sent | None = None) -> None:
    """Send `rate` ticks/s stamped now for `seconds`, round robin over LATENCY_SYMBOLS symbols."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0, **kafka_python_options(settings))
    next_send = time.time()
    end = next_send + seconds
    index = 0
    try:
        while time.time() < end:
            now = datetime.now(timezone.utc)
            symbol = f"{prefix}{index % LATENCY_SYMBOLS:02d}USDT"
            if sent is not None:
                key = (symbol, micros(now))
                hour = key[1] - key[1] % HOUR_US
                sent.per_hour[(symbol, hour)] = sent.per_hour.get((symbol, hour), 0) + 1
                sent.at[key] = key[1] / 1e6
                sent.ordinal[key] = (hour, sent.per_hour[(symbol, hour)])
            value = tick.Tick(symbol, tick.iso_utc(now), tick.iso_utc(now), 100.0, 100.02, 1.0, 1.0).to_json()
            producer.send(settings.topic, key=symbol.encode(), value=value)
            index += 1
            next_send += 1.0 / rate
            time.sleep(max(0.0, next_send - time.time()))
        producer.flush()
    finally:
        producer.close()


def readable_latencies(sent: Sent, raw: TablePoller) -> list[float]:
    """Per sent tick seen in raw_data: when the poller first saw it - its event time (s)."""
    first_seen: dict[tuple[str, int], float] = {}
    for seen_at, table in raw.observations:
        for key in zip(table.column("symbol").to_pylist(), _column_micros(table.column("event_time"))):
            if key in sent.at and key not in first_seen:
                first_seen[key] = seen_at
    return [first_seen[key] - sent.at[key] for key in sent.at if key in first_seen]


def reflected_latencies(sent: Sent, hourly: TablePoller) -> list[float]:
    """Per sent tick: when its (symbol, hour) row's tick_count first reached the tick's ordinal - its event time."""
    reached: dict[tuple[str, int], list[tuple[float, int]]] = {}  # (symbol, hour) -> (seen at, tick_count)
    for seen_at, table in hourly.observations:
        for symbol, hour, count in zip(table.column("symbol").to_pylist(), _column_micros(table.column("window_start")),
                                       table.column("tick_count").to_pylist()):
            reached.setdefault((symbol, hour), []).append((seen_at, int(count)))
    latencies = []
    for key, (hour, ordinal) in sent.ordinal.items():
        times = [seen_at for seen_at, count in reached.get((key[0], hour), []) if count >= ordinal]
        if times:
            latencies.append(min(times) - sent.at[key])
    return latencies


@dataclass
class Latency:
    """The latency run's measurements."""

    sent: int
    readable: list[float]
    reflected: list[float]
    batch_ms: list[float]


def measure_latency(spark, settings: Settings, seconds: float, rate: float, warm_up_seconds: float,
                    settle_seconds: float) -> Latency:
    """The job at a 1 s trigger on `settings` (fresh topic and root): warm-up ticks until the job has
    drained them, then measured ticks, followed until all are seen in both tables or `settle_seconds`
    after the last send."""
    queries = job.start_queries(spark, settings, queries=[names.INGEST_QUERY], trigger_interval_s=1.0)
    try:
        # Warm-up on other symbols (their hours' ordinals stay apart): the tables exist afterwards.
        send_ticks(settings, warm_up_seconds, rate, "WRM")
        wait_drained(settings, INGEST_CHECKPOINT, end_offsets(settings), timeout=600, query=queries[0])
        _wait_for_tables(settings, queries[0])
        pollers = [TablePoller(settings, names.RAW_DATASET, ["symbol", "event_time"]),
                   TablePoller(settings, names.HOURLY_DATASET, ["symbol", "window_start", "tick_count"])]
        for poller in pollers:
            poller.start()
        started = datetime.now(timezone.utc)
        sent = Sent()
        send_ticks(settings, seconds, rate, "LAT", sent)
        deadline = time.monotonic() + settle_seconds  # until every tick is seen in both tables, at most this
        while time.monotonic() < deadline and queries[0].isActive:
            readable, reflected = readable_latencies(sent, pollers[0]), reflected_latencies(sent, pollers[1])
            if len(readable) == len(reflected) == len(sent.at):
                break
            time.sleep(1.0)
        for poller in pollers:
            poller.stop()
        _wait_idle(queries[0], settle_seconds)  # so the last batch's progress reaches the document
        if not queries[0].isActive:
            raise RuntimeError(f"the job's query stopped during the latency run: {_first_line(queries[0].exception())}")
        readable, reflected = readable_latencies(sent, pollers[0]), reflected_latencies(sent, pollers[1])
        log.info("latency: %d sent, %d readable, %d reflected; raw versions %d, hourly versions %d",
                 len(sent.at), len(readable), len(reflected), pollers[0].versions, pollers[1].versions)
    finally:
        job.stop_queries(queries)
    history = (read_progress(settings, names.INGEST_QUERY) or {}).get("history", [])
    batch_ms = [float(h["duration_ms"]) for h in history
                if h.get("input_rows") and h.get("duration_ms") is not None
                and datetime.fromisoformat(h["timestamp"].replace("Z", "+00:00")) >= started]
    return Latency(len(sent.at), readable, reflected, batch_ms)


def _wait_idle(query, timeout: float) -> None:
    """Until the query runs no batch (then a second for the listener to write its progress)."""
    deadline = time.monotonic() + timeout
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)


def _wait_for_tables(settings: Settings, query, timeout: float = 120.0) -> None:
    """Until raw_data and hourly_metrics exist as Delta tables (written by the warm-up ticks' batches)."""
    from deltalake import DeltaTable

    deadline = time.monotonic() + timeout
    urls = [settings.storage_url(names.RAW_DATASET), settings.storage_url(names.HOURLY_DATASET)]
    while not all(DeltaTable.is_deltatable(url) for url in urls):
        if not query.isActive:
            raise RuntimeError(f"the job's query stopped during the warm-up: {_first_line(query.exception())}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"raw_data and hourly_metrics not created within {timeout:g}s of warm-up ticks")
        time.sleep(0.5)


# --- report --------------------------------------------------------------------------------------


def _first_line(error) -> str:
    """The line of a (streaming query) exception that names the problem: for an error raised in the
    job's Python batch function, the Python exception's own line, not the Py4J proxy's preamble."""
    text = str(getattr(error, "desc", None) or error or "no exception reported").strip()
    python_lines = [line for line in text.split("\n\tat ")[0].splitlines()
                    if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*", line)]
    if "Traceback" in text and python_lines:
        return python_lines[-1]
    return text.splitlines()[0] if text else repr(error)


def _stats(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return float("nan"), float("nan"), float("nan")
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95), float(max(values))


def machine_facts() -> str:
    """CPU, memory, load and library versions, for the results file."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?") if Path("/proc/cpuinfo").exists() else "?"
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    versions = ", ".join(f"{package} {_version(package)}" for package in ("pyspark", "delta-spark", "deltalake"))
    return (f"{os.cpu_count()} cores ({cpu}), {int(memory) / 1024 ** 2:.1f} GiB RAM, " if memory else
            f"{os.cpu_count()} cores ({cpu}), ") + f"{platform.system()} {platform.release()}, Python {platform.python_version()}, {versions}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def report(args, settings: Settings, spark, warm_up: tuple[Drain, float], rounds: list[Round], latency: Latency,
           loads: tuple[str, str]) -> str:
    """The results file's text."""
    count = args.ticks
    rows = "\n".join(
        f"| {number} | {r.order} | {r.drain.seconds:.1f} | {count / r.drain.seconds:,.0f} | {count / r.batch_rate:.1f} "
        f"| {r.batch_rate:,.0f} | **{count / r.drain.seconds / r.batch_rate:.2f}** | {r.drain.raw_rows:,} "
        f"| {count - r.drain.raw_keys:,} | {r.drain.totals.get('late_rows', 0):,} | {r.drain.totals.get('duplicate_rows', 0):,} "
        f"| {r.drain.totals.get('quarantined_rows', 0):,} | {r.drain.totals.get('batches', 0)} |"
        for number, r in enumerate(rounds))
    ratios = [count / r.drain.seconds / r.batch_rate for r in rounds]
    lost = [count - r.drain.raw_keys for r in rounds]
    readable, reflected, batches = _stats(latency.readable), _stats(latency.reflected), _stats(latency.batch_ms)
    warm_drain, warm_batch = warm_up
    confs = ", ".join(f"`{kv}`" for kv in args.conf) or "none"
    strategy = DeltaBatchWriter.__dataclass_fields__["raw_strategy"].default
    return f"""# Streaming job benchmark (Delta Lake, one query)

Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, `python bench/bench_streaming.py --ticks {count}`
({args.repeats} round(s), latency {args.latency_seconds:g} s at {args.latency_rate:g} ticks/s).

- Machine: {machine_facts()}; load average (1/5/15 min) {loads[0]} at the start, {loads[1]} at the end.
- Kafka and HDFS from `btcstream infra up` on the same machine; storage `{settings.storage_root}`.
- Spark `{settings.spark_master}`, shuffle partitions {spark.conf.get("spark.sql.shuffle.partitions")}, extra `--conf`: {confs};
  the job's query `{names.INGEST_QUERY}` (`foreachBatch`: quarantine + raw_data with the
  `{strategy}` strategy + hourly upsert per micro-batch), trigger {args.trigger:g} s, maxOffsetsPerTrigger
  {settings.max_offsets_per_trigger:,}, allowed lateness {settings.allowed_lateness}.
- Backlog: {count:,} ticks of {SYMBOL_COUNT} symbols on {PARTITIONS} partitions, two writers' halves interleaved
  (out of event-time order, the second half hours ahead), each (symbol, event_time) once.
- Warm-up (discarded): {args.warm_up_ticks:,} ticks, job {args.warm_up_ticks / warm_drain.seconds:,.0f} ticks/s,
  batch {warm_batch:,.0f} ticks/s.

## Backlog drain and ticks lost

Job: from query start until the checkpoint's committed offsets reach the topic end. Batch: Spark's
`from_json -> Parquet` over the same records. Lost = keys sent - distinct (symbol, event_time) in
raw_data; late, duplicates, quarantined and batches from the job's progress document totals.

| round | order | job s | job ticks/s | batch s | batch ticks/s | job / batch | raw_data rows | lost | late | duplicates | quarantined | batches |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Job / batch: {", ".join(f"{r:.2f}" for r in ratios)} (median {float(np.median(ratios)):.2f}); goal >= 0.5, aim 0.7.
Ticks lost: {", ".join(f"{n:,}" for n in lost)}; goal 0.

## Latency at a 1 s trigger

Fresh topic and storage root, the job running; {args.latency_warm_up_seconds:g} s of warm-up ticks (other symbols)
until the job has committed them, then {latency.sent:,} ticks stamped with now, {args.latency_rate:g}/s over {LATENCY_SYMBOLS} symbols for {args.latency_seconds:g} s.
Readable: a delta-rs poller (every ~100 ms) first sees the tick in a file a new raw_data version added.
Reflected: the tick's (symbol, hour) row in hourly_metrics first shows a tick_count >= the tick's
ordinal within its hour. Batch durations: `triggerExecution` of the job's batches with data in
that window (progress document history).

| what | n | p50 | p95 | max | goal |
|---|---|---|---|---|---|
| event_time -> readable in raw_data | {len(latency.readable):,} | {readable[0]:.2f} s | {readable[1]:.2f} s | {readable[2]:.2f} s | p95 < 2 s |
| event_time -> reflected in the live hourly row | {len(latency.reflected):,} | {reflected[0]:.2f} s | {reflected[1]:.2f} s | {reflected[2]:.2f} s | p95 < 5 s |
| job batch duration | {len(latency.batch_ms)} | {batches[0] / 1000:.2f} s | {batches[1] / 1000:.2f} s | {batches[2] / 1000:.2f} s | - |

Ticks never seen within {args.latency_settle_seconds:g} s after the last send: {latency.sent - len(latency.readable)} in raw_data,
{latency.sent - len(latency.reflected)} in hourly_metrics.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2_000_000, help="backlog size (even)")
    parser.add_argument("--warm-up-ticks", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2, help="backlog rounds, job and batch alternating first")
    parser.add_argument("--trigger", type=float, default=1.0, help="the job's trigger during the drain (s)")
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-warm-up-seconds", type=float, default=10.0)
    parser.add_argument("--latency-rate", type=float, default=20.0, help="ticks per second during the latency run")
    parser.add_argument("--latency-settle-seconds", type=float, default=60.0,
                        help="after the last send, follow the tables at most this long")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="Spark configuration")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.ticks % 2 or args.warm_up_ticks % 2 or args.ticks <= 0 or args.warm_up_ticks <= 0:
        parser.error("--ticks and --warm-up-ticks must be positive and even (two writers' halves)")
    if any("=" not in kv for kv in args.conf):
        parser.error("--conf takes KEY=VALUE")
    loads_start = _load()
    settings = bench_settings("streaming")
    spark = spark_session(settings, "bench-streaming", extra_conf=dict(kv.split("=", 1) for kv in args.conf))

    warm = fresh_topic(settings.replace(storage_root=settings.storage_url("warmup")), f"{settings.topic}-warmup")
    fill_topic(spark, warm, args.warm_up_ticks, interleaved_writers=True)
    warm_drain = job_drain(spark, warm, end_offsets(warm), args.trigger)
    warm_batch = batch_throughput(spark, warm, args.warm_up_ticks)
    log.info("warm-up (discarded): job %.1fs, batch %.0f ticks/s", warm_drain.seconds, warm_batch)

    started = time.monotonic()
    fill_topic(spark, settings, args.ticks, interleaved_writers=True)
    log.info("topic %s filled with %d ticks in %.1fs", settings.topic, sum(end_offsets(settings).values()),
             time.monotonic() - started)
    rounds = backlog_rounds(spark, settings, args.ticks, args.repeats, args.trigger)

    latency_settings = fresh_topic(settings.replace(storage_root=settings.storage_url("latency")),
                                   f"{settings.topic}-latency")
    latency = measure_latency(spark, latency_settings, args.latency_seconds, args.latency_rate,
                              args.latency_warm_up_seconds, args.latency_settle_seconds)
    text = report(args, settings, spark, (warm_drain, warm_batch), rounds, latency, (loads_start, _load()))
    spark.stop()  # before exit, so no progress event reaches a Python listener that is gone
    write_results(args.results, text)
    log.info("results written to %s", args.results)
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError) as failure:  # the job failed or stalled: one line, then exit
        print(f"bench_streaming: {failure}", file=sys.stderr)
        sys.exit(1)
