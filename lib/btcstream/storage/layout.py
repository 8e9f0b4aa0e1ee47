"""Which layout a storage root holds: Delta tables, the old file-sink folders, or nothing yet.

Before Delta Lake, the job wrote each dataset as a Spark file sink: Parquet files plus a
`_spark_metadata` log naming the committed ones. A Delta table has a `_delta_log` instead. The
two must never be mixed in one folder (a Delta writer would ignore the old files, a file-sink
reader the new ones), so the job, the readers and `status` call `require_delta_layout` first and
stop with one line naming `btcstream migrate` when they meet the old layout.
"""

from __future__ import annotations

from typing import Sequence

from btcstream.errors import LegacyLayout
from btcstream.names import DATASETS, DELTA_LOG_DIR, LEGACY_SINK_LOG_DIR
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path


def legacy_datasets(settings: Settings, datasets: Sequence[str] = DATASETS) -> list[str]:
    """The datasets under the storage root written by the old file-sink layout and not imported yet."""
    fs = storage_filesystem(settings)
    found = []
    for dataset in datasets:
        root = storage_path(settings, dataset)
        if fs.exists(f"{root}/{LEGACY_SINK_LOG_DIR}") and not fs.exists(f"{root}/{DELTA_LOG_DIR}"):
            found.append(dataset)
    return found


def require_delta_layout(settings: Settings, datasets: Sequence[str] = DATASETS) -> None:
    """Raise `LegacyLayout` (one line: what was found, the command that imports it) if any dataset is legacy."""
    legacy = legacy_datasets(settings, datasets)
    if legacy:
        raise LegacyLayout(
            f"{settings.storage_root} holds {', '.join(legacy)} in the old file-sink layout (no Delta log): "
            f"run `btcstream migrate` to import their committed files into Delta tables")
