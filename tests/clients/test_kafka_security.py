"""Kafka SASL/SSL options for kafka-python and Spark, built from Settings; secrets never shown."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from btcstream.errors import SettingsError
from btcstream.infra import processes
from btcstream.infra.kafka import KafkaBroker
from btcstream.clients.kafka import JAAS_LOGIN_MODULES, jaas_quote, kafka_python_options, spark_kafka_options
from btcstream.settings import Settings, load_settings

SECRET = 'pa"ss\\w0rd-s3cr3t'


def sasl_settings(tmp_path, protocol="SASL_SSL", mechanism="SCRAM-SHA-512", **changes) -> Settings:
    cafile = tmp_path / "ca.pem"
    cafile.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return Settings(kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism, kafka_sasl_username="alice",
                    kafka_sasl_password=SECRET, kafka_ssl_cafile=str(cafile)).replace(**changes)


def test_plaintext_is_the_default_and_adds_nothing_else():
    assert kafka_python_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert spark_kafka_options(Settings()) == {"kafka.security.protocol": "PLAINTEXT"}


def test_sasl_ssl_for_kafka_python(tmp_path):
    settings = sasl_settings(tmp_path)
    assert kafka_python_options(settings) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
        "ssl_cafile": str(tmp_path / "ca.pem"),
    }


def test_sasl_ssl_for_spark_uses_a_jaas_config_with_escaped_quotes(tmp_path):
    options = spark_kafka_options(sasl_settings(tmp_path))
    assert options == {
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                                  'username="alice" password="pa\\"ss\\\\w0rd-s3cr3t";',
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": str(tmp_path / "ca.pem"),
    }


def test_plain_mechanism_uses_the_plain_login_module_and_no_truststore_without_ssl(tmp_path):
    options = spark_kafka_options(sasl_settings(tmp_path, protocol="SASL_PLAINTEXT", mechanism="plain"))
    assert options["kafka.sasl.mechanism"] == "PLAIN"
    assert options["kafka.sasl.jaas.config"].startswith("org.apache.kafka.common.security.plain.PlainLoginModule required ")
    assert "kafka.ssl.truststore.location" not in options
    assert "ssl_cafile" not in kafka_python_options(sasl_settings(tmp_path, protocol="SASL_PLAINTEXT", mechanism="PLAIN"))


def test_ssl_only_verifies_the_server_with_the_ca_file(tmp_path):
    settings = sasl_settings(tmp_path, protocol="SSL", mechanism=None, kafka_sasl_username=None, kafka_sasl_password=None)
    assert kafka_python_options(settings) == {"security_protocol": "SSL", "ssl_cafile": str(tmp_path / "ca.pem")}
    assert spark_kafka_options(settings)["kafka.ssl.truststore.type"] == "PEM"


def test_secrets_are_masked_in_repr_str_and_logs(tmp_path, caplog):
    settings = sasl_settings(tmp_path)
    python_options, spark_options = kafka_python_options(settings), spark_kafka_options(settings)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("kafka options %s / %r", python_options, spark_options)
    for text in (repr(python_options), str(python_options), repr(spark_options), f"{spark_options}",
                 caplog.text, repr(settings)):
        assert "s3cr3t" not in text
    assert "***" in repr(python_options) and "***" in repr(spark_options)
    assert "alice" in repr(python_options)  # only the secret is hidden


def test_secrets_come_from_the_environment(tmp_path):
    settings = load_settings(env={"BTCSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                  "BTCSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
                                  "BTCSTREAM_KAFKA_SASL_USERNAME": "bob",
                                  "BTCSTREAM_KAFKA_SASL_PASSWORD": SECRET}, config_file=None)
    assert kafka_python_options(settings)["sasl_plain_password"] == SECRET


@pytest.mark.parametrize("changes, name", [
    ({"kafka_security_protocol": "TLS"}, "BTCSTREAM_KAFKA_SECURITY_PROTOCOL"),
    ({"kafka_sasl_mechanism": "GSSAPI"}, "BTCSTREAM_KAFKA_SASL_MECHANISM"),
    ({"kafka_sasl_mechanism": None}, "BTCSTREAM_KAFKA_SASL_MECHANISM"),
    ({"kafka_sasl_username": None}, "BTCSTREAM_KAFKA_SASL_USERNAME"),
    ({"kafka_sasl_password": None}, "BTCSTREAM_KAFKA_SASL_PASSWORD"),
    ({"kafka_ssl_cafile": "/nonexistent/ca.pem"}, "BTCSTREAM_KAFKA_SSL_CAFILE"),
])
def test_incomplete_security_settings_fail_with_the_setting_named(tmp_path, changes, name):
    settings = sasl_settings(tmp_path, **changes)
    for build in (kafka_python_options, spark_kafka_options):
        with pytest.raises(SettingsError) as error:
            build(settings)
        assert error.value.name == name
        assert "s3cr3t" not in str(error.value)


# --- A real SASL broker: the options are accepted by Kafka itself, from kafka-python and from Spark ---

SASL_USER, SASL_PASSWORD = "alice", 'al"ce\\s3cr3t pass'  # a quote, a backslash and a space, as in real secrets


class SaslPlainBroker(KafkaBroker):
    """The project's local broker with its client listener switched to SASL_PLAINTEXT + PLAIN."""

    def prepare(self) -> None:
        super().prepare()
        port = self.ports["broker"]
        text = self.config_file.read_text()
        for old, new in ((f"PLAINTEXT://127.0.0.1:{port}", f"SASL_PLAINTEXT://127.0.0.1:{port}"),
                         ("inter.broker.listener.name=PLAINTEXT", "inter.broker.listener.name=SASL_PLAINTEXT"),
                         ("PLAINTEXT:PLAINTEXT", "SASL_PLAINTEXT:SASL_PLAINTEXT")):
            assert old in text, old
            text = text.replace(old, new)
        self.config_file.write_text(text + "sasl.enabled.mechanisms=PLAIN\nsasl.mechanism.inter.broker.protocol=PLAIN\n")

    def command(self) -> list[str]:
        # On the command line rather than in server.properties, so the JAAS text is not also
        # subject to .properties escaping.
        users = (f'username="admin" password="admin-pw" user_admin="admin-pw" '
                 f'user_{SASL_USER}="{jaas_quote(SASL_PASSWORD)}"')
        return [*super().command(), "--override",
                f"listener.name.sasl_plaintext.plain.sasl.jaas.config={JAAS_LOGIN_MODULES['PLAIN']} required {users};"]

    def health(self) -> tuple[bool, str]:
        from kafka import KafkaAdminClient

        if not processes.port_answers(self.ports["broker"]):
            return False, "broker port not open yet"
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=3000,
                                     **kafka_python_options(self.settings))
        except Exception as error:  # noqa: BLE001 (any failure means not ready yet)
            return False, type(error).__name__
        admin.close()
        return True, "SASL metadata OK"


