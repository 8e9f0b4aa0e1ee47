"""`btcstream migrate` on a storage root of the old file-sink layout (file:// root, local Spark + Delta):
only committed files are imported, each tick once; hourly rows are recomputed from raw_data; the
quarantine keeps bytes; the new job's start offsets are the old queries' minimum; the old folders
move under legacy/; an interrupted migration resumes without losing or duplicating a row; a second
run has nothing to do."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from btcstream import cli
from btcstream.errors import LegacyLayout
from btcstream.names import HOURLY_COLUMNS
from btcstream.settings import Settings
from btcstream.storage.layout import require_delta_layout
from btcstream.streaming import migration
from helpers.file_sink import write_file_sink
from helpers.hourly import assert_hourly_equal, hourly_frame, independent_hourly
from helpers.ticks import kafka_frame, random_ticks

pytestmark = pytest.mark.spark

TOPIC = "old_ticks"


def enriched(spark, ticks) -> pd.DataFrame:
    """Ticks as the old raw sink stored them (tick fields + derived columns; the helper adds date/hour)."""
    from btcstream.streaming import parse, transforms

    frame = transforms.enrich(parse.valid_ticks(parse.classify(kafka_frame(spark, [t.to_json() for t in ticks]))))
    return frame.drop("date", "hour").toPandas()


def write_checkpoint(root: Path, folder: str, batch: int, offsets: dict[str, int]) -> None:
    """offsets/<batch> and commits/<batch> as Spark writes them: version, batch metadata, one line per source."""
    checkpoint = root / "checkpoints" / folder
    (checkpoint / "offsets").mkdir(parents=True)
    (checkpoint / "commits").mkdir(parents=True)
    metadata = {"batchWatermarkMs": 0, "batchTimestampMs": 0, "conf": {}}
    (checkpoint / "offsets" / str(batch)).write_text("\n".join(["v1", json.dumps(metadata), json.dumps({TOPIC: offsets})]))
    (checkpoint / "commits" / str(batch)).write_text('v1\n{"nextBatchWatermarkMs":0}')


@pytest.fixture
def old_root(spark, tmp_path: Path):
    """An old-layout root: raw (one tick stored twice, a stray uncommitted file), quarantine, hourly, checkpoints."""
    ticks = random_ticks(150)
    committed, stray = ticks[:280], ticks[280:]
    raw = enriched(spark, committed + committed[:1])  # the old job could store a tick twice
    write_file_sink(tmp_path / "raw_data", raw, "event_time", by_hour=True, uncommitted=enriched(spark, stray))
    quarantine = pd.DataFrame({
        "value": ["{not json", "déjà vu ✓"], "reason": ["unparseable JSON", "unparseable JSON"],
        "topic": [TOPIC, TOPIC], "partition": [0, 1], "offset": [7, 9],
        "kafka_timestamp": pd.to_datetime(["2025-02-14T09:30:00", "2025-02-15T01:00:00"]),
        "detected_at": pd.to_datetime(["2025-02-14T09:30:01", "2025-02-15T01:00:01"])})
    write_file_sink(tmp_path / "quarantine", quarantine, "kafka_timestamp")
    write_file_sink(tmp_path / "hourly_metrics", hourly_frame(), "window_start")
    write_checkpoint(tmp_path, "raw", 4, {"0": 120, "1": 80})
    write_checkpoint(tmp_path, "quarantine", 6, {"0": 110, "1": 95, "2": 5})
    write_checkpoint(tmp_path, "hourly", 2, {"logOffset": 3})
    (tmp_path / "checkpoints" / "progress").mkdir()
    (tmp_path / "checkpoints" / "progress" / "btcstream_raw.json").write_text("{}")
    settings = Settings(storage_root=f"file://{tmp_path}", topic=TOPIC, allowed_lateness="10 minutes")
    return settings, committed, stray


def raw_keys(url: str) -> list[tuple]:
    from deltalake import DeltaTable

    table = DeltaTable(url).to_pyarrow_table(columns=["symbol", "event_time"])
    return sorted(zip(table.column("symbol").to_pylist(), table.column("event_time").to_pylist()))


def tick_keys(ticks) -> list[tuple]:
    return sorted((t.symbol, pd.Timestamp(t.event_time).to_pydatetime()) for t in ticks)


def test_migrate_imports_committed_rows_once_rebuilds_hourly_and_moves_the_old_layout_aside(
        spark, old_root, tmp_path: Path, monkeypatch, capsys) -> None:
    settings, committed, stray = old_root
    with pytest.raises(LegacyLayout, match="btcstream migrate"):
        require_delta_layout(settings)

    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)
    monkeypatch.setenv("BTCSTREAM_TOPIC", TOPIC)
    assert cli.main(["migrate", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert all(name in dry for name in ("raw_data", "quarantine", "hourly_metrics", "checkpoints"))
    assert (tmp_path / "raw_data" / "_spark_metadata").exists()  # the dry run changed nothing

    plan = migration.plan_migration(settings)
    assert plan.start_offsets == {0: 110, 1: 80, 2: migration.EARLIEST_OFFSET}
    said: list[str] = []
    rows = migration.migrate(spark, settings, plan, say=said.append)
    require_delta_layout(settings)  # no old-layout dataset left
    assert rows == {"raw_data": len(committed), "quarantine": 2, "hourly_metrics": 6}
    assert len(said) == 4 and said[1] == f"raw_data: {len(committed)} rows imported"

    got = raw_keys(settings.storage_url("raw_data"))
    assert got == tick_keys(committed)  # every committed tick exactly once, the stray file's ticks absent
    assert not set(tick_keys(stray)) & set(got)

    hourly = spark.read.format("delta").load(settings.storage_url("hourly_metrics")).toPandas()
    assert_hourly_equal(hourly[list(HOURLY_COLUMNS)], independent_hourly(committed))
    assert set(hourly.revision) == {1}
    newest_hour = hourly.window_start.max()
    assert hourly.loc[hourly.window_start < newest_hour, "is_final"].all()  # more than 10 minutes behind the clock
    assert not hourly.loc[hourly.window_start == newest_hour, "is_final"].any()

    from deltalake import DeltaTable

    quarantine = DeltaTable(settings.storage_url("quarantine")).to_pyarrow_table().to_pylist()
    by_offset = {row["offset"]: row for row in quarantine}
    assert by_offset[9]["value"] == "déjà vu ✓".encode() and by_offset[9]["value_preview"] == "déjà vu ✓"
    assert by_offset[7]["value"] == b"{not json"

    start = json.loads((tmp_path / "checkpoints" / "ingest-start-offsets.json").read_text())
    assert start == {"topic": TOPIC, "offsets": {"0": 110, "1": 80, "2": -2}}
    legacy = tmp_path / "legacy" / plan.stamp
    for moved in ("raw_data/_spark_metadata", "quarantine/_spark_metadata", "hourly_metrics/_spark_metadata",
                  "checkpoints/raw/commits/4", "checkpoints/quarantine", "checkpoints/hourly",
                  "checkpoints/progress/btcstream_raw.json"):
        assert (legacy / moved).exists(), moved
    assert not (tmp_path / "checkpoints" / "raw").exists()
    assert json.loads((legacy / "migration.json").read_text())["finished_at"] is not None

    again = migration.plan_migration(settings)
    assert again.empty and again.lines(settings)[0].startswith("nothing to migrate")
    assert cli.main(["migrate"]) == 0 and "nothing to migrate" in capsys.readouterr().out


def test_an_interrupted_migration_resumes_without_losing_or_duplicating_rows(spark, old_root, tmp_path: Path,
                                                                            monkeypatch) -> None:
    settings, committed, _ = old_root
    move = migration._move

    def crash_before_raw_is_renamed(fs, source: str, target: str) -> None:
        if source.endswith("raw_data.importing"):
            raise KeyboardInterrupt("killed between moving the old raw_data aside and renaming the import")
        move(fs, source, target)

    monkeypatch.setattr(migration, "_move", crash_before_raw_is_renamed)
    first = migration.plan_migration(settings)
    with pytest.raises(KeyboardInterrupt):
        migration.migrate(spark, settings, first, say=lambda line: None)
    assert not (tmp_path / "raw_data").exists() and (tmp_path / "raw_data.importing" / "_delta_log").exists()
    monkeypatch.setattr(migration, "_move", move)

    resumed = migration.plan_migration(settings)
    assert resumed.stamp == first.stamp and resumed.imports == ("raw_data", "quarantine") and resumed.rebuild_hourly
    assert not resumed.checkpoints  # done before the crash
    migration.migrate(spark, settings, resumed, say=lambda line: None)
    assert raw_keys(settings.storage_url("raw_data")) == tick_keys(committed)
    assert [p.name for p in (tmp_path / "legacy").iterdir()] == [first.stamp]
    assert json.loads((tmp_path / "checkpoints" / "ingest-start-offsets.json").read_text())["offsets"]["1"] == 80
    assert migration.plan_migration(settings).empty
