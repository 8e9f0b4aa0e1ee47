"""Spark's checkpoint logs, read without Spark: the Kafka offsets a query has committed.

A checkpoint holds `offsets/<batch>` (planned batches: "v1", the batch metadata with the watermark,
then one line per source) and `commits/<batch>` (finished ones). `btcstream status` reads the
offsets for the Kafka lag; `btcstream migrate` reads the old job's to say where the new one starts.
"""

from __future__ import annotations

import json
import re

from btcstream.names import CHECKPOINTS_DIR
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path

_BATCH_FILE = re.compile(r"^\d+$")


def committed_kafka_offsets(settings: Settings, checkpoint_folder: str, topic: str | None = None) -> dict[int, int] | None:
    """Per partition of `topic` (default the quote topic), the next offset after the last committed batch
    of a Kafka-reading checkpoint."""
    fs = storage_filesystem(settings)
    checkpoint = storage_path(settings, CHECKPOINTS_DIR, checkpoint_folder)
    commits = _batch_ids(fs, f"{checkpoint}/commits")
    if not commits:
        return None
    with fs.open(f"{checkpoint}/offsets/{max(commits)}", "rb") as handle:
        lines = handle.read().decode().splitlines()
    # Offset log: "v1", the batch metadata (watermark, conf), then one line per source.
    offsets = json.loads(lines[2]).get(topic or settings.topic, {})
    return {int(partition): int(offset) for partition, offset in offsets.items()}


def _batch_ids(fs, directory: str) -> list[int]:
    if not fs.exists(directory):
        return []
    names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(directory, detail=False))
    return [int(name) for name in names if _BATCH_FILE.match(name)]
