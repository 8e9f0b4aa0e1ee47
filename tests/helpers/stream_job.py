"""The streaming job as a subprocess for integration tests: `python -m btcstream stream` in its own
process group (kill -9 takes the JVM too), a drain condition, and Delta tables read with delta-rs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
from deltalake import DeltaTable
from kafka.errors import KafkaError

from btcstream.clients.kafka import kafka_python_options
from btcstream.ingest.tick import Tick
from btcstream.settings import Settings
from btcstream.storage import checkpoints

REPO = Path(__file__).resolve().parents[2]  # the stream subprocess runs from the repository
INGEST = "ingest"  # the checkpoint folder of the job's one query
STARTUP_TIMEOUT_S = 240.0


class StreamJob:
    """`python -m btcstream stream` in its own process group (so kill -9 takes the JVM too)."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        self.settings = settings
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        values = {"KAFKA_BOOTSTRAP": s.kafka_bootstrap, "TOPIC": s.topic, "TRADES_TOPIC": s.trades_topic, "STORAGE_ROOT": s.storage_root,
                  "SPARK_MASTER": s.spark_master, "TRIGGER_INTERVAL_S": str(s.trigger_interval_s),
                  "ALLOWED_LATENESS": s.allowed_lateness, "MAX_OFFSETS_PER_TRIGGER": str(s.max_offsets_per_trigger),
                  "WEBHDFS_PORT": str(s.webhdfs_port), "CACHE_DIR": str(s.cache_dir), "STATE_DIR": str(s.state_dir),
                  "ALERTS_TOPIC": s.alerts_topic, "ALERT_WINDOW": s.alert_window, "ALERT_THRESHOLD": str(s.alert_threshold),
                  "ALERT_COMMAND": s.alert_command or "", "FORECAST_MODELS": s.forecast_models,
                  "FORECAST_REFIT_HOURS": str(s.forecast_refit_hours), "BIND_HOST": s.bind_host}
        env = {k: v for k, v in os.environ.items() if not k.startswith("BTCSTREAM_")}
        env.update({f"BTCSTREAM_{key}": value for key, value in values.items()})
        return env

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            # No restart after a failure: a test must see the first failure, not a retry hiding it.
            self.process = subprocess.Popen([sys.executable, "-m", "btcstream", "stream", "--max-restarts", "0"],
                                            env=self.env(),
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, wait for a clean exit, return the exit code (kill -9 as a last resort)."""
        if not self.alive():
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"the stream job exited while waiting for {what}:\n{self.log_tail()}")
            try:
                if condition():
                    return
            except (FileNotFoundError, json.JSONDecodeError, IndexError, KafkaError):
                pass  # checkpoint or progress file being written, or the shared broker restarting
            time.sleep(1.0)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log_tail()}")


def produce(settings: Settings, records: list[Tick | bytes]) -> None:
    """Send ticks (keyed by symbol) and raw byte values to the quote topic, in this order, and wait for the acks."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **kafka_python_options(settings))
    try:
        for record in records:
            if isinstance(record, Tick):
                producer.send(settings.topic, key=record.symbol.encode(), value=record.to_json())
            else:
                producer.send(settings.topic, value=record)
        producer.flush(timeout=30)
    finally:
        producer.close()


def drained(settings: Settings, checkpoint: str = INGEST) -> Callable[[], bool]:
    """True once the checkpoint's last committed batch reached the end of every topic partition."""
    def check() -> bool:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **kafka_python_options(settings))
        try:
            parts = consumer.partitions_for_topic(settings.topic) or set()
            ends = consumer.end_offsets([TopicPartition(settings.topic, p) for p in parts])
        finally:
            consumer.close()
        committed = checkpoints.committed_kafka_offsets(settings, checkpoint) or {}
        return all(committed.get(tp.partition, 0) >= end for tp, end in ends.items())
    return check


def read_table(settings: Settings, dataset: str, version: int | None = None) -> pd.DataFrame:
    """Every row of a Delta table as it is now (or at `version`), read by delta-rs over HDFS."""
    url = settings.storage_url(dataset)
    if not DeltaTable.is_deltatable(url):
        return pd.DataFrame()
    return DeltaTable(url, version=version).to_pyarrow_table().to_pandas()
