"""btcstream.workbench.notebook: a notebook's `parameters` cell literals become typed values and settings."""

from __future__ import annotations

import pytest

from btcstream.errors import SettingsError
from btcstream.workbench import notebook


def test_notebook_parameters_become_typed_values() -> None:
    assert notebook.symbols_list(" btcusdt, ETHUSDT ,") == ["BTCUSDT", "ETHUSDT"]
    assert notebook.symbols_list("") is None
    assert notebook.utc_time("2025-02-14T10:00").isoformat() == "2025-02-14T10:00:00+00:00"
    assert notebook.utc_time("2025-02-14T12:00+02:00").isoformat() == "2025-02-14T10:00:00+00:00"
    assert notebook.utc_time("") is None
    with pytest.raises(SettingsError):
        notebook.utc_time("yesterday")
    settings = notebook.settings_for("file:///tmp/x", topic="", symbols="ethusdt", poll_interval_s=5.0)
    assert settings.storage_root == "file:///tmp/x" and settings.symbols == ("ETHUSDT",)
    assert settings.poll_interval_s == 5.0 and settings.topic  # an empty override keeps the setting
