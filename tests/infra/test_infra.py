"""`btcstream infra`: idempotent up, clean down, data kept across restarts, clear errors.

These tests run a second, private stack on other ports and in a temporary state directory,
so they never disturb the session's `local_stack`.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from btcstream.errors import PortInUse
from btcstream.infra import artifacts, processes, stack
from btcstream.infra.hdfs import hdfs_home
from btcstream.infra.java import java_executable
from btcstream.infra.kafka import KafkaBroker
from btcstream.settings import Settings, load_settings

pytestmark = pytest.mark.integration



def _free_port_block() -> int:
    """A base B whose ports B+0 (NameNode RPC), B+64 (DataNode HTTP), B+70 (WebHDFS), B+92 and B+93 (broker,
    controller) are all free: a fixed block (the chaos stack's 19xxx) collides with a chaos run beside the suite."""
    for base in random.sample(range(21000, 30000, 100), 90):
        if all(processes.port_is_free(base + offset) for offset in (0, 64, 70, 92, 93)):
            return base
    raise RuntimeError("no free block of ports between 21000 and 30000 for the private stack")


_BASE = _free_port_block()
PRIVATE_KAFKA_PORT = _BASE + 92
PRIVATE_HDFS_PORT = _BASE
PRIVATE_WEBHDFS_PORT = _BASE + 70


def _private_settings(state_dir: Path) -> Settings:
    return load_settings(env={}).replace(
        kafka_bootstrap=f"127.0.0.1:{PRIVATE_KAFKA_PORT}",
        storage_root=f"hdfs://localhost:{PRIVATE_HDFS_PORT}/bitcoin",
        webhdfs_port=PRIVATE_WEBHDFS_PORT,
        state_dir=state_dir,
    )


def _our_processes(state_dir: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if f"btcstream.service={state_dir}" in line]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "btcstream", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_up_twice_down_and_data_survives_restart(tmp_path: Path) -> None:
    settings = _private_settings(tmp_path / "state")
    try:
        first = stack.up(settings)
        assert any(line.startswith("kafka: started") for line in first)
        assert any(line.startswith("hdfs-namenode: started") for line in first)
        assert any(line.startswith("hdfs-datanode: started") for line in first)
        pids = {s.name: s.pid for s in stack.status(settings)[0]}

        again = stack.up(settings)
        assert any("kafka: already running" in line for line in again)
        assert any("hdfs-namenode: already running" in line for line in again)
        assert any("hdfs-datanode: already running" in line for line in again)
        assert {s.name: s.pid for s in stack.status(settings)[0]} == pids  # nothing restarted

        bootstrap = settings.kafka_bootstrap
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send("survivor", key=b"BTCUSDT", value=b'{"bid_price": 1.0}').get(timeout=30)
        producer.close()
        hdfs = fsspec.filesystem("webhdfs", host="localhost", port=PRIVATE_WEBHDFS_PORT, user="btcstream")
        hdfs.makedirs("/bitcoin/raw_data", exist_ok=True)
        with hdfs.open("/bitcoin/raw_data/kept.txt", "wb") as handle:
            handle.write(b"still here")

        stopped = stack.down(settings)
        assert {"kafka: stopped", "hdfs-namenode: stopped", "hdfs-datanode: stopped"} <= set(stopped)
        assert _our_processes(settings.state_dir) == []
        assert all(not s.running for s in stack.status(settings)[0])

        stack.up(settings)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 consumer_timeout_ms=20_000, enable_auto_commit=False)
        consumer.assign([TopicPartition("survivor", p) for p in consumer.partitions_for_topic("survivor")])
        consumer.seek_to_beginning()
        values = [record.value for record in consumer]
        consumer.close()
        assert values == [b'{"bid_price": 1.0}']
        hdfs = fsspec.filesystem("webhdfs", host="localhost", port=PRIVATE_WEBHDFS_PORT, user="btcstream")
        assert hdfs.cat_file("/bitcoin/raw_data/kept.txt") == b"still here"
    finally:
        stack.down(settings)
    assert _our_processes(settings.state_dir) == []


