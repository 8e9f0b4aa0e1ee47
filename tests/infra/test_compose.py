"""docker-compose.yml validates with a real Compose parser and agrees with the package's settings.

No Docker engine runs here: `docker compose config` (v2 plugin) or Debian's `docker-compose config`
(installed by .ci/install-compose.sh) parses, validates and interpolates the file; the tests then
check the resolved model against Settings, config/ and pyspark.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pyspark
import pytest
import yaml

from btcstream import names
from btcstream.infra.artifacts import SPARK_COMPONENTS
from btcstream.resources import pom_dir
from btcstream.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
BTCSTREAM_SERVICES = ("spark-worker", "producer", "stream", "jupyter")
LONG_RUNNING = ("kafka", "namenode", "datanode", "spark-master", "spark-worker", "jupyter")
STORAGE_LAYOUT = ("raw_data", "hourly_metrics", "checkpoints", "quarantine", "trades", "klines", "forecasts", "alerts")


def compose_command() -> list[str] | None:
    """`docker compose` when the v2 plugin exists, else `docker-compose`, else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose model as the parser resolves it (interpolated, env_file inlined, anchors merged)."""
    command = compose_command()
    if command is None:
        message = "no Compose parser: run .ci/install-compose.sh (apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Interpolate without the caller's BTCSTREAM_*/JUPYTER_TOKEN so the defaults are what is checked.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("BTCSTREAM_", "JUPYTER_", "COMPOSE_"))}
    done = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} config rejected docker-compose.yml:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    """The file as written (for paths the parser makes absolute)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service_settings(compose: dict, name: str):
    """The Settings a btcstream container builds: the package defaults, then its environment."""
    environment = {key: str(value) for key, value in compose["services"][name]["environment"].items()
                   if value is not None}
    return load_settings(env=environment)


