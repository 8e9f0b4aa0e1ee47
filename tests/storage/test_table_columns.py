"""The JVM-free readers' empty frames have exactly the columns the streaming job writes.

An empty read is built from `btcstream.names`; a full read returns what the job wrote. This checks
the two against the job's own DataFrames, so a column added to a transform cannot drift away
from what `read_raw_ticks` / `read_hourly_metrics` return when nothing is stored yet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from btcstream.names import HOURLY_PARTITION_COLUMNS
from btcstream.settings import Settings
from btcstream.storage.readers import read_hourly_metrics, read_raw_ticks
from btcstream.streaming import job, transforms

pytestmark = pytest.mark.spark


def test_empty_reads_have_the_columns_the_job_writes(spark, tmp_path: Path) -> None:
    settings = Settings(storage_root=f"file://{tmp_path}/store")
    raw_columns = job.raw_schema(spark).fieldNames()
    enriched = spark.createDataFrame([], job.raw_schema(spark))
    hourly_columns = transforms.hourly_metrics(enriched).columns + list(HOURLY_PARTITION_COLUMNS)

    assert list(read_raw_ticks(settings).columns) == raw_columns
    assert list(read_hourly_metrics(settings).columns) == hourly_columns