def test_a_state_dir_of_the_one_jvm_hdfs_is_taken_over_with_its_files(tmp_path: Path) -> None:
    """Upgrading: `infra up` stops the MiniDFSCluster an earlier btcstream left running and starts the
    NameNode and DataNode on its directories; its files are still there."""
    settings = _private_settings(tmp_path / "state")
    home = hdfs_home(settings)
    (home / "data").mkdir(parents=True)
    # The earlier launcher's command line (btcstream before the two daemons), verbatim but for the ports.
    legacy = [java_executable(), "-Xmx768m", f"-Dbtcstream.service={home}", "-cp", artifacts.classpath(settings, "hdfs"),
              "org.apache.hadoop.mapreduce.MiniHadoopClusterManager", "-nomr", "-format",
              "-nnport", str(PRIVATE_HDFS_PORT), "-nnhttpport", str(PRIVATE_WEBHDFS_PORT), "-datanodes", "1",
              "-D", f"hdfs.minidfs.basedir={home / 'data'}", "-D", "dfs.permissions.enabled=false",
              "-D", "dfs.replication=1", "-D", "dfs.datanode.hostname=127.0.0.1"]
    processes.start_detached(legacy, home / "hdfs.log", home / "hdfs.pid")
    (home / ".formatted").touch()
    try:
        hdfs = fsspec.filesystem("webhdfs", host="localhost", port=PRIVATE_WEBHDFS_PORT, user="btcstream")
        deadline = time.monotonic() + 180
        while True:
            try:
                with hdfs.open("/bitcoin/kept.txt", "wb") as handle:
                    handle.write(b"from the one-JVM HDFS")
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, (home / "hdfs.log").read_text()[-2000:]
                time.sleep(1)
        # The file went to the one-JVM HDFS, not to something else on these ports.
        assert processes.running_pid(home / "hdfs.pid", str(home)) is not None, (home / "hdfs.log").read_text()[-2000:]

        lines = stack.up(settings)

        assert any("stopped the one-JVM MiniDFSCluster" in line for line in lines)
        assert any(line.startswith("hdfs-datanode: started") for line in lines)
        hdfs = fsspec.filesystem("webhdfs", host="localhost", port=PRIVATE_WEBHDFS_PORT, user="btcstream")
        assert hdfs.cat_file("/bitcoin/kept.txt") == b"from the one-JVM HDFS"
    finally:
        stack.down(settings)
        processes.stop(home / "hdfs.pid", str(home))
    assert _our_processes(settings.state_dir) == []


def test_an_occupied_port_gives_one_clear_error(tmp_path: Path) -> None:
    settings = _private_settings(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", PRIVATE_KAFKA_PORT))
        squatter.listen()
        with pytest.raises(PortInUse, match=f"port {PRIVATE_KAFKA_PORT} is already in use"):
            KafkaBroker(settings).start()
        env = {"BTCSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{PRIVATE_KAFKA_PORT}",
               "BTCSTREAM_STORAGE_ROOT": "file:///tmp/btcstream-unused",
               "BTCSTREAM_STATE_DIR": str(settings.state_dir), "PATH": "/usr/bin:/bin"}
        done = _cli("infra", "up", env=env)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("btcstream: error:")]
    assert len(errors) == 1 and f"port {PRIVATE_KAFKA_PORT} is already in use" in errors[0]
    assert _our_processes(settings.state_dir) == []


def test_missing_java_is_named_with_the_fix(tmp_path: Path) -> None:
    env = {"BTCSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{PRIVATE_KAFKA_PORT}",
           "BTCSTREAM_STORAGE_ROOT": "file:///tmp/btcstream-unused",
           "BTCSTREAM_STATE_DIR": str(tmp_path / "state"), "PATH": str(tmp_path)}  # no java on PATH
    done = _cli("infra", "up", env=env)
    assert done.returncode == 2
    assert "`java` was not found" in done.stderr and "openjdk-17" in done.stderr


def test_external_services_are_not_started(tmp_path: Path) -> None:
    settings = load_settings(env={}).replace(kafka_bootstrap="kafka.example.internal:9092",
                                             storage_root="hdfs://namenode.example.internal:8020/bitcoin",
                                             state_dir=tmp_path / "state")
    lines = stack.up(settings)
    assert "kafka: external (kafka.example.internal:9092), not started here" in lines
    assert "hdfs: external (hdfs://namenode.example.internal:8020/bitcoin), not started here" in lines
    assert not (tmp_path / "state" / "kafka").exists()


def test_status_command_shows_each_service(local_stack: Settings) -> None:
    started = time.monotonic()
    done = _cli("infra", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "healthy" in rows["kafka"] and "broker=9092" in rows["kafka"]
    assert "healthy" in rows["hdfs-namenode"] and "webhdfs=9870" in rows["hdfs-namenode"]
    assert "healthy" in rows["hdfs-datanode"] and "datanode-http=9864" in rows["hdfs-datanode"]
    assert "registered with the NameNode" in rows["hdfs-datanode"]
    assert time.monotonic() - started < 60