def free_port_pair() -> int:
    """An OS-assigned ephemeral port P on 127.0.0.1 with P+1 also free (broker and controller)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535 and processes.port_is_free(port) and processes.port_is_free(port + 1):
            return port
    raise RuntimeError("no free pair of ports")


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port_pair()}", topic="secured-ticks",
                        state_dir=tmp_path_factory.mktemp("sasl-kafka"), kafka_security_protocol="SASL_PLAINTEXT",
                        kafka_sasl_mechanism="PLAIN", kafka_sasl_username=SASL_USER, kafka_sasl_password=SASL_PASSWORD)
    broker = SaslPlainBroker(settings)
    broker.start()
    try:
        yield settings
    finally:
        broker.stop()


SPARK_READ = """
import json
from btcstream.clients.kafka import spark_kafka_options
from btcstream.settings import load_settings
from btcstream.clients.spark import spark_session
settings = load_settings()
spark = spark_session(settings, "sasl-read")
rows = (spark.read.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .options(**spark_kafka_options(settings)).option("subscribe", settings.topic)
        .option("startingOffsets", "earliest").load())
print(json.dumps(sorted(r.value.decode() for r in rows.select("value").collect())))
spark.stop()
"""


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_kafka_python_and_spark_authenticate_to_a_real_sasl_broker(sasl_broker):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    settings = sasl_broker
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **kafka_python_options(settings))
    try:
        for index in range(5):
            producer.send(settings.topic, key=b"BTCUSDT", value=f'{{"n": {index}}}'.encode())
        producer.flush(timeout=60)
    finally:
        producer.close()

    wrong = settings.replace(kafka_sasl_password="not-the-password")
    with pytest.raises(KafkaError):
        KafkaProducer(bootstrap_servers=wrong.kafka_bootstrap, request_timeout_ms=5000, max_block_ms=10000,
                      **kafka_python_options(wrong)).send(wrong.topic, b"x").get(timeout=15)

    env = {key: value for key, value in os.environ.items() if not key.startswith("BTCSTREAM_")}
    env.update({"BTCSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BTCSTREAM_TOPIC": settings.topic, "BTCSTREAM_TRADES_TOPIC": settings.trades_topic,
                "BTCSTREAM_SPARK_MASTER": "local[1]", "BTCSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "BTCSTREAM_KAFKA_SASL_MECHANISM": "PLAIN", "BTCSTREAM_KAFKA_SASL_USERNAME": SASL_USER,
                "BTCSTREAM_KAFKA_SASL_PASSWORD": SASL_PASSWORD, "SPARK_LOCAL_IP": "127.0.0.1",
                "PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false pyspark-shell"})
    done = subprocess.run([sys.executable, "-c", SPARK_READ], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == sorted(f'{{"n": {i}}}' for i in range(5))
    assert "s3cr3t" not in done.stderr  # Spark's own logs never print the JAAS password
