"""One typed settings object for every btcstream component.

Defaults live in the package data file `resources/btcstream.yaml`; environment variables
`BTCSTREAM_<NAME>` win over them; secrets come only from the environment. Tests build
`Settings(...)` explicitly or call `load_settings(env={...})`. Not for: per-command flags (the CLI
passes those on directly).
"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import timedelta
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import yaml

from btcstream.errors import SettingsError
from btcstream.names import FORECAST_MODELS
from btcstream.resources import default_config_file

ENV_PREFIX = "BTCSTREAM_"
DEFAULT_CONFIG_FILE = default_config_file()
SECRET_FIELDS = frozenset({"coingecko_api_key", "kafka_sasl_password"})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
FEEDS = ("websocket", "rest")  # the producer's live feeds (`btcstream produce --feed`)
_DURATION = re.compile(r"^\s*\d+\s+(second|minute|hour|day)s?\s*$")


@dataclass(frozen=True)
class Settings:
    """Everything btcstream can be configured with; see resources/btcstream.yaml for the meaning."""

    kafka_bootstrap: str = "localhost:9092"
    topic: str = "btc_ticks"
    topic_partitions: int = 3
    topic_retention_hours: int = 168
    storage_root: str = "hdfs://localhost:9000/bitcoin"
    webhdfs_port: int = 9870
    spark_master: str = "local[*]"
    trigger_interval_s: float = 10.0
    allowed_lateness: str = "10 minutes"
    max_offsets_per_trigger: int = 500_000
    symbols: tuple[str, ...] = ("BTCUSDT",)
    poll_interval_s: float = 60.0
    binance_url: str = "https://api.binance.com"
    binance_ws_url: str = "wss://stream.binance.com:9443"
    feed: str = "websocket"
    ws_max_quotes_hz: float = 10.0
    ws_buffer_size: int = 10_000
    ws_stale_after_s: float = 30.0
    trades_topic: str = "btc_trades"
    rv_grid: str = "1 minute"
    forecast_models: str = "ewma,har_rv,garch11,gradient_boosting"
    forecast_refit_hours: int = 24
    alerts_topic: str = "btc_alerts"
    alert_window: str = "60 minutes"
    alert_threshold: float = 6.0
    alert_command: str | None = None
    bind_host: str = "127.0.0.1"
    coingecko_url: str = "https://api.coingecko.com/api/v3"
    coingecko_min_interval_s: float = 30.0
    coingecko_api_key: str | None = field(default=None, repr=False)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ssl_cafile: str | None = None
    state_dir: Path = Path("~/.local/state/btcstream").expanduser()
    cache_dir: Path = Path("~/.cache/btcstream").expanduser()

    def __post_init__(self) -> None:
        _validate(self)

    # Derived values, computed from the fields above (never stored twice).
    @property
    def kafka_hosts(self) -> list[tuple[str, int]]:
        """The (host, port) pairs of `kafka_bootstrap`."""
        return [_host_port("BTCSTREAM_KAFKA_BOOTSTRAP", part) for part in self.kafka_bootstrap.split(",")]

    @property
    def kafka_is_local(self) -> bool:
        """True when every bootstrap server is on this machine (so `infra up` runs the broker)."""
        return all(host in LOCAL_HOSTS for host, _ in self.kafka_hosts)

    @property
    def storage_scheme(self) -> str:
        """`hdfs` or `file`."""
        return urlparse(self.storage_root).scheme

    @property
    def hdfs_host(self) -> str | None:
        """The NameNode host of an `hdfs://` storage root, else None."""
        return urlparse(self.storage_root).hostname if self.storage_scheme == "hdfs" else None

    @property
    def hdfs_port(self) -> int | None:
        """The NameNode RPC port of an `hdfs://` storage root (8020 when omitted), else None."""
        if self.storage_scheme != "hdfs":
            return None
        return urlparse(self.storage_root).port or 8020

    @property
    def hdfs_is_local(self) -> bool:
        """True when the storage root is an HDFS on this machine (so `infra up` runs HDFS)."""
        return self.storage_scheme == "hdfs" and self.hdfs_host in LOCAL_HOSTS

    @property
    def storage_path(self) -> str:
        """The path part of the storage root, e.g. `/bitcoin`."""
        return urlparse(self.storage_root).path.rstrip("/") or "/"

    @property
    def allowed_lateness_span(self) -> timedelta:
        """`allowed_lateness` ("10 minutes", validated on load) as a timedelta."""
        return _span(self.allowed_lateness)

    @property
    def rv_grid_span(self) -> timedelta:
        """`rv_grid` ("1 minute": the realized-volatility sampling grid) as a timedelta."""
        return _span(self.rv_grid)

    @property
    def forecast_model_names(self) -> tuple[str, ...]:
        """`forecast_models` ("ewma,har_rv,...") as a tuple; empty: the job writes no live forecasts."""
        return tuple(name.strip() for name in self.forecast_models.split(",") if name.strip())

    @property
    def alert_window_span(self) -> timedelta:
        """`alert_window` (the trailing window of 1-minute bars the alert baseline is taken over) as a timedelta."""
        return _span(self.alert_window)

    def storage_url(self, *parts: str) -> str:
        """A URL under the storage root: `storage_url("raw_data")` -> `hdfs://.../bitcoin/raw_data`."""
        return "/".join([self.storage_root.rstrip("/"), *parts])

    def replace(self, **changes: object) -> "Settings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_settings(
    env: Mapping[str, str] | None = None, config_file: Path | None = DEFAULT_CONFIG_FILE
) -> Settings:
    """Read defaults from `config_file` (if it exists), then override from `env` (default os.environ)."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, object] = {}
    if config_file is not None and Path(config_file).exists():
        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        for name, raw in loaded.items():
            if name not in known:
                raise SettingsError(name, raw, f"unknown setting in {config_file}; known: {', '.join(known)}")
            if name in SECRET_FIELDS:
                raise SettingsError(name, "***", f"secrets are read only from the environment ({ENV_PREFIX}{name.upper()})")
            values[name] = _coerce(name, known[name].type, raw)
    for name, spec in known.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(ENV_PREFIX + name.upper(), spec.type, raw)
    return Settings(**values)  # type: ignore[arg-type]


