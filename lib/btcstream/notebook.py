"""What keeps the notebooks thin: one setup call, and notebook parameters turned into typed values.

A notebook's `parameters` cell holds plain literals (strings, numbers, booleans) so papermill can
inject and document them; these helpers turn them into Settings, time ranges and symbol lists.
Not for: reading data (`btcstream.storage.readers`), charts (`btcstream.plots`) or running the
pipeline (`btcstream.pipeline`).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

from btcstream.errors import SettingsError
from btcstream.settings import Settings, load_settings
from btcstream.storage.readers import TimeRange

# Plotly's JSON: JupyterLab draws it, the tests read the data behind each figure from it, and
# `btcstream.report` turns it into offline HTML (plotly.js inlined once per page).
PLOTLY_RENDERERS = "plotly_mimetype"
NOTEBOOK_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(log_level: str = "INFO") -> None:
    """Configure logging (to the cell's stderr) and plotly's renderers; call once at the top."""
    import plotly.io as pio

    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(NOTEBOOK_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    for noisy in ("py4j", "kafka", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pio.renderers.default = PLOTLY_RENDERERS


def settings_for(storage_root: str = "", **overrides: object) -> Settings:
    """The project's settings (config file + BTCSTREAM_* environment) with non-empty overrides applied."""
    changes = {name: value for name, value in overrides.items() if value not in ("", None)}
    if storage_root:
        changes["storage_root"] = storage_root
    if "symbols" in changes and isinstance(changes["symbols"], str):
        changes["symbols"] = tuple(symbols_list(str(changes["symbols"])) or ())
    return load_settings().replace(**changes) if changes else load_settings()


def symbols_list(text: str) -> list[str] | None:
    """`"btcusdt, ETHUSDT"` -> `["BTCUSDT", "ETHUSDT"]`; an empty string means every symbol (None)."""
    symbols = [part.strip().upper() for part in text.split(",") if part.strip()]
    return symbols or None


def utc_time(text: str) -> datetime | None:
    """An ISO time as aware UTC (no offset means UTC); an empty string means unbounded (None)."""
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SettingsError("time", text, "expected an ISO time such as 2025-02-14T10:00 (UTC)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def time_range(start: str = "", end: str = "") -> TimeRange:
    """The [start, end) range of two ISO strings, either possibly empty."""
    return TimeRange(utc_time(start), utc_time(end))
