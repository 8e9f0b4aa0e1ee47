"""The test suite's own rules: where tests live, how they share code, and the no-JVM check of the fast tier."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from helpers.no_jvm import NO_JVM_VARIABLE, launches_jvm, no_jvm_requested

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "lib" / "btcstream"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module a file imports, at any depth; `from a import b` gives `a` and `a.b`."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base.rstrip('.')}.{alias.name}" if node.module else base + alias.name)
                      for alias in node.names]
    return names


def test_no_test_module_imports_another() -> None:
    offending = [f"{path.relative_to(TESTS)}:{line}: {name}"
                 for path in sorted(TESTS.rglob("*.py"))
                 for line, name in imported_modules(path)
                 if any(part.startswith("test_") or part == "conftest" for part in name.lstrip(".").split("."))]
    assert offending == [], "shared code belongs in tests/helpers (fixtures in tests/conftest.py)"


def test_the_import_check_sees_every_form_of_import(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text("import test_a\nfrom test_b import x\nfrom helpers import test_c\n"
                      "def f():\n    from conftest import spark\n")
    names = [name for _, name in imported_modules(source)]
    assert {"test_a", "test_b", "helpers.test_c", "conftest"} <= set(names)


def test_test_file_names_are_unique() -> None:
    # Test folders have no __init__.py: pytest imports each test module under its bare file name.
    counts = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in counts.items() if count > 1] == []


def test_test_folders_mirror_the_packages_they_test() -> None:
    folders = {path.name for path in TESTS.iterdir() if path.is_dir() and not path.name.startswith((".", "_"))}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    # helpers/: code the tests share; artifacts/: what the browser tests leave to look at (ignored by git).
    assert folders - {"helpers", "artifacts"} <= packages, "tests/<package>/ holds the tests of btcstream.<package>"


@pytest.mark.parametrize(("executable", "argv", "starts_a_jvm"), [
    (None, ["java", "-version"], True),
    ("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", ["java", "-cp", "x", "Main"], True),
    (None, [b"/opt/jdk/bin/keytool", b"-list"], True),
    (None, [Path(".venv/lib/python3.11/site-packages/pyspark/bin/spark-submit"), "pyspark-shell"], True),
    (None, "exec java -jar kafka.jar", True),  # shell=True or os.system
    (None, ["/bin/bash", "-c", "cd /tmp && JAVA_OPTS=-Xmx1g spark-class org.apache.spark.deploy.master.Master"], True),
    (None, ["sh", "-c", "echo javascript; ls java-docs"], False),
    (None, [sys.executable, "-m", "btcstream", "infra", "status"], False),
    (None, ["javascript-tool", "java"], False),  # only the program itself counts, not its arguments
])
def test_jvm_launches_are_told_apart_from_other_commands(executable, argv, starts_a_jvm: bool) -> None:
    assert launches_jvm(executable, argv) is starts_a_jvm


WATCHED_CHILD = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from helpers.no_jvm import JvmWatch, java_descendants

    work, fake_home = Path(sys.argv[1]), Path(sys.argv[2])
    fake_java = str(fake_home / "bin" / "java")
    os.environ["PYTEST_CURRENT_TEST"] = "tests/example.py::test_example (call)"
    watch = JvmWatch(work, java_home=fake_home)
    watch.start()

    # 1. Started by this process: the audit hook.
    subprocess.run([fake_java, "-version"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["sh", "-c", "echo javascript"], check=True, stdout=subprocess.DEVNULL)  # no JVM
    # 2. Started by a child through PATH: the shim, which then runs the real tool.
    via_path = subprocess.run([sys.executable, "-c", "import subprocess; subprocess.run(['java', '-via-path'])"],
                              capture_output=True, text=True, check=True).stdout
    # 3. Started by a child by absolute path and still running: the scan of descendants.
    starter = ("import subprocess, sys, time; subprocess.Popen([sys.argv[1], '-stay'], stdin=subprocess.PIPE); "
               "print(flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", starter, fake_java], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    watch.check_descendants('after test_example')
    for pid, _ in java_descendants(os.getpid()):
        os.kill(pid, 9)
    child.kill()
    watch.stop()
    print(json.dumps({"launches": [[l.test, l.how, l.command] for l in watch.launches()], "via_path": via_path,
                      "java_home": os.environ.get("JAVA_HOME"), "path": os.environ["PATH"]}))
""")


def test_the_watch_records_jvms_started_here_through_path_and_below(tmp_path: Path) -> None:
    """Run in a child process, whose launches the session's own watch (if any) does not see."""
    fake_home = tmp_path / "fake-jdk"
    (fake_home / "bin").mkdir(parents=True)
    fake_java = fake_home / "bin" / "java"  # a shell script, not a JVM: nothing real is started
    # `-stay`: wait for stdin to close, without starting another process (which would look like a second java).
    fake_java.write_text('#!/bin/sh\necho "fake java $*"\n[ "$1" = -stay ] && read -r _\nexit 0\n')
    fake_java.chmod(0o755)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

    done = subprocess.run([sys.executable, "-c", WATCHED_CHILD, str(tmp_path / "watch"), str(fake_home)],
                          env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])

    test = "tests/example.py::test_example (call)"
    launches = [tuple(launch) for launch in report["launches"]]
    assert (test, "subprocess.Popen", f"{fake_java} -version") in launches
    assert (test, "PATH/JAVA_HOME shim", "java -via-path") in launches
    assert report["via_path"].strip() == "fake java -via-path"
    assert [(t, how) for t, how, command in launches if command.endswith(f"{fake_java} -stay")] == [
        ("after test_example", "running process")]
    assert len(launches) == 3, launches  # and nothing else: `echo javascript` starts no JVM
    assert (report["java_home"], report["path"]) == (os.environ.get("JAVA_HOME"), os.environ["PATH"])  # restored


def test_the_session_is_watched_exactly_when_make_test_fast_asks() -> None:
    first_on_path = Path(os.environ["PATH"].split(os.pathsep)[0])
    watched = first_on_path.parent.name == "jdk-shim"  # JvmWatch.start() puts its shims first
    assert watched == no_jvm_requested(), f"{NO_JVM_VARIABLE}={os.environ.get(NO_JVM_VARIABLE)!r}, PATH: {first_on_path}"
