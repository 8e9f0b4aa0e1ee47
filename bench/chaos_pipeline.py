"""The chaos run's own pipeline and the faults done to it: stack, exchange, producer, job (the soak run
uses the same pipeline without faults).

Everything runs on a stack of its own (other ports, its own state directory, topics and storage
root) so the default stack (localhost:9092, hdfs://localhost:9000) others use is never touched:
Kafka and HDFS through `btcstream.infra.stack` with the chaos settings; the replay exchange in this
process (so the `SentLedger` sees what it sends, and faults are injected directly); the producer
(`btcstream produce --source replay --feed websocket`) and the streaming job (`btcstream stream`)
each a subprocess in its own process group, so kill -9 takes the job's JVM with it. Both run a
copy of lib/btcstream taken at the start (`snapshot_package`), so every restart runs the same code.

`ChaosPipeline.inject(fault)` does one `chaos_schedule` fault kind and returns what it did. The
harness is the processes' supervisor too: `restart_exited()` restarts the producer or the job when
one exits on its own (counted; a production deployment's systemd would do the same).
Not for: checking the outcome (`chaos_check`).
"""

from __future__ import annotations

import compileall
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from btcstream.clients.kafka import kafka_python_options
from btcstream.errors import BtcstreamError
from btcstream.exchange import Fault, StreamFault, start_exchange
from btcstream.exchange.server import ExchangeServer
from btcstream.infra import stack
from btcstream.infra.hdfs import DataNode, NameNode
from btcstream.infra.kafka import KafkaBroker
from btcstream.ingest.feed_status import read_feed_status
from btcstream.settings import Settings, load_settings
from btcstream.storage.checkpoints import committed_kafka_offsets

from chaos_ledger import SentLedger
from chaos_schedule import PlannedFault

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("chaos")

BROKER_DOWN_S = 5.0  # how long the broker stays dead before its restart
HDFS_DOWN_S = 10.0  # how long HDFS stays stopped
SERVICE_START_ATTEMPTS = 5  # a killed broker's port can take a moment to be free again
MALFORMED_PER_TOPIC = 4  # records per topic per malformed_records fault
STALE_AFTER_S = 5.0  # the producer's WebSocket watchdog (BTCSTREAM_WS_STALE_AFTER_S) in the chaos run
SILENCE_S = STALE_AFTER_S + 4.0  # a silence the watchdog must notice
API_FAULT_REQUESTS = 3  # REST requests each API fault answers with an error
STOP_TIMEOUT_S = 120.0
QUERY_START_TIMEOUT_S = 300.0
STATUS_LAG_S = 2.5  # the producer rewrites its status document every 2 s: one written after a moment tells about it
QUERY_STARTED = "started btcstream_ingest"  # the job's log line once its query runs (btcstream.streaming.job)


@dataclass(frozen=True)
class ChaosConfig:
    """Where the chaos stack listens and what the exchange streams."""

    state_dir: Path
    kafka_port: int = 19092
    hdfs_port: int = 19000
    webhdfs_port: int = 19870
    symbols: int = 5
    quotes_per_second: float = 20.0  # per symbol, wall clock
    trades_per_second: float = 20.0  # per symbol, wall clock
    speed: float = 60.0  # exchange seconds per wall second: an exchange hour a wall minute, so hours become final
    trigger_s: float = 2.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def chaos_settings(config: ChaosConfig, symbols: tuple[str, ...]) -> Settings:
    """Settings of the chaos stack: its own ports, state dir, topics and storage root."""
    return load_settings(env={}).replace(
        kafka_bootstrap=f"localhost:{config.kafka_port}", storage_root=f"hdfs://localhost:{config.hdfs_port}/chaos",
        webhdfs_port=config.webhdfs_port, state_dir=config.state_dir, topic=f"chaos-ticks-{config.run_id}",
        trades_topic=f"chaos-trades-{config.run_id}", alerts_topic=f"chaos-alerts-{config.run_id}",
        trigger_interval_s=config.trigger_s, spark_master="local[2]", symbols=symbols,
        # far above the stream's rate: no quote is conflated, so every quote sent must be stored
        ws_max_quotes_hz=1000.0, ws_stale_after_s=STALE_AFTER_S, forecast_models="ewma")


