"""`btcstream compact` on Delta tables: OPTIMIZE leaves every row exactly once (also while a writer
appends and while a second compaction runs), time travel survives the default VACUUM, a short
retention is refused without --force and deletes the replaced files with it."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from btcstream import cli
from btcstream.errors import CompactionError, LegacyLayout
from btcstream.settings import Settings
from btcstream.storage.maintenance import MIN_RETENTION, maintain

BATCH = 10  # rows per small append


def append_batches(url: str, first: int, count: int) -> None:
    """`count` appends of BATCH rows each (ids first*BATCH...), over two date partitions: many small files."""
    from deltalake import write_deltalake

    for batch in range(first, first + count):
        ids = list(range(batch * BATCH, (batch + 1) * BATCH))
        write_deltalake(url, pa.table({"id": ids, "price": [i * 1.5 for i in ids],
                                       "date": ["2025-02-14" if i % 2 else "2025-02-15" for i in ids]}),
                        mode="append", partition_by=["date"])


def ids(url: str, version: int | None = None) -> list[int]:
    from deltalake import DeltaTable

    return sorted(DeltaTable(url, version=version).to_pyarrow_table(columns=["id"]).column("id").to_pylist())


def parquet_files_on_disk(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.parquet"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=f"file://{tmp_path}")


def no_spark():
    raise AssertionError("this run must not start Spark")


def test_a_retention_below_seven_days_is_refused_in_one_line_naming_force(settings: Settings, monkeypatch,
                                                                           capsys) -> None:
    with pytest.raises(CompactionError, match="--force"):
        maintain(settings, spark=no_spark, retention=timedelta(hours=24))
    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", settings.storage_root)
    assert cli.main(["compact", "--retention-hours", "24"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "below the safe minimum of 168 h" in err[0] and "--force" in err[0]


def test_missing_tables_are_skipped_and_a_dry_run_changes_nothing_without_a_jvm(settings: Settings,
                                                                               tmp_path: Path) -> None:
    raw = settings.storage_url("raw_data")
    append_batches(raw, 0, 6)
    version = 5
    reports = maintain(settings, spark=no_spark, dry_run=True)
    by_name = {r.dataset: r for r in reports}
    assert not by_name["hourly_metrics"].exists and by_name["hourly_metrics"].line().endswith("no table yet, skipped")
    assert (by_name["raw_data"].files_before, by_name["raw_data"].files_removed, by_name["raw_data"].version) == \
        (12, 12, version)
    from deltalake import DeltaTable

    assert DeltaTable(raw).version() == version and len(DeltaTable(raw).file_uris()) == 12


def test_an_old_file_sink_root_gets_the_migrate_line(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "raw_data" / "_spark_metadata").mkdir(parents=True)
    with pytest.raises(LegacyLayout, match="btcstream migrate"):
        maintain(settings, spark=no_spark)


@pytest.mark.spark
def test_optimize_keeps_every_row_once_time_travel_survives_and_force_vacuums(spark, settings: Settings,
                                                                            tmp_path: Path) -> None:
    raw = settings.storage_url("raw_data")
    append_batches(raw, 0, 8)  # delta-rs wrote it: 16 small files
    before = ids(raw)
    assert before == list(range(8 * BATCH))

    report, = maintain(settings, ["raw_data"], spark=lambda: spark)
    assert (report.files_before, report.files_after, report.files_removed, report.files_added) == (16, 2, 16, 2)
    assert report.version == 8 and report.vacuumed == 0  # the replaced files are younger than 7 days
    assert ids(raw) == before  # every row exactly once
    assert ids(raw, version=7) == before  # time travel to the small files still works
    assert parquet_files_on_disk(tmp_path / "raw_data") == 18

    report, = maintain(settings, ["raw_data"], spark=lambda: spark, retention=timedelta(0), force=True)
    assert report.vacuumed == 16 and parquet_files_on_disk(tmp_path / "raw_data") == 2
    assert ids(raw) == before  # the current version still reads
    with pytest.raises(Exception):
        ids(raw, version=7)  # its files are gone


@pytest.mark.spark
def test_a_table_spark_wrote_is_optimized_and_vacuumed(spark, settings: Settings) -> None:
    url = settings.storage_url("quarantine")
    for batch in range(5):
        (spark.range(batch * BATCH, (batch + 1) * BATCH)
         .selectExpr("id", "cast(cast(id AS string) AS binary) AS value", "date_add(date'2025-02-14', cast(id % 2 AS int)) AS date")
         .write.format("delta").mode("append").partitionBy("date").save(url))
    before = ids(url)

    report, = maintain(settings, ["quarantine"], spark=lambda: spark, retention=MIN_RETENTION)
    assert report.files_after == 2 and report.files_removed >= 5
    assert ids(url) == before == list(range(5 * BATCH))
    assert sorted(r.id for r in spark.read.format("delta").load(url).select("id").collect()) == before


@pytest.mark.spark
def test_compaction_beside_an_appending_writer_and_a_second_compaction_loses_and_duplicates_nothing(
        spark, settings: Settings) -> None:
    raw = settings.storage_url("raw_data")
    append_batches(raw, 0, 10)
    stop = threading.Event()
    seen: list[list[int]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            append_batches(raw, 10, 30)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def reader() -> None:
        while not stop.is_set():
            seen.append(ids(raw))

    def compactor() -> None:
        try:
            maintain(settings, ["raw_data"], spark=lambda: spark, vacuum=False)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=t) for t in (writer, reader, compactor, compactor)]
    for thread in threads:
        thread.start()
    for thread in (threads[0], threads[2], threads[3]):
        thread.join(timeout=600)
    stop.set()
    threads[1].join(timeout=60)
    assert not errors, errors
    assert ids(raw) == list(range(40 * BATCH))  # no row lost, none twice
    # Every state a reader saw: whole committed batches, each row once (never the small and merged files both).
    for snapshot in seen:
        assert len(snapshot) == len(set(snapshot)) and len(snapshot) % BATCH == 0
        assert snapshot == list(range(len(snapshot)))
    from deltalake import DeltaTable

    operations = [c["operation"] for c in DeltaTable(raw).history()]
    assert "OPTIMIZE" in operations
