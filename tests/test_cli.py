"""The command line ends every failure in one line naming the problem, never a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from btcstream import cli


def failing_command(error: Exception):
    """A parser whose only command raises `error`, in place of the real ones."""
    def build_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="btcstream")
        parser.add_argument("-v", "--verbose", action="store_true")
        sub = parser.add_subparsers(dest="command", required=True)
        command = sub.add_parser("boom")
        command.set_defaults(func=lambda args, settings: (_ for _ in ()).throw(error))
        return parser
    return build_parser


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_failure_is_one_line_and_exit_1(monkeypatch, capsys, caplog, verbose: bool) -> None:
    caplog.set_level("DEBUG", logger="btcstream")
    monkeypatch.setattr(cli, "build_parser", failing_command(UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte")))
    code = cli.main(["-v", "boom"] if verbose else ["boom"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("btcstream: error:")]
    assert code == 1
    assert lines == [lines[0]] and "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff" in lines[0]
    assert "Traceback (most recent call last)" not in err
    logged = [record for record in caplog.records if record.exc_info]  # the traceback goes to the log
    assert len(logged) == 1 and logged[0].levelname == "DEBUG"  # shown only with -v (DEBUG level)
    assert ("run with -v" in lines[0]) != verbose


def test_a_classified_failure_keeps_exit_2(monkeypatch, capsys) -> None:
    from btcstream.errors import StorageReadError

    monkeypatch.setattr(cli, "build_parser", failing_command(StorageReadError("hdfs://x/raw_data does not exist")))
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err.strip() == "btcstream: error: hdfs://x/raw_data does not exist"


def test_a_quarantine_of_the_old_layout_gives_one_line_naming_migrate(tmp_path: Path, monkeypatch, capsys) -> None:
    """A quarantined record of invalid UTF-8 stored in a string column (the old file-sink layout)
    made DuckDB and pyarrow fail with a traceback; now such a root is named, in one line, with the
    command that imports it into Delta tables (which keep the bytes in a binary column)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    partition = tmp_path / "store" / "quarantine" / "date=2025-02-14"
    partition.mkdir(parents=True)
    table = pa.table({"value": pa.array([b"\xff\xfe"], type=pa.binary()).cast(pa.string(), safe=False),
                      "reason": ["unparseable JSON"],
                      "kafka_timestamp": pd.to_datetime(["2025-02-14T10:00:00Z"])})
    path = partition / "part-00000.snappy.parquet"
    pq.write_table(table, path)
    log = tmp_path / "store" / "quarantine" / "_spark_metadata"
    log.mkdir()
    (log / "0").write_text('v1\n{"path":"file://%s","size":%d,"isDir":false,"modificationTime":0,'
                           '"blockReplication":1,"blockSize":1,"action":"add"}\n' % (path, path.stat().st_size))
    monkeypatch.setenv("BTCSTREAM_STORAGE_ROOT", f"file://{tmp_path}/store")

    code = cli.main(["data", "head", "quarantine"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("btcstream: error:") and "`btcstream migrate`" in lines[0]


def test_a_jvm_failure_is_reported_by_its_java_exception() -> None:
    """py4j's own first line ("An error occurred while calling o132.start.") names nothing useful."""
    class JavaException:
        def toString(self) -> str:  # noqa: N802 (the JVM's name)
            return "java.net.ConnectException: Call From vm to localhost:9000 failed\n\tat org.apache.hadoop..."

    class Py4JJavaError(Exception):
        java_exception = JavaException()

    error = Py4JJavaError("An error occurred while calling o132.start.\n: java.net.ConnectException: ...")
    assert cli.one_line(error) == "java.net.ConnectException: Call From vm to localhost:9000 failed"
    assert cli.one_line(ValueError("bad value\nmore")) == "ValueError: bad value"