def environment(settings: Settings) -> dict[str, str]:
    """This process's environment without BTCSTREAM_*, plus every setting of `settings` as BTCSTREAM_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BTCSTREAM_")}
    for spec in fields(Settings):
        value = getattr(settings, spec.name)
        if value is None:
            continue
        env[f"BTCSTREAM_{spec.name.upper()}"] = ",".join(value) if isinstance(value, tuple) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ManagedProcess:
    """A `btcstream <command>` subprocess in its own process group, output appended to `log_file`."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_file: Path) -> None:
        self.name, self.command, self.env, self.log_file = name, command, env, log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "btcstream", *self.command], env=self.env, cwd=ROOT,
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """kill -9 of the whole process group (the job's JVM too)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait for a clean exit; kill -9 of the group as a last resort. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: kill -9", self.name, timeout)
                self.kill9()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # leftovers of the group (the JVM of a crashed driver)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.returncode


@dataclass
class InjectedFault:
    """What was done for one planned fault, and when (time.monotonic())."""

    planned: PlannedFault
    started: float
    detail: str
    ended: float | None = None  # when the fault itself was over (process restarted, silence over)
    recovered: float | None = None  # when data produced after the fault start was committed by the job
    marks: dict[str, int] = field(default_factory=dict)  # topic end offsets at the fault start
    ended_wall: float = 0.0  # `ended` as epoch seconds (to compare with the producer's status document)

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.started


class ChaosPipeline:
    """The chaos stack, exchange, producer and job (see the module docstring)."""

    def __init__(self, config: ChaosConfig, histories: dict[str, Path]) -> None:
        self.config = config
        self.histories = histories
        self.settings = chaos_settings(config, tuple(histories))
        self.ledger = SentLedger()
        self.exchange: ExchangeServer | None = None
        self.producer: ManagedProcess | None = None
        self.job: ManagedProcess | None = None
        self.feed_documents: list[dict[str, Any]] = []  # the last status document of each producer that died
        self.unplanned_exits: Counter[str] = Counter()
        self.malformed_markers: list[str] = []
        self._stack_started = False

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Stack, exchange, job, producer (each checked to be running)."""
        self._stack_started = True
        for line in stack.up(self.settings):
            log.info("stack: %s", line)
        self.exchange = start_exchange(self.histories, speed=self.config.speed,
                                       ws_quotes_per_second=self.config.quotes_per_second,
                                       ws_trades_per_second=self.config.trades_per_second)
        self.ledger.attach(self.exchange)
        env = environment(self.exchange.settings_for(self.settings))
        env["PYTHONPATH"] = str(snapshot_package(self.config.state_dir / "code"))
        load_settings(env=env, config_file=None)  # every value must read back (a bad one fails here, not in a child)
        logs = self.config.state_dir
        self.job = ManagedProcess("job", ["stream"], env, logs / "stream.log")
        self.producer = ManagedProcess("producer", ["produce", "--source", "replay", "--feed", "websocket"], env,
                                       logs / "produce.log")
        self.job.start()
        self._wait_for_query(logs / "stream.log")
        self.producer.start()

    def _wait_for_query(self, log_file: Path, timeout: float = QUERY_START_TIMEOUT_S) -> None:
        """Until the job's query runs (its log says so): the producer then starts, so the job's first batch is small."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.job.alive():
                raise BtcstreamError(f"the streaming job exited during start-up: see {log_file}")
            if QUERY_STARTED in log_file.read_text(errors="replace"):
                return
            time.sleep(1.0)
        raise BtcstreamError(f"the streaming job's query did not start within {timeout:.0f} s: see {log_file}")

    def stop(self) -> None:
        """Producer (its final status document), job, exchange, stack; each step runs whatever failed before."""
        for process in (self.producer, self.job):
            try:
                if process is not None:
                    process.stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the rest
                log.error("stopping %s: %s", process.name, error)
        if self.exchange is not None:
            self.exchange.stop()
            self.exchange = None
        if self._stack_started:
            for line in stack.down(self.settings):
                log.info("stack: %s", line)
            self._stack_started = False

    def stop_producer(self) -> None:
        """A clean stop of the producer (it flushes to Kafka and writes its last status document)."""
        if self.producer is not None:
            code = self.producer.stop()
            log.info("producer stopped (exit %s)", code)
            self._keep_feed_document()

    def restart_exited(self) -> list[str]:
        """Restart the producer or the job if one exited on its own; returns which."""
        restarted = []
        for process in (self.producer, self.job):
            if process is not None and process.process is not None and not process.alive():
                log.warning("%s exited on its own (code %s): restarting; see %s", process.name,
                            process.process.returncode, process.log_file)
                if process is self.producer:
                    self._keep_feed_document()
                self.unplanned_exits[process.name] += 1
                process.start()
                restarted.append(process.name)
        return restarted

    def _keep_feed_document(self) -> None:
        document = read_feed_status(self.settings)
        if document is not None and document.get("started_at") not in {d.get("started_at") for d in self.feed_documents}:
            self.feed_documents.append(document)

    # -- progress -----------------------------------------------------------------------------------------
    def end_offsets(self) -> dict[str, int] | None:
        """Sum over partitions of each topic's end offset, or None while the broker does not answer."""
        from kafka import KafkaConsumer, TopicPartition

        try:
            consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                     **kafka_python_options(self.settings))
        except Exception:  # noqa: BLE001 - the broker is down (a fault)
            return None
        try:
            consumer.topics()  # fetches the metadata; partitions_for_topic only reads what is cached
            result = {}
            for topic in (self.settings.topic, self.settings.trades_topic):
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    return None
                result[topic] = sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values())
            return result
        except Exception:  # noqa: BLE001
            return None
        finally:
            consumer.close()

    def committed_offsets(self) -> dict[str, int] | None:
        """Sum over partitions of the offsets the job's checkpoint has committed, per topic (None: unreadable)."""
        try:
            return {topic: sum((committed_kafka_offsets(self.settings, "ingest", topic) or {}).values())
                    for topic in (self.settings.topic, self.settings.trades_topic)}
        except Exception:  # noqa: BLE001 - HDFS down (a fault) or a checkpoint file being written
            return None

    def flowing_past(self, marks: dict[str, int]) -> bool:
        """True once the job has committed records of both topics written after `marks` were taken."""
        committed = self.committed_offsets()
        return bool(marks) and committed is not None and all(committed[topic] > mark for topic, mark in marks.items())

    def feed_settled(self, after: float) -> bool:
        """True when the producer runs, streams, and misses no trade id it still could fetch, by a status
        document written at least STATUS_LAG_S after `after` (epoch seconds)."""
        document = read_feed_status(self.settings)
        if self.producer is None or not self.producer.alive() or document is None:
            return False
        if datetime.fromisoformat(document["written_at"]).timestamp() < after + STATUS_LAG_S:
            return False
        gaps = document.get("gaps") or {}
        return (document.get("state") == "running" and (document.get("connections") or {}).get("open", 0) > 0
                and gaps.get("missing_trade_ids", 0) == 0)

    # -- faults -------------------------------------------------------------------------------------------
    def inject(self, planned: PlannedFault) -> InjectedFault:
        """Do `planned` (see `chaos_schedule` for the kinds); returns once the fault itself is over."""
        rng = random.Random(planned.seed)
        marks = self.end_offsets() or {}
        started = time.monotonic()
        detail = getattr(self, f"_{planned.kind}")(rng, planned)
        return InjectedFault(planned=planned, started=started, detail=detail, ended=time.monotonic(), marks=marks,
                             ended_wall=time.time())

    def _job_kill9(self, rng: random.Random, planned: PlannedFault) -> str:
        self.job.kill9()
        self.job.start()
        return "kill -9 of the job's process group (driver + JVM), restarted"

    def _producer_kill9(self, rng: random.Random, planned: PlannedFault) -> str:
        self._keep_feed_document()
        self.producer.kill9()
        self.producer.start()
        return "kill -9 of the producer, restarted"

    def _broker_kill9(self, rng: random.Random, planned: PlannedFault) -> str:
        broker = KafkaBroker(self.settings)
        pid = broker.pid()
        if pid is None:
            raise BtcstreamError("the chaos broker is not running")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        time.sleep(BROKER_DOWN_S)
        _start_service(broker)
        return f"SIGKILL of the broker (pid {pid}), {BROKER_DOWN_S:g} s down, restarted"

    def _hdfs_datanode_restart(self, rng: random.Random, planned: PlannedFault) -> str:
        datanode = DataNode(self.settings)
        datanode.stop()
        time.sleep(HDFS_DOWN_S)
        _start_service(datanode)  # healthy: registered again and the NameNode out of safe mode
        return f"stop (SIGTERM) of the HDFS DataNode, {HDFS_DOWN_S:g} s down, start; the NameNode stayed up"

    def _hdfs_namenode_restart(self, rng: random.Random, planned: PlannedFault) -> str:
        namenode, datanode = NameNode(self.settings), DataNode(self.settings)
        namenode.stop()
        time.sleep(HDFS_DOWN_S)
        _start_service(namenode)
        _wait_healthy(datanode)  # the running DataNode registers again by itself; then safe mode ends
        return f"stop (SIGTERM) of the HDFS NameNode, {HDFS_DOWN_S:g} s down, start; the DataNode stayed up"

    def _ws_drop(self, rng: random.Random, planned: PlannedFault) -> str:
        kind = rng.choice(["abrupt_close", "close_1006"])
        applied = self.exchange.inject_ws_fault(StreamFault(kind))
        return f"WebSocket {kind} of {len(applied)} connection(s)"

    def _ws_silence(self, rng: random.Random, planned: PlannedFault) -> str:
        applied = self.exchange.inject_ws_fault(StreamFault("silence", duration_s=SILENCE_S))
        time.sleep(SILENCE_S)
        return f"WebSocket silence of {len(applied)} connection(s) for {SILENCE_S:g} s"

    def _api_fault(self, rng: random.Random, status: str) -> str:
        self.exchange.inject(Fault(status, api="binance", path="/api/v3/aggTrades", count=API_FAULT_REQUESTS,
                                   retry_after_s=2.0))
        symbol = rng.choice(list(self.histories))
        skip = rng.randint(10, 40)
        self.exchange.inject_ws_fault(StreamFault("trade_id_gap", symbol=symbol, skip=skip))
        return f"{API_FAULT_REQUESTS} x HTTP {status} on GET /api/v3/aggTrades, armed before a gap of {skip} {symbol} trades"

    def _api_429(self, rng: random.Random, planned: PlannedFault) -> str:
        return self._api_fault(rng, "429")

    def _api_418(self, rng: random.Random, planned: PlannedFault) -> str:
        return self._api_fault(rng, "418")

    def _api_5xx(self, rng: random.Random, planned: PlannedFault) -> str:
        return self._api_fault(rng, rng.choice(["500", "503"]))

    def _malformed_records(self, rng: random.Random, planned: PlannedFault) -> str:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                 **kafka_python_options(self.settings))
        try:
            for topic in (self.settings.topic, self.settings.trades_topic):
                for index in range(MALFORMED_PER_TOPIC):
                    marker = f"chaos-{self.config.run_id}-{planned.number}-{topic[:12]}-{index}"
                    producer.send(topic, value=malformed_value(marker, index))
                    self.malformed_markers.append(marker)
            producer.flush(timeout=60)
        finally:
            producer.close()
        return f"{2 * MALFORMED_PER_TOPIC} malformed records written into both topics"