def published_ports(service: dict) -> list[tuple[str, int, int]]:
    """(host_ip, host_port, container_port) of a service, from v1 strings or v2 mappings."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            host_ip = parts[0] if len(parts) == 3 else ""
            ports.append((host_ip, int(parts[-2]) if len(parts) >= 2 else 0, int(parts[-1])))
    return ports


def hadoop_property(file_name: str, name: str) -> str:
    root = ElementTree.parse(REPO / "config" / "hadoop" / file_name).getroot()
    values = [p.findtext("value") for p in root.iter("property") if p.findtext("name") == name]
    assert len(values) == 1, f"{name} set {len(values)} times in {file_name}"
    return values[0].strip()


def spark_version_of(image: str) -> str:
    """`apache/spark:4.2.0-scala2.13-...` -> `4.2.0`."""
    repository, _, tag = image.partition(":")
    assert repository == "apache/spark", image
    return tag.split("-")[0]


def test_every_component_is_a_service(compose):
    assert set(compose["services"]) == {"kafka", "kafka-init", "namenode", "datanode", "hdfs-init", "spark-master",
                                        "spark-worker", "producer", "stream", "jupyter"}
    assert compose["services"]["producer"]["command"] == ["btcstream", "produce"]
    assert compose["services"]["stream"]["command"] == ["btcstream", "stream"]
    for name in BTCSTREAM_SERVICES:
        assert compose["services"][name]["build"]["dockerfile"] == "docker/Dockerfile"


def test_spark_images_are_exactly_the_pinned_pyspark_version(compose):
    assert spark_version_of(compose["services"]["spark-master"]["image"]) == pyspark.__version__
    dockerfile_image = re.search(r"^ARG SPARK_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    assert spark_version_of(dockerfile_image) == pyspark.__version__
    # The master and the worker's distribution come from the same image tag.
    assert dockerfile_image == compose["services"]["spark-master"]["image"]
    pom = (pom_dir() / "spark-kafka" / "pom.xml").read_text()
    assert f"<version>{pyspark.__version__}</version>" in pom


def test_published_ports_are_loopback_only(compose):
    for name, service in compose["services"].items():
        for host_ip, _, _ in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes a port on {host_ip or 'every interface'}"


def test_kafka_listeners_match_the_settings_inside_and_outside_the_network(compose):
    kafka = compose["services"]["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    for name in BTCSTREAM_SERVICES:
        assert f"{service_settings(compose, name).kafka_bootstrap}" == advertised["INTERNAL"]
    # Programs on the host use the package default (localhost:9092), published on loopback.
    host_default = load_settings(env={})
    assert advertised["HOST"] == host_default.kafka_bootstrap
    (host, port), = host_default.kafka_hosts
    assert ("127.0.0.1", port, int(listeners["HOST"].rsplit(":", 1)[1])) in published_ports(compose["services"]["kafka"])
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_topic_is_created_with_the_configured_name_partitions_and_retention(compose):
    settings = service_settings(compose, "stream")
    assert settings.topic == load_settings(env={}).topic  # compose does not rename the topic
    command = compose["services"]["kafka-init"]["command"]
    option = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    assert option["--topic"] == settings.topic
    assert int(option["--partitions"]) == settings.topic_partitions
    assert option["--config"] == f"retention.ms={settings.topic_retention_hours * 3600 * 1000}"
    assert option["--bootstrap-server"] == settings.kafka_bootstrap


def test_storage_root_matches_the_namenode_and_the_init_layout(compose):
    for name in BTCSTREAM_SERVICES:
        settings = service_settings(compose, name)
        assert settings.storage_root == "hdfs://namenode:8020/bitcoin"
        assert f"hdfs://{settings.hdfs_host}:{settings.hdfs_port}" == hadoop_property("core-site.xml", "fs.defaultFS")
        assert f"{settings.hdfs_host}:{settings.hdfs_port}" == hadoop_property("hdfs-site.xml", "dfs.namenode.rpc-address")
        assert hadoop_property("hdfs-site.xml", "dfs.namenode.http-address").endswith(f":{settings.webhdfs_port}")
    created = compose["services"]["hdfs-init"]["command"]
    assert created[:4] == ["hdfs", "dfs", "-mkdir", "-p"]
    assert created[4:] == [settings.storage_url(folder) for folder in STORAGE_LAYOUT]
    assert hadoop_property("hdfs-site.xml", "dfs.webhdfs.enabled") == "true"
    assert ("127.0.0.1", settings.webhdfs_port, settings.webhdfs_port) in published_ports(compose["services"]["namenode"])


def test_the_storage_layout_covers_every_dataset_the_readers_know():
    assert {*names.DATASETS, names.CHECKPOINTS_DIR} == set(STORAGE_LAYOUT)


def test_the_parser_really_rejects_a_broken_file(compose, tmp_path):
    """Guards against a parser that accepts anything: a dependency on a missing service fails."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  a:\n    image: busybox\n    depends_on:\n      missing:\n"
                      "        condition: service_healthy\n")
    done = subprocess.run([*compose_command(), "-f", str(broken), "config"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "missing" in done.stderr


def test_spark_master_url_and_driver_configuration(compose):
    master = compose["services"]["spark-master"]["command"]
    host = master[master.index("--host") + 1]
    port = master[master.index("--port") + 1]
    worker = compose["services"]["spark-worker"]["command"]
    assert worker[-1] == f"spark://{host}:{port}"
    for name in BTCSTREAM_SERVICES:
        assert service_settings(compose, name).spark_master == f"spark://{host}:{port}"
        environment = compose["services"][name]["environment"]
        assert environment["SPARK_CONF_DIR"] == "/opt/btcstream/config/spark"
        assert environment["HADOOP_CONF_DIR"] == "/opt/btcstream/config/hadoop"


def test_secrets_pass_through_from_the_host_and_are_never_written_in_the_file(compose):
    for name in BTCSTREAM_SERVICES:
        environment = compose["services"][name]["environment"]
        for secret in ("BTCSTREAM_KAFKA_SASL_PASSWORD", "BTCSTREAM_COINGECKO_API_KEY"):
            assert secret in environment and environment[secret] is None


def test_long_running_services_have_healthchecks_and_dependents_wait_for_them(compose):
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency.endswith("-init") else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"
    assert set(services["stream"]["depends_on"]) == {"kafka-init", "hdfs-init", "spark-worker"}


def test_data_lives_on_named_volumes(compose):
    assert set(compose["volumes"]) == {"kafka-data", "hdfs-namenode", "hdfs-datanode"}
    mounts = {name: [str(v) if not isinstance(v, dict) else f"{v['source']}:{v['target']}" for v in s.get("volumes", [])]
              for name, s in compose["services"].items()}
    assert any(m.startswith("kafka-data:/var/lib/kafka/data") for m in mounts["kafka"])
    assert hadoop_property("hdfs-site.xml", "dfs.namenode.name.dir") == "file:///data/hdfs/name"
    assert any(m.startswith("hdfs-namenode:/data/hdfs/name") for m in mounts["namenode"])
    assert hadoop_property("hdfs-site.xml", "dfs.datanode.data.dir") == "file:///data/hdfs/data"
    assert any(m.startswith("hdfs-datanode:/data/hdfs/data") for m in mounts["datanode"])
    assert compose["services"]["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_every_cluster_config_file_is_used_by_compose(raw_compose):
    """config/hadoop, config/kafka and config/spark hold only files that compose mounts or passes."""
    referenced: set[Path] = set()
    for service in raw_compose["services"].values():
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            referenced.add((REPO / env_file).resolve())
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                referenced.add((REPO / source).resolve())
    for folder in ("hadoop", "kafka", "spark"):
        for path in (REPO / "config" / folder).iterdir():
            assert path.resolve() in referenced or path.parent.resolve() in referenced, f"{path} is not used"


def test_dockerfile_installs_the_project_and_the_connector_the_code_expects():
    text = DOCKERFILE.read_text()
    # A regular install (package data carries the defaults, POMs and notebooks), from the repo's files.
    assert "pip install --no-cache-dir /tmp/btcstream-src" in text and " -e " not in text
    # Every jar set a SparkSession loads is resolved at build time, with the completion marker.
    for component in SPARK_COMPONENTS:
        assert f"COPY lib/btcstream/resources/maven/{component}/pom.xml /build/{component}/pom.xml" in text
    assert f"for component in {' '.join(SPARK_COMPONENTS)}; do" in text and ".complete" in text
    assert "COPY --from=connector /jars /opt/btcstream/cache/jars/" in text
    assert "ENV BTCSTREAM_CACHE_DIR=/opt/btcstream/cache" in text
    # The drivers' interpreter, which PySpark also asks executors to run.
    assert "PYSPARK_PYTHON=/opt/btcstream/venv/bin/python" in text
    assert re.search(r"^FROM python:3\.11-", text, re.MULTILINE), "the image's Python must be the project's (3.11)"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "*" in ignored and "!lib" in ignored  # never send .venv or data into the build context
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        if "--from=" not in line:  # from the build context, not from another stage
            for source in [word for word in line.split() if not word.startswith("--")][:-1]:
                assert f"!{source.split('/')[0]}" in ignored, f"{source} is left out of the build context"
