"""Secrets never show: the CoinGecko API key and the Kafka SASL password appear in no log, status output,
notebook, report, feed-status or progress document, or exception text.

The real run (integration, ~1.5 min): with sentinel secrets in the environment, `btcstream -v produce
--source replay` (REST and WebSocket feeds: CoinGecko is polled with the key) into fresh topics of the
shared broker, `btcstream status` (tables and --json), `btcstream report --only 03` on a file:// root;
then every byte the run wrote (stdout/stderr, the storage root, state and cache folders, the executed
notebook and its HTML) is searched for the sentinels, and a hit fails naming the file.

The SASL password: the local broker speaks PLAINTEXT, and a password set with PLAINTEXT is refused (it
would go unused) with one line that names the setting and not the value; the run checks that. The SASL
path itself is checked here without a SASL broker, on the objects that carry the password: the client
options and the JAAS config Spark gets hide it in repr/str/logs, and every error about it masks it.
(A round trip through a real SASL broker is tests/clients/test_kafka_security.py's.)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from btcstream.clients.kafka import kafka_python_options, spark_kafka_options
from btcstream.errors import SettingsError, SourceUnavailable
from btcstream.ingest.sources.coingecko import API_KEY_HEADER, CoinGeckoClient
from btcstream.settings import Settings, load_settings

def sentinel(kind: str) -> str:
    return f"sentinel-{kind}-{uuid.uuid4().hex}"

def files_containing(folder: Path, *secrets: str) -> list[str]:
    """Every file under `folder` whose bytes contain one of `secrets` (as UTF-8), relative names."""
    needles = [secret.encode() for secret in secrets]
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and any(needle in path.read_bytes() for needle in needles))

def sasl_settings(password: str, **changes: object) -> Settings:
    values = dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                  kafka_sasl_username="alice", kafka_sasl_password=password)
    return Settings(**{**values, **changes})

# --- the objects that carry a secret ---------------------------------------------------------

def test_settings_repr_and_str_hide_both_secrets() -> None:
    key, password = sentinel("key"), sentinel("password")
    settings = sasl_settings(password, coingecko_api_key=key)
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert key not in text and password not in text
    assert settings.coingecko_api_key == key  # the value is there, only hidden

def test_a_secret_in_the_config_file_is_refused_without_echo(tmp_path: Path) -> None:
    key = sentinel("key")
    config = tmp_path / "btcstream.yaml"
    config.write_text(f"coingecko_api_key: {key}\n")
    with pytest.raises(SettingsError) as error:
        load_settings(env={}, config_file=config)
    assert key not in str(error.value) and "BTCSTREAM_COINGECKO_API_KEY" in str(error.value)

@pytest.mark.parametrize("build", [kafka_python_options, spark_kafka_options])
def test_a_sasl_password_with_plaintext_is_refused_without_echo(build) -> None:
    password = sentinel("password")
    with pytest.raises(SettingsError) as error:
        build(Settings(kafka_sasl_password=password))
    assert error.value.name == "BTCSTREAM_KAFKA_SASL_PASSWORD"
    assert password not in str(error.value) and password not in repr(error.value)
    assert "PLAINTEXT" in str(error.value) and "SASL_SSL" in str(error.value)

def test_the_jaas_config_and_client_options_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    password = sentinel("password")
    settings = sasl_settings(password)
    spark_options, python_options = spark_kafka_options(settings), kafka_python_options(settings)
    assert password in spark_options["kafka.sasl.jaas.config"]  # Spark gets it ...
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("btcstream.test").info("options %s %r %s", spark_options, python_options, [spark_options])
    for text in (repr(spark_options), str(spark_options), f"{spark_options}", repr(python_options),
                 str(python_options), repr({"nested": spark_options}), caplog.text):
        assert password not in text  # ... and no text shows it

@pytest.mark.parametrize("missing", ["kafka_sasl_username", "kafka_sasl_mechanism"])
def test_an_incomplete_sasl_setup_is_refused_without_the_password(missing: str) -> None:
    password = sentinel("password")
    for build in (kafka_python_options, spark_kafka_options):
        with pytest.raises(SettingsError) as error:
            build(sasl_settings(password, **{missing: None}))
        assert password not in str(error.value)

@pytest.mark.parametrize("bad", ["sentinel-key with a space", "sentinel-kéy", "sentinel-key\x00"])
def test_a_key_no_header_can_carry_is_refused_without_echo(bad: str) -> None:
    # Left to `requests`, such a key ends as InvalidHeader/UnicodeEncodeError quoting the whole value.
    with pytest.raises(SettingsError) as error:
        CoinGeckoClient("http://127.0.0.1:9/api/v3", api_key=bad)
    assert "sentinel" not in str(error.value) and error.value.name == "BTCSTREAM_COINGECKO_API_KEY"

def test_a_pasted_key_loses_its_surrounding_whitespace() -> None:
    key = sentinel("key")
    client = CoinGeckoClient("http://127.0.0.1:9/api/v3", api_key=f" {key}\n")
    assert client.http.headers[API_KEY_HEADER] == key
    assert key not in repr(client) and key not in repr(client.http)

def test_http_failures_and_their_retries_do_not_show_the_key(caplog: pytest.LogCaptureFixture) -> None:
    key = sentinel("key")
    client = CoinGeckoClient("http://127.0.0.1:1/api/v3", api_key=key)  # nothing listens on port 1
    client.http.sleep = lambda seconds: None
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceUnavailable) as error:
        client.markets(["bitcoin"])
    assert key not in str(error.value) and key not in repr(error.value) and key not in caplog.text

# --- a real run with sentinel secrets ----------------------------------------------------------

def cli(argv: list[str], env: dict[str, str], out: Path, name: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m btcstream <argv>`, its stdout and stderr also kept as files under `out` (searched later)."""
    result = subprocess.run([sys.executable, "-m", "btcstream", *argv], env=env, cwd=out, capture_output=True,
                            text=True, timeout=timeout)
    (out / f"{name}.stdout").write_text(result.stdout)
    (out / f"{name}.stderr").write_text(result.stderr)
    return result

