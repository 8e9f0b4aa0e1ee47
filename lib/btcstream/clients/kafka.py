"""Kafka client security options (SASL/SSL) for managed or secured Kafka clusters, from Settings.

Two shapes of the same settings: keyword arguments for kafka-python clients (producer, admin,
consumer) and `kafka.`-prefixed options for Spark's Kafka source. The result is a dict whose
repr/str mask the password, so logging it never leaks a secret. Not for: choosing bootstrap
servers or topics (callers pass those themselves).

Supported: PLAINTEXT, SSL (server verified against `kafka_ssl_cafile`, a PEM file),
SASL_PLAINTEXT and SASL_SSL with mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
"""

from __future__ import annotations

from pathlib import Path

from btcstream.errors import SettingsError
from btcstream.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# The JAAS login module that Kafka's Java client needs for each SASL mechanism we support.
JAAS_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
MASK = "***"


class SecretOptions(dict):
    """A plain dict of client options whose repr/str hide the values of secret keys."""

    def __init__(self, options: dict[str, object], secret_keys: frozenset[str]) -> None:
        super().__init__(options)
        self.secret_keys = secret_keys

    def __repr__(self) -> str:
        shown = {key: (MASK if key in self.secret_keys else value) for key, value in self.items()}
        return repr(shown)

    __str__ = __repr__


def kafka_python_options(settings: Settings) -> SecretOptions:
    """Keyword arguments for kafka-python's KafkaProducer/KafkaConsumer/KafkaAdminClient.

    Example: `KafkaProducer(bootstrap_servers=..., **kafka_python_options(settings))`.
    """
    protocol = _protocol(settings)
    options: dict[str, object] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism, username, password = _sasl_credentials(settings)
        options.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password)
    if protocol.endswith("SSL") and settings.kafka_ssl_cafile:
        options["ssl_cafile"] = str(_cafile(settings))
    return SecretOptions(options, frozenset({"sasl_plain_password"}))


def spark_kafka_options(settings: Settings) -> SecretOptions:
    """Options for Spark's Kafka source/sink (`readStream.format("kafka").options(**...)`).

    Kafka client properties go through with a `kafka.` prefix. The CA file must exist at the
    same path on every executor (it is read there, by the Java client, as a PEM truststore).
    """
    protocol = _protocol(settings)
    options: dict[str, object] = {"kafka.security.protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism, username, password = _sasl_credentials(settings)
        module = JAAS_LOGIN_MODULES[mechanism]
        options["kafka.sasl.mechanism"] = mechanism
        options["kafka.sasl.jaas.config"] = (
            f'{module} required username="{jaas_quote(username)}" password="{jaas_quote(password)}";'
        )
    if protocol.endswith("SSL") and settings.kafka_ssl_cafile:
        options["kafka.ssl.truststore.type"] = "PEM"
        options["kafka.ssl.truststore.location"] = str(_cafile(settings))
    return SecretOptions(options, frozenset({"kafka.sasl.jaas.config"}))


def _protocol(settings: Settings) -> str:
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in PROTOCOLS:
        raise SettingsError("BTCSTREAM_KAFKA_SECURITY_PROTOCOL", settings.kafka_security_protocol,
                            f"expected one of {', '.join(PROTOCOLS)}")
    if settings.kafka_sasl_password and not protocol.startswith("SASL_"):
        # A password that would silently go unused is a misconfiguration; never echo its value.
        raise SettingsError("BTCSTREAM_KAFKA_SASL_PASSWORD", MASK,
                            f"is set but BTCSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} does not use it: "
                            "set SASL_SSL or SASL_PLAINTEXT (with the mechanism and username), or unset the password")
    return protocol


def _sasl_credentials(settings: Settings) -> tuple[str, str, str]:
    """(mechanism, username, password) for a SASL protocol, or a SettingsError naming what is missing."""
    mechanism = (settings.kafka_sasl_mechanism or "").strip().upper()
    if mechanism not in JAAS_LOGIN_MODULES:
        raise SettingsError("BTCSTREAM_KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism,
                            f"with {settings.kafka_security_protocol} expected one of {', '.join(JAAS_LOGIN_MODULES)}")
    if not settings.kafka_sasl_username:
        raise SettingsError("BTCSTREAM_KAFKA_SASL_USERNAME", settings.kafka_sasl_username,
                            f"required with {settings.kafka_security_protocol}")
    if not settings.kafka_sasl_password:
        # Never echo the value of a secret, even an empty one.
        raise SettingsError("BTCSTREAM_KAFKA_SASL_PASSWORD", MASK,
                            f"required with {settings.kafka_security_protocol}; set it in the environment")
    return mechanism, settings.kafka_sasl_username, settings.kafka_sasl_password


def _cafile(settings: Settings) -> Path:
    path = Path(str(settings.kafka_ssl_cafile)).expanduser()
    if not path.is_file():
        raise SettingsError("BTCSTREAM_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile, "no such file (expected a PEM CA bundle)")
    return path


def jaas_quote(text: str) -> str:
    """Escape a value for a double-quoted JAAS option (Kafka parses it with Java's StreamTokenizer)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
