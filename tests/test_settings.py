"""Settings: YAML defaults, environment overrides, and one clear error per wrong value."""

from __future__ import annotations

from pathlib import Path
from datetime import timedelta

import pytest

from btcstream.errors import SettingsError
from btcstream.settings import DEFAULT_CONFIG_FILE, Settings, load_settings


def test_committed_defaults_are_the_documented_local_stack() -> None:
    settings = load_settings(env={})
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.storage_root == "hdfs://localhost:9000/bitcoin"
    assert settings.spark_master == "local[*]"
    assert settings.kafka_is_local and settings.hdfs_is_local
    assert (settings.hdfs_host, settings.hdfs_port) == ("localhost", 9000)
    assert settings.storage_url("raw_data") == "hdfs://localhost:9000/bitcoin/raw_data"


def test_environment_wins_over_the_config_file() -> None:
    settings = load_settings(env={
        "BTCSTREAM_KAFKA_BOOTSTRAP": "broker-1:9092,broker-2:9092",
        "BTCSTREAM_TOPIC": "ticks.v2",
        "BTCSTREAM_STORAGE_ROOT": "file:///tmp/btc",
        "BTCSTREAM_SPARK_MASTER": "spark://master:7077",
        "BTCSTREAM_SYMBOLS": "btcusdt, ethusdt",
        "BTCSTREAM_POLL_INTERVAL_S": "5",
    })
    assert settings.kafka_hosts == [("broker-1", 9092), ("broker-2", 9092)]
    assert not settings.kafka_is_local
    assert settings.topic == "ticks.v2"
    assert settings.storage_scheme == "file" and not settings.hdfs_is_local
    assert settings.storage_path == "/tmp/btc"
    assert settings.spark_master == "spark://master:7077"
    assert settings.symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.poll_interval_s == 5.0


@pytest.mark.parametrize(("variable", "value"), [
    ("BTCSTREAM_KAFKA_BOOTSTRAP", "no-port-here"),
    ("BTCSTREAM_TOPIC", "bad topic!"),
    ("BTCSTREAM_STORAGE_ROOT", "s3://bucket/x"),
    ("BTCSTREAM_STORAGE_ROOT", "file://relative/path"),
    ("BTCSTREAM_SPARK_MASTER", "local[two]"),
    ("BTCSTREAM_POLL_INTERVAL_S", "soon"),
    ("BTCSTREAM_POLL_INTERVAL_S", "0"),
    ("BTCSTREAM_SYMBOLS", "BTC/USDT"),
    ("BTCSTREAM_ALLOWED_LATENESS", "10 fortnights"),
    ("BTCSTREAM_BINANCE_WS_URL", "https://stream.binance.com"),
    ("BTCSTREAM_FEED", "carrier-pigeon"),
    ("BTCSTREAM_WS_MAX_QUOTES_HZ", "0"),
    ("BTCSTREAM_TRADES_TOPIC", "btc_ticks"),
    ("BTCSTREAM_RV_GRID", "7 minutes"),
    ("BTCSTREAM_RV_GRID", "2 hours"),
])
def test_a_wrong_value_names_the_setting(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(env={variable: value})
    assert variable in str(raised.value)
    assert value in str(raised.value)


def test_unknown_key_in_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "btcstream.yaml"
    config.write_text("kafka_bootstrp: localhost:9092\n")
    with pytest.raises(SettingsError, match="kafka_bootstrp.*unknown setting"):
        load_settings(env={}, config_file=config)


def test_secrets_are_never_read_from_the_config_file_nor_shown(tmp_path: Path) -> None:
    config = tmp_path / "btcstream.yaml"
    config.write_text("coingecko_api_key: abc\n")
    with pytest.raises(SettingsError, match="only from the environment"):
        load_settings(env={}, config_file=config)
    settings = load_settings(env={"BTCSTREAM_COINGECKO_API_KEY": "s3cret-key"})
    assert settings.coingecko_api_key == "s3cret-key"
    assert "s3cret-key" not in repr(settings)


def test_every_field_has_a_committed_default_or_is_a_secret() -> None:
    import yaml
    from dataclasses import fields

    documented = set(yaml.safe_load(DEFAULT_CONFIG_FILE.read_text()))
    optional = {"coingecko_api_key", "kafka_sasl_password", "kafka_sasl_username", "kafka_sasl_mechanism",
                "kafka_ssl_cafile", "kafka_security_protocol", "alert_command"}
    assert {f.name for f in fields(Settings)} - optional <= documented


def test_websocket_feed_settings_read_from_the_environment() -> None:
    settings = load_settings(env={"BTCSTREAM_BINANCE_WS_URL": "ws://127.0.0.1:9555", "BTCSTREAM_WS_MAX_QUOTES_HZ": "4",
                                  "BTCSTREAM_TRADES_TOPIC": "trades", "BTCSTREAM_RV_GRID": "5 minutes",
                                  "BTCSTREAM_FEED": "rest"})
    assert settings.binance_ws_url == "ws://127.0.0.1:9555"
    assert settings.ws_max_quotes_hz == 4.0
    assert settings.trades_topic == "trades"
    assert settings.rv_grid_span.total_seconds() == 300
    assert settings.feed == "rest"


def test_forecast_and_alert_settings_read_from_the_environment() -> None:
    settings = load_settings(env={"BTCSTREAM_FORECAST_MODELS": "ewma, har_rv", "BTCSTREAM_ALERT_WINDOW": "2 hours",
                                  "BTCSTREAM_ALERT_THRESHOLD": "4.5", "BTCSTREAM_ALERTS_TOPIC": "alerts",
                                  "BTCSTREAM_ALERT_COMMAND": "notify-send btc", "BTCSTREAM_FORECAST_REFIT_HOURS": "6"})
    assert settings.forecast_model_names == ("ewma", "har_rv")
    assert settings.alert_window_span == timedelta(hours=2) and settings.alert_threshold == 4.5
    assert settings.alerts_topic == "alerts" and settings.alert_command == "notify-send btc"
    assert settings.forecast_refit_hours == 6
    assert load_settings(env={"BTCSTREAM_FORECAST_MODELS": ""}).forecast_model_names == load_settings(env={}).forecast_model_names
    assert Settings(forecast_models="").forecast_model_names == ()


@pytest.mark.parametrize("name, value, expected", [
    ("BTCSTREAM_FORECAST_MODELS", "ewma,lstm", "unknown model 'lstm'"),
    ("BTCSTREAM_ALERT_WINDOW", "1 minute", "from '5 minutes'"),
    ("BTCSTREAM_ALERT_THRESHOLD", "0", "must be > 0"),
    ("BTCSTREAM_ALERTS_TOPIC", "btc_ticks", "must differ"),
])
def test_bad_forecast_and_alert_settings_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match=expected) as raised:
        load_settings(env={name: value})
    assert name in str(raised.value)