def snapshot_package(target: Path, attempts: int = 5) -> Path:
    """A copy of lib/btcstream under `target` that compiles, for the producer and the job (via PYTHONPATH).

    The run restarts both many times; a copy taken once keeps every restart on the same code even when
    someone edits the working tree meanwhile (a half-written file would crash a restart).
    """
    for attempt in range(1, attempts + 1):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "lib" / "btcstream", target / "btcstream", ignore=shutil.ignore_patterns("__pycache__"))
        if compileall.compile_dir(str(target), quiet=1):
            return target
        log.warning("the working tree's lib/btcstream does not compile (being edited?): copying again in 10 s")
        time.sleep(10.0)
    raise BtcstreamError(f"lib/btcstream did not compile in {attempts} copies: fix the tree and run again")


def malformed_value(marker: str, variant: int) -> bytes:
    """A record the job must refuse, carrying `marker`: not JSON, truncated JSON, an array, an unknown version."""
    variants = [
        f"not json {marker}".encode(),
        f'{{"schema_version": 2, "symbol": "BTCUSDT", "note": "{marker}", "bid_price": 1'.encode(),
        json.dumps([marker, 1, 2]).encode(),
        json.dumps({"schema_version": 999, "symbol": "BTCUSDT", "note": marker}).encode(),
    ]
    return variants[variant % len(variants)]


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (it is not: start_detached's session)
        except ChildProcessError:
            pass
        time.sleep(0.2)


def _wait_healthy(service: Any, timeout_s: float = 180.0) -> None:
    """Wait until a running service answers healthy (e.g. the DataNode re-registered after a NameNode restart)."""
    deadline = time.monotonic() + timeout_s
    detail = ""
    while time.monotonic() < deadline:
        healthy, detail = service.health()
        if healthy:
            log.info("%s: healthy again, %s", service.name, detail)
            return
        time.sleep(1.0)
    raise BtcstreamError(f"{service.name} not healthy {timeout_s:g} s after the fault: {detail}")


def _start_service(service: Any) -> None:
    """`service.start()`, retried while its port is still taken by the dead process."""
    for attempt in range(1, SERVICE_START_ATTEMPTS + 1):
        try:
            log.info("%s", service.start())
            return
        except BtcstreamError as error:
            if attempt == SERVICE_START_ATTEMPTS:
                raise
            log.warning("%s start failed (%s), retrying", service.name, str(error).splitlines()[0])
            time.sleep(3.0)