def _coerce(label: str, type_name: object, raw: object) -> object:
    """Turn a YAML or environment value into the field's type, or raise a SettingsError naming it."""
    kind = str(type_name)
    try:
        if kind.startswith("int"):
            return int(raw)  # type: ignore[arg-type]
        if kind.startswith("float"):
            return float(raw)  # type: ignore[arg-type]
        if kind.startswith("tuple"):
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            return tuple(str(item).strip().upper() for item in items if str(item).strip())
        if kind.startswith("Path"):
            return Path(str(raw)).expanduser()
        return None if raw is None else str(raw)
    except (TypeError, ValueError):
        raise SettingsError(label, raw, f"expected {kind}") from None


def _span(duration: str) -> timedelta:
    """"10 minutes" -> timedelta(minutes=10) (the format `_DURATION` accepts)."""
    count, unit = duration.split()
    return timedelta(**{unit.rstrip("s") + "s": int(count)})


def _host_port(label: str, text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SettingsError(label, text, "expected host:port[,host:port...]")
    return host.strip("[]"), int(port)


def _validate(s: Settings) -> None:
    """Reject values that would only fail later, far from their cause."""
    s.kafka_hosts  # raises on a malformed bootstrap list
    for name in ("topic", "trades_topic", "alerts_topic"):
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", getattr(s, name)):
            raise SettingsError(ENV_PREFIX + name.upper(), getattr(s, name),
                                "a Kafka topic name uses only letters, digits, '.', '_' and '-'")
    if s.trades_topic == s.topic:
        raise SettingsError("BTCSTREAM_TRADES_TOPIC", s.trades_topic, "must differ from BTCSTREAM_TOPIC (quotes)")
    if s.alerts_topic in (s.topic, s.trades_topic):
        raise SettingsError("BTCSTREAM_ALERTS_TOPIC", s.alerts_topic, "must differ from the quote and trade topics")
    unknown = [name for name in s.forecast_model_names if name not in FORECAST_MODELS]
    if unknown:
        raise SettingsError("BTCSTREAM_FORECAST_MODELS", s.forecast_models,
                            f"unknown model {unknown[0]!r}; expected some of {','.join(FORECAST_MODELS)} (or empty for none)")
    if not _DURATION.match(s.alert_window) or not timedelta(minutes=5) <= s.alert_window_span <= timedelta(days=1):
        raise SettingsError("BTCSTREAM_ALERT_WINDOW", s.alert_window, "expected a window from '5 minutes' to '1 day'")
    if not s.alert_threshold > 0:
        raise SettingsError("BTCSTREAM_ALERT_THRESHOLD", s.alert_threshold, "must be > 0 (a robust z-score)")
    if s.forecast_refit_hours <= 0:
        raise SettingsError("BTCSTREAM_FORECAST_REFIT_HOURS", s.forecast_refit_hours, "must be a positive integer")
    if s.bind_host not in LOCAL_HOSTS and not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+|[A-Za-z0-9.-]+", s.bind_host):
        raise SettingsError("BTCSTREAM_BIND_HOST", s.bind_host, "expected an address such as 127.0.0.1 or 0.0.0.0")
    parsed = urlparse(s.storage_root)
    if parsed.scheme == "hdfs":
        if not parsed.hostname:
            raise SettingsError("BTCSTREAM_STORAGE_ROOT", s.storage_root, "expected hdfs://namenode:port/path")
    elif parsed.scheme == "file":
        if not parsed.path.startswith("/") or parsed.netloc not in ("", "localhost"):
            raise SettingsError("BTCSTREAM_STORAGE_ROOT", s.storage_root, "expected file:///absolute/path")
    else:
        raise SettingsError("BTCSTREAM_STORAGE_ROOT", s.storage_root, "expected hdfs://host:port/path or file:///absolute/path")
    if not re.fullmatch(r"local(\[(\*|\d+)(,\d+)?\])?|spark://[^/]+|yarn|k8s://.+", s.spark_master):
        raise SettingsError("BTCSTREAM_SPARK_MASTER", s.spark_master, "expected local[*], local[N], spark://host:7077, yarn or k8s://...")
    if not _DURATION.match(s.allowed_lateness):
        raise SettingsError("BTCSTREAM_ALLOWED_LATENESS", s.allowed_lateness, "expected e.g. '10 minutes'")
    if not _DURATION.match(s.rv_grid) or s.rv_grid_span > timedelta(hours=1) or 3600 % s.rv_grid_span.total_seconds():
        raise SettingsError("BTCSTREAM_RV_GRID", s.rv_grid, "expected a step that divides an hour, e.g. '1 minute' or '5 minutes'")
    if s.feed not in FEEDS:
        raise SettingsError("BTCSTREAM_FEED", s.feed, f"expected one of {', '.join(FEEDS)}")
    for name in ("trigger_interval_s", "poll_interval_s", "coingecko_min_interval_s", "ws_max_quotes_hz", "ws_stale_after_s"):
        if not getattr(s, name) > 0:
            raise SettingsError(ENV_PREFIX + name.upper(), getattr(s, name), "must be > 0")
    for name in ("topic_partitions", "topic_retention_hours", "max_offsets_per_trigger", "webhdfs_port", "ws_buffer_size"):
        if getattr(s, name) <= 0:
            raise SettingsError(ENV_PREFIX + name.upper(), getattr(s, name), "must be a positive integer")
    if not s.symbols or not all(re.fullmatch(r"[A-Z0-9]{2,20}", sym) for sym in s.symbols):
        raise SettingsError("BTCSTREAM_SYMBOLS", ",".join(s.symbols), "expected comma-separated symbols such as BTCUSDT,ETHUSDT")
    for name in ("binance_url", "coingecko_url"):
        if urlparse(getattr(s, name)).scheme not in ("http", "https"):
            raise SettingsError(ENV_PREFIX + name.upper(), getattr(s, name), "expected an http(s):// URL")
    if urlparse(s.binance_ws_url).scheme not in ("ws", "wss"):
        raise SettingsError("BTCSTREAM_BINANCE_WS_URL", s.binance_ws_url, "expected a ws:// or wss:// URL")
