"""btcstream.workbench.notebook: `parameters` literals become typed values and settings; notebook 02's live chart."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from btcstream.errors import SettingsError
from btcstream.workbench import notebook, plots


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


# --- the live chart of notebook 02 ---------------------------------------------------------------

def windows(count: int, symbols: tuple[str, ...] = ("BTCUSDT",)) -> pd.DataFrame:
    start = pd.Timestamp("2025-02-14", tz="UTC")
    return pd.DataFrame([{"symbol": symbol, "window_start": start + pd.Timedelta(minutes=15 * i),
                          "avg_spread_bps": 0.1 + i / 100, "realized_volatility": i / 1000}
                         for symbol in symbols for i in range(count)])


def test_live_figure_takes_new_data_in_place_and_keeps_the_view() -> None:
    live = go.FigureWidget(plots.window_spread_volatility(windows(3)))
    traces = list(live.data)
    live.layout.xaxis.range = ["2025-02-14T00:00", "2025-02-14T00:20"]  # the user zoomed in

    notebook.refresh_live_figure(live, plots.window_spread_volatility(windows(5)))
    assert all(mine is before for mine, before in zip(live.data, traces))  # updated, not replaced
    assert [len(trace.x) for trace in live.data] == [5, 5]
    assert list(live.data[0].y) == pytest.approx([0.1, 0.11, 0.12, 0.13, 0.14])
    assert live.layout.xaxis.range == ("2025-02-14T00:00", "2025-02-14T00:20")

    notebook.refresh_live_figure(live, plots.window_spread_volatility(windows(5, ("BTCUSDT", "ETHUSDT"))))
    assert sorted(trace.name for trace in live.data) == ["BTCUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT"]
    assert live.layout.xaxis.range == ("2025-02-14T00:00", "2025-02-14T00:20")


class FakeQuery:
    """The parts of a StreamingQuery that `watch_view` uses."""

    name = "spread_volatility_by_window"
    stopped = False

    def exception(self):
        return None

    def stop(self) -> None:
        self.stopped = True


class FakeHandle:
    def __init__(self) -> None:
        self.updates: list = []

    def update(self, shown, raw: bool = False) -> None:
        self.updates.append(shown)


def test_watch_view_updates_one_widget_then_leaves_a_static_figure(monkeypatch) -> None:
    import itertools

    import IPython.display
    import plotly.io as pio

    monkeypatch.setattr(pio.renderers, "default", notebook.PLOTLY_RENDERERS)  # as notebook.setup() sets it
    shown, handle = [], FakeHandle()
    monkeypatch.setattr(IPython.display, "display", lambda obj, **options: shown.append(obj) or handle)
    frames = (windows(count) for count in itertools.count(2))  # one more window at each read
    query = FakeQuery()

    last = notebook.watch_view(query, lambda: next(frames), plots.window_spread_volatility,
                               duration_s=0.25, every_s=0.1, catch_up=False)

    (widget,) = shown
    assert isinstance(widget, go.FigureWidget) and widget.layout.uirevision == notebook.LIVE_UI_REVISION
    assert len(last) == len(widget.data[0].x) >= 4  # the widget followed every frame up to the last
    final = handle.updates[-1]
    assert "application/vnd.plotly.v1+json" in final  # a static figure replaces the widget in the saved notebook
    assert "application/vnd.jupyter.widget-view+json" not in final
    assert len(final["application/vnd.plotly.v1+json"]["data"][0]["x"]) == len(last)
    assert query.stopped
