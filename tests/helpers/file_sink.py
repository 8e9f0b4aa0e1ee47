"""Datasets laid out as Spark's file sink writes them, for reader, report and notebook tests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_file_sink(dataset: Path, frame: pd.DataFrame, time_column: str, *, by_hour: bool = False,
                    naive_timestamps: bool = True, uncommitted: pd.DataFrame | None = None) -> list[Path]:
    """Write `frame` as a Spark file sink would: hive partitions, then a `_spark_metadata/0` log.

    `uncommitted` rows go to a data file that the log does not list (a half-written batch).
    """

    def write(rows: pd.DataFrame, tag: str) -> list[Path]:
        paths = []
        rows = rows.copy()
        rows["date"] = rows[time_column].dt.strftime("%Y-%m-%d")
        rows["hour"] = rows[time_column].dt.hour
        keys = ["date", "hour"] if by_hour else ["date"]
        for values, part in rows.groupby(keys):
            values = values if isinstance(values, tuple) else (values,)
            directory = dataset.joinpath(*(f"{k}={v}" for k, v in zip(keys, values)))
            directory.mkdir(parents=True, exist_ok=True)
            data = part.drop(columns=["date", "hour"])
            path = directory / f"part-{tag}-{len(paths):05d}.snappy.parquet"
            # As Spark writes them: INT96 by default, else microseconds adjusted to UTC.
            pq.write_table(pa.Table.from_pandas(data, preserve_index=False), path,
                           use_deprecated_int96_timestamps=naive_timestamps, coerce_timestamps=None if naive_timestamps else "us")
            paths.append(path)
        return paths

    written = write(frame, "committed")
    if uncommitted is not None:
        write(uncommitted, "halfwritten")
    log = dataset / "_spark_metadata"
    log.mkdir(parents=True, exist_ok=True)
    lines = ["v1"] + [json.dumps({"path": f"file://{p}", "size": p.stat().st_size, "isDir": False,
                                  "modificationTime": 0, "blockReplication": 1, "blockSize": 1,
                                  "action": "add"}) for p in written]
    (log / "0").write_text("\n".join(lines) + "\n")
    return written