def run_env(settings: Settings, home: Path, secrets: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BTCSTREAM_")}
    env.update({"BTCSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BTCSTREAM_TOPIC": settings.topic,
                "BTCSTREAM_TRADES_TOPIC": settings.trades_topic, "BTCSTREAM_ALERTS_TOPIC": settings.alerts_topic,
                "BTCSTREAM_STORAGE_ROOT": f"file://{home}/root", "BTCSTREAM_STATE_DIR": str(home / "state"),
                "BTCSTREAM_CACHE_DIR": str(home / "cache"), "BTCSTREAM_POLL_INTERVAL_S": "1",
                "BTCSTREAM_COINGECKO_MIN_INTERVAL_S": "1"})
    env.update(secrets)
    return env

@pytest.mark.integration
@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_a_real_run_shows_neither_secret_anywhere(test_settings: Settings, tmp_path: Path) -> None:
    key, password = sentinel("key"), sentinel("password")
    home = tmp_path / "run"
    home.mkdir()
    env = run_env(test_settings, home, {"BTCSTREAM_COINGECKO_API_KEY": f" {key}\n"})  # as pasted, newline and all

    rest = cli(["-v", "produce", "--source", "replay", "--feed", "rest", "--max-polls", "5"], env, home, "produce-rest")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "coins/markets" in rest.stderr  # CoinGecko was called (with the key: test_coingecko_client checks the header)

    with open(home / "produce-ws.stdout", "w") as out, open(home / "produce-ws.stderr", "w") as err:
        ws = subprocess.Popen([sys.executable, "-m", "btcstream", "-v", "produce", "--source", "replay", "--feed", "websocket"],
                              env=env, cwd=home, stdout=out, stderr=err)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (home / "state" / "feed" / f"{test_settings.topic}.json").exists():
            time.sleep(0.5)
        time.sleep(5)
        ws.send_signal(signal.SIGINT)
        ws.wait(timeout=60)
    assert (home / "state" / "feed" / f"{test_settings.topic}.json").exists(), (home / "produce-ws.stderr").read_text()[-3000:]
    assert "coins/markets" in (home / "produce-ws.stderr").read_text()

    status = cli(["-v", "status"], env, home, "status")
    status_json = cli(["status", "--json"], env, home, "status-json")
    assert status.stdout and status_json.stdout, status.stderr[-3000:]
    report = cli(["-v", "report", "--only", "03", "--output-dir", str(home / "reports")], env, home, "report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert list((home / "reports").glob("03_*.ipynb")) and list((home / "reports").glob("03_*.html"))

    # The SASL password: with the local PLAINTEXT broker it is refused, in one line without its value.
    refused = cli(["-v", "produce", "--source", "replay", "--feed", "rest", "--max-polls", "1"],
                  {**env, "BTCSTREAM_KAFKA_SASL_PASSWORD": password}, home, "produce-sasl-plaintext")
    assert refused.returncode == 2, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("btcstream: error: setting BTCSTREAM_KAFKA_SASL_PASSWORD='***': is set but"), last
    status_sasl = cli(["status"], {**env, "BTCSTREAM_KAFKA_SASL_PASSWORD": password}, home, "status-sasl")
    assert status_sasl.stdout or status_sasl.stderr

    written = sorted(str(path.relative_to(home)) for path in home.rglob("*") if path.is_file())
    assert any(name.startswith("state/feed/") for name in written) and any(name.startswith("reports/") for name in written)
    assert files_containing(home, key, password) == [], "a secret leaked into these files"
