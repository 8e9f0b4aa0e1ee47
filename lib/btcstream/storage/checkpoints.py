"""Spark's checkpoint logs, read without Spark: committed Kafka offsets and event-time watermarks.

A checkpoint holds `offsets/<batch>` (planned batches: "v1", the batch metadata with the watermark,
then one line per source) and `commits/<batch>` (finished ones). `btcstream status` reads the
offsets for the Kafka lag; compaction reads the watermarks to know which partitions are closed.
"""

from __future__ import annotations

import json
import re

from btcstream.names import CHECKPOINTS_DIR
from btcstream.settings import Settings
from btcstream.storage.filesystem import storage_filesystem, storage_path

_BATCH_FILE = re.compile(r"^\d+$")


def committed_kafka_offsets(settings: Settings, checkpoint_folder: str) -> dict[int, int] | None:
    """Per partition, the next offset after the last committed batch of a Kafka-reading checkpoint."""
    fs = storage_filesystem(settings)
    checkpoint = storage_path(settings, CHECKPOINTS_DIR, checkpoint_folder)
    commits = _batch_ids(fs, f"{checkpoint}/commits")
    if not commits:
        return None
    with fs.open(f"{checkpoint}/offsets/{max(commits)}", "rb") as handle:
        lines = handle.read().decode().splitlines()
    # Offset log: "v1", the batch metadata (watermark, conf), then one line per source.
    offsets = json.loads(lines[2]).get(settings.topic, {})
    return {int(partition): int(offset) for partition, offset in offsets.items()}


def batch_watermark_ms(settings: Settings, checkpoint_folder: str, batches_back: int = 0) -> int | None:
    """The event-time watermark (epoch ms) of the newest planned batch of a checkpoint, or of one before it.

    Spark drops late rows with the previous batch's watermark (`batches_back=1`) and evicts state
    with the current one (`batches_back=0`).
    """
    fs = storage_filesystem(settings)
    checkpoint = storage_path(settings, CHECKPOINTS_DIR, checkpoint_folder)
    batches = sorted(_batch_ids(fs, f"{checkpoint}/offsets"))
    if len(batches) <= batches_back:
        return None
    with fs.open(f"{checkpoint}/offsets/{batches[-1 - batches_back]}", "rb") as handle:
        metadata = json.loads(handle.read().decode().splitlines()[1])
    return int(metadata.get("batchWatermarkMs", 0))


def late_cut_ms(settings: Settings, checkpoint_folder: str) -> int | None:
    """The watermark below which the checkpoint's query drops rows from now on (epoch ms).

    Spark drops late rows with the previous batch's watermark: an in-flight batch (planned, not
    committed) uses the one before it, the next batch after a committed one uses the newest.
    """
    fs = storage_filesystem(settings)
    checkpoint = storage_path(settings, CHECKPOINTS_DIR, checkpoint_folder)
    planned = sorted(_batch_ids(fs, f"{checkpoint}/offsets"))
    if not planned:
        return None
    in_flight = planned[-1] not in set(_batch_ids(fs, f"{checkpoint}/commits"))
    return batch_watermark_ms(settings, checkpoint_folder, batches_back=1 if in_flight else 0)


def _batch_ids(fs, directory: str) -> list[int]:
    if not fs.exists(directory):
        return []
    names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(directory, detail=False))
    return [int(name) for name in names if _BATCH_FILE.match(name)]
