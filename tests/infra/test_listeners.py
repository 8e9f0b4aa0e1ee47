"""Every listener btcstream starts binds to `bind_host` (127.0.0.1 by default), JupyterLab keeps its token.

The integration test runs the whole chain at once (Kafka and HDFS of `infra up`, `btcstream exchange`,
`btcstream produce` on its WebSocket feed, the streaming job `btcstream stream`, JupyterLab with a
running kernel), lists every listening socket of those processes with psutil and fails naming the
process and the address of any that is not on loopback. The fast tests check, without a JVM, that the
generated configurations and command lines carry the setting, and that BTCSTREAM_BIND_HOST reaches them.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from btcstream.cli import main
from btcstream.clients import spark
from btcstream.errors import InfraError
from btcstream.exchange import spawn_exchange
from btcstream.infra import addresses
from btcstream.infra.hdfs import DataNode, NameNode, hdfs_site
from btcstream.infra.kafka import KafkaBroker
from btcstream.settings import Settings, load_settings
from btcstream.workbench import lab
from helpers.stream_job import REPO, StreamJob, read_table

NAMENODE_BIND_KEYS = ("dfs.namenode.rpc-bind-host", "dfs.namenode.servicerpc-bind-host",
                      "dfs.namenode.lifeline.rpc-bind-host", "dfs.namenode.http-bind-host",
                      "dfs.namenode.https-bind-host")
DATANODE_ADDRESS_KEYS = ("dfs.datanode.address", "dfs.datanode.ipc.address", "dfs.datanode.http.address")
ROLES = (  # (role, a string on its command line), first match wins
    ("kafka", "kafka.Kafka"), ("hdfs namenode", "server.namenode.NameNode"),
    ("hdfs datanode", "server.datanode.DataNode"), ("spark driver", "SparkSubmit"),
    ("kernel", "ipykernel"), ("jupyterlab", "jupyter"), ("exchange", "btcstream exchange"),
    ("producer", "btcstream produce"), ("stream job", "btcstream stream"),
)
UI_PORTS = range(4040, 4057)  # spark.ui.port, then the next free one (spark.port.maxRetries 16)
SECOND_LOOPBACK = "127.0.0.2"  # a loopback address other than the default: shows the setting is used


# --- fast: the setting reaches every configuration (no JVM) -------------------------------------------------

def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_by_default_kafka_hdfs_and_the_spark_driver_are_configured_on_loopback(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)

    kafka = properties(KafkaBroker(settings).server_properties())
    assert kafka["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert kafka["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    hdfs = hdfs_site(settings)
    assert {key: hdfs[key] for key in NAMENODE_BIND_KEYS} == dict.fromkeys(NAMENODE_BIND_KEYS, "127.0.0.1")
    assert {hdfs[key].rsplit(":", 1)[0] for key in DATANODE_ADDRESS_KEYS} == {"127.0.0.1"}
    assert spark.driver_bind_conf(settings) == {"spark.driver.bindAddress": "127.0.0.1",
                                                "spark.driver.host": "127.0.0.1"}
    assert spark.driver_environment(settings) == {"SPARK_LOCAL_IP": "127.0.0.1"}  # Spark 4.2's UI binds to it
    command = lab.lab_command(8899, tmp_path)
    assert "--ServerApp.ip=127.0.0.1" in command


def test_bind_host_0_0_0_0_from_the_environment_opens_every_listener_to_the_network(tmp_path: Path) -> None:
    settings = load_settings(env={"BTCSTREAM_BIND_HOST": "0.0.0.0", "BTCSTREAM_STATE_DIR": str(tmp_path)})

    kafka = properties(KafkaBroker(settings).server_properties())
    assert kafka["listeners"] == "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
    # Clients are never told to connect to 0.0.0.0: remote ones get this machine's name, the
    # controller (same process) is reached through loopback.
    assert kafka["advertised.listeners"] == f"PLAINTEXT://{addresses.advertised_host('0.0.0.0')}:9092"
    assert "0.0.0.0" not in kafka["advertised.listeners"]
    assert kafka["controller.quorum.voters"] == "1@127.0.0.1:9093"
    hdfs = hdfs_site(settings)
    assert {key: hdfs[key] for key in NAMENODE_BIND_KEYS} == dict.fromkeys(NAMENODE_BIND_KEYS, "0.0.0.0")
    assert {hdfs[key].rsplit(":", 1)[0] for key in DATANODE_ADDRESS_KEYS} == {"0.0.0.0"}
    # The driver listens everywhere and advertises Spark's own choice of this machine's address;
    # SPARK_LOCAL_IP is left alone, so the UI takes Spark's default (every interface).
    assert spark.driver_bind_conf(settings) == {"spark.driver.bindAddress": "0.0.0.0"}
    assert spark.driver_environment(settings) == {}
    command = lab.lab_command(8899, tmp_path, settings.bind_host)
    assert "--ServerApp.ip=0.0.0.0" in command
    assert not any("token" in part.lower() for part in command)  # the token stays (JUPYTER_TOKEN), never disabled


def test_the_spark_driver_environment_is_set_only_while_the_jvm_starts(monkeypatch) -> None:
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.1.2.3")
    with spark.environment({"SPARK_LOCAL_IP": "127.0.0.1"}):
        assert os.environ["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert os.environ["SPARK_LOCAL_IP"] == "10.1.2.3"
    monkeypatch.delenv("SPARK_LOCAL_IP")
    with spark.environment({"SPARK_LOCAL_IP": "127.0.0.1"}):
        pass
    assert "SPARK_LOCAL_IP" not in os.environ


def test_the_local_stack_refuses_an_address_its_localhost_clients_cannot_reach(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, bind_host="192.0.2.10")
    with pytest.raises(InfraError, match="BTCSTREAM_BIND_HOST=192.0.2.10.*loopback.*0.0.0.0"):
        KafkaBroker(settings).start()
    assert not (tmp_path / "kafka").exists()  # refused before anything was written or started


def test_the_exchange_command_binds_to_bind_host() -> None:
    env = {**os.environ, "BTCSTREAM_BIND_HOST": SECOND_LOOPBACK, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "btcstream", "exchange", "--port", "0", "--coingecko-port", "0",
                              "--ws-port", "0"], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        urls = json.loads(child.stdout.readline())
        bound = {(s.laddr.ip, s.laddr.port) for s in listening_sockets({child.pid})}
    finally:
        child.terminate()
        child.wait(timeout=30)
    assert {host for host, _ in bound} == {SECOND_LOOPBACK} and len(bound) == 3  # Binance, CoinGecko, streams
    for url in urls.values():
        assert url.split("//")[1].startswith(f"{SECOND_LOOPBACK}:")


def test_the_lab_command_uses_bind_host(monkeypatch, capsys) -> None:
    """`btcstream lab` checks its port on BTCSTREAM_BIND_HOST: taken there, it says so and starts nothing."""
    monkeypatch.setenv("BTCSTREAM_BIND_HOST", SECOND_LOOPBACK)
    with socket.socket() as busy:
        busy.bind((SECOND_LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["lab", "--no-browser", "--port", str(port)])
    assert code == 2
    assert f"port {port} on {SECOND_LOOPBACK} is taken" in capsys.readouterr().err


# --- integration: a full run, every listening socket of our processes -----------------------------------------

@dataclass(frozen=True)
class Listener:
    pid: int
    role: str
    ip: str
    port: int

    @property
    def on_loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return (mapped or address).is_loopback

    def __str__(self) -> str:
        return f"{self.role} (pid {self.pid}) listens on {self.ip}:{self.port}"


def listening_sockets(pids: set[int]):
    return [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def role_of(pid: int) -> str:
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "gone"
    command = command.replace(f"{sys.executable} -m btcstream", "btcstream")
    return next((role for role, marker in ROLES if marker in command), command[:120])


def process_tree(pid: int | None) -> set[int]:
    if pid is None:
        return set()
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def our_listeners(settings: Settings) -> list[Listener]:
    """Listening sockets of this test process, its descendants and the stack's services (and theirs)."""
    pids = (process_tree(os.getpid()) | process_tree(KafkaBroker(settings).pid())
            | process_tree(NameNode(settings).pid()) | process_tree(DataNode(settings).pid()))
    return [Listener(c.pid, role_of(c.pid), c.laddr.ip, c.laddr.port) for c in listening_sockets(pids)]


