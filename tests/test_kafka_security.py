"""Kafka SASL/SSL options for kafka-python and Spark, built from Settings; secrets never shown."""

from __future__ import annotations

import logging

import pytest

from btcstream.errors import SettingsError
from btcstream.kafka_security import kafka_python_options, spark_kafka_options
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
