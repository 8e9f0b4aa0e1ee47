"""A single-node Kafka broker (KRaft, broker and controller in one `kafka.Kafka` process)."""

from __future__ import annotations

import base64
import secrets
import subprocess

from btcstream.errors import InfraError
from btcstream.infra import addresses, artifacts, processes
from btcstream.infra.gc_log import gc_log_options
from btcstream.infra.java import java_executable
from btcstream.infra.service import LocalService, log4j2_config

HEAP = "-Xmx512m"
# The log cleaner's dedupe buffer (keys of compacted topics: only __consumer_offsets here) is one heap
# array allocated at start, 128 MiB by Kafka's default: 80% of an idle broker's live heap (156 MiB,
# 44 with 16 MiB), which a soak once took for a leak. 32 MiB holds ~1.4 M keys per cleaning pass,
# far more than a local stack commits (Spark keeps its offsets in checkpoints); a larger segment is
# cleaned in several passes.
DEDUPE_BUFFER_BYTES = 32 * 2**20


class KafkaBroker(LocalService):
    """The broker on <bind_host>:<kafka_bootstrap port>, its controller on the next port (both 127.0.0.1 by default)."""

    name = "kafka"

    @property
    def ports(self) -> dict[str, int]:
        port = self.settings.kafka_hosts[0][1]
        return {"broker": port, "controller": port + 1}

    @property
    def config_file(self):
        return self.home / "server.properties"

    def server_properties(self) -> str:
        """server.properties: both listeners bound to `bind_host`, the broker advertised where clients reach it."""
        ports = self.ports
        bind = addresses.url_host(self.settings.bind_host)
        here = addresses.url_host(addresses.connect_host(self.settings.bind_host))
        advertised = addresses.url_host(addresses.advertised_host(self.settings.bind_host))
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{here}:{ports['controller']}",
            f"listeners=PLAINTEXT://{bind}:{ports['broker']},CONTROLLER://{bind}:{ports['controller']}",
            f"advertised.listeners=PLAINTEXT://{advertised}:{ports['broker']}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.data_dir}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            f"log.cleaner.dedupe.buffer.size={DEDUPE_BUFFER_BYTES}",
            "",
        ])

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.server_properties())
        (self.home / "log4j2.properties").write_text(log4j2_config("kafka.server"))
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _format_storage(self) -> None:
        """Format the KRaft log directory once; StorageTool calls exit, so it runs as its own JVM."""
        cluster_id = "-"
        while cluster_id.startswith("-"):  # a leading "-" would be read as an option (as Kafka's own Uuid avoids)
            cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        done = subprocess.run(
            [java_executable(), HEAP, "-cp", artifacts.classpath(self.settings, "kafka"), *self._log_options(),
             "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_file), "--ignore-formatted"],
            capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise InfraError(f"formatting Kafka storage in {self.data_dir} failed:\n{done.stdout}{done.stderr}")

    def _log_options(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}", f"-Dkafka.logs.dir={self.home}"]

    def command(self) -> list[str]:
        return [java_executable(), HEAP, "-Xms256m", "-XX:+UseG1GC", *gc_log_options(self.gc_log_file),
                "-Djava.awt.headless=true", f"-Dbtcstream.service={self.marker}", *self._log_options(),
                "-cp", artifacts.classpath(self.settings, "kafka"), "kafka.Kafka", str(self.config_file)]

    def health(self) -> tuple[bool, str]:
        """Healthy when the broker answers a metadata request."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        host = addresses.connect_host(self.settings.bind_host)
        if not processes.port_answers(self.ports["broker"], host):
            return False, "broker port not open yet"
        try:
            admin = KafkaAdminClient(bootstrap_servers=f"{addresses.url_host(host)}:{self.ports['broker']}",
                                     request_timeout_ms=3000)
        except (KafkaError, OSError, ValueError) as error:
            return False, f"no metadata answer ({type(error).__name__})"
        try:
            topics = [t for t in admin.list_topics() if not t.startswith("__")]
            return True, f"metadata OK, {len(topics)} topic(s)"
        except (KafkaError, OSError) as error:
            return False, f"metadata request failed ({type(error).__name__})"
        finally:
            admin.close()