def wait_for(condition, what: str, timeout_s: float, *, job: StreamJob | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if job is not None and not job.alive():
            raise AssertionError(f"the stream job exited while waiting for {what}:\n{job.log_tail()}")
        if condition():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                         + (f":\n{job.log_tail()}" if job else ""))


def raw_rows(settings: Settings) -> int:
    try:
        return len(read_table(settings, "raw_data"))
    except OSError:
        return 0


def spark_ui_apps(port: int) -> list[str] | None:
    """The application names a Spark web UI on 127.0.0.1:`port` reports, None when it is no web UI."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/applications", timeout=60) as answer:
            return [app["name"] for app in json.load(answer)]
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return None


def start_kernel(server: lab.LabServer) -> None:
    request = urllib.request.Request(f"{server.base_url}/api/kernels?token={server.token}", method="POST",
                                     data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 201


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_full_run_listens_on_loopback_only(test_settings: Settings, tmp_path: Path) -> None:
    settings = test_settings.replace(spark_master="local[2]", trigger_interval_s=1.0, symbols=("BTCUSDT",))
    assert settings.bind_host == "127.0.0.1"  # the default
    exchange = spawn_exchange(speed=60.0)
    producer = job = server = None
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("BTCSTREAM_")}
        env.update({"BTCSTREAM_TOPIC": settings.topic, "BTCSTREAM_TRADES_TOPIC": settings.trades_topic,
                    "BTCSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BTCSTREAM_SYMBOLS": "BTCUSDT",
                    "BTCSTREAM_FEED": "websocket", "BTCSTREAM_BINANCE_URL": exchange.binance_url,
                    "BTCSTREAM_BINANCE_WS_URL": exchange.ws_url, "BTCSTREAM_COINGECKO_URL": exchange.coingecko_url,
                    "BTCSTREAM_STATE_DIR": str(settings.state_dir), "BTCSTREAM_CACHE_DIR": str(settings.cache_dir)})
        with open(tmp_path / "produce.log", "ab") as log:
            producer = subprocess.Popen([sys.executable, "-m", "btcstream", "produce"], env=env, cwd=REPO,
                                        stdout=log, stderr=subprocess.STDOUT)
        job = StreamJob(settings, tmp_path / "stream.log")
        job.start()
        wait_for(lambda: raw_rows(settings) > 0, "ticks from the exchange in raw_data", 300, job=job)

        server = lab.start_lab(port=0, notebook_dir=tmp_path, host=settings.bind_host)
        with pytest.raises(urllib.error.HTTPError) as refused:  # the token is still required
            urllib.request.urlopen(f"{server.base_url}/api/kernels", timeout=10)
        assert refused.value.code == 403
        start_kernel(server)
        wait_for(lambda: sum(s.role == "kernel" for s in our_listeners(settings)) >= 5,
                 "the kernel's five ZMQ ports", 120)

        assert producer.poll() is None, (tmp_path / "produce.log").read_text()[-3000:]
        listeners = our_listeners(settings)
        ui_apps = {s.port: spark_ui_apps(s.port) for s in listeners if s.role == "spark driver" and s.port in UI_PORTS}
    finally:
        if server is not None:
            server.stop()
        if job is not None:
            job.stop()
        if producer is not None:
            producer.terminate()
            producer.wait(timeout=60)
        exchange.stop()

    exposed = [str(listener) for listener in listeners if not listener.on_loopback]
    assert not exposed, "listening beyond this machine:\n  " + "\n  ".join(exposed)
    by_role: dict[str, list[int]] = {}
    for listener in listeners:
        by_role.setdefault(listener.role, []).append(listener.port)
    # The check covered every component: each one's listeners were there to be seen.
    assert {9092, 9093} <= set(by_role.get("kafka", [])), by_role
    assert {9000, 9870} <= set(by_role.get("hdfs namenode", [])), by_role
    # HTTP on 9864, data transfer, IPC and its internal HTTP server on ephemeral ports.
    assert 9864 in by_role.get("hdfs datanode", []) and len(by_role["hdfs datanode"]) >= 4, by_role
    assert len(by_role.get("spark driver", [])) >= 3, by_role  # RPC, block manager, UI (and py4j)
    assert ["btcstream-stream"] in ui_apps.values(), ui_apps  # the job's web UI was among them
    assert len(by_role.get("exchange", [])) == 3, by_role
    assert server.port in by_role.get("jupyterlab", []), by_role
