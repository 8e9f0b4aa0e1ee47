"""The report of all four notebooks over one real pipeline run, as `btcstream report` builds it.

Notebook 01 replays a day of real BTCUSDT history through the exchange, producer, Kafka and the
streaming job into a fresh topic and HDFS root; 02, 03 and 04 read what it stored. Built once per
test session (the `pipeline_report` fixture in conftest.py): the notebook test checks the values it
shows, the browser test renders its pages, and neither pays for a second pipeline run.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from btcstream.settings import Settings


def report_settings(stack: Settings) -> Settings:
    """Fresh topics and a fresh storage root on the session's stack."""
    topic = f"test-{uuid.uuid4().hex[:10]}"
    return stack.replace(topic=topic, trades_topic=f"{topic}-trades", alerts_topic=f"{topic}-alerts",
                         storage_root=stack.storage_url(uuid.uuid4().hex[:8]))


def build_pipeline_report(settings: Settings, output_dir: Path) -> list:
    """Execute the four notebooks in order into `output_dir`; their `NotebookRun`s."""
    from btcstream.workbench.report import (FORECAST_NOTEBOOK, HOURLY_NOTEBOOK, PIPELINE_NOTEBOOK,
                                            STREAMING_NOTEBOOK, build_report)

    common = {"storage_root": settings.storage_root, "topic": settings.topic, "spark_master": "local[2]"}
    return build_report({
        PIPELINE_NOTEBOOK: {**common, "trades_topic": settings.trades_topic,
                            "duration_s": 40, "replay_speed": 1800, "progress_every_s": 5,
                            "replay_start": "2021-05-19T00:00"},
        STREAMING_NOTEBOOK: {**common, "duration_s": 8, "refresh_every_s": 4, "window": "15 minutes"},
        HOURLY_NOTEBOOK: {"storage_root": settings.storage_root, "engine": "pyarrow"},
        # A quick walk-forward (48 forecasts per model): the notebook's default of 2000 takes minutes.
        FORECAST_NOTEBOOK: {"storage_root": settings.storage_root, "evaluate_periods": 48, "min_train": 200},
    }, output_dir=output_dir)
