"""Proof that a test run started no JVM: every launch of java or a Spark launcher is recorded.

`make test-fast` sets BTCSTREAM_TEST_NO_JVM=1 and `tests/conftest.py` then watches the session with
a `JvmWatch`; any record fails the run, naming the test and the command. Three views, because a JVM
can be started from the pytest process or from any process below it:

- an audit hook (`sys.addaudithook`) sees every process the pytest process starts (subprocess,
  os.exec*, os.posix_spawn, os.spawn*, os.system), including pyspark's `spark-submit`;
- a process started further down (a notebook's kernel, a CLI under test, Spark's launch scripts)
  finds `java` through PATH or JAVA_HOME: both lead first to a shim that records the launch and
  then runs the real tool;
- `check_descendants()` records java processes running below this one (a JVM a child process
  started by absolute path); conftest calls it after each test and at the end of the session.

It is for the test suite only: it records, it does not stop anything.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NO_JVM_VARIABLE = "BTCSTREAM_TEST_NO_JVM"

# Executables that start a JVM: the JDK's tools and Spark's launch scripts.
JDK_TOOLS = ("java", "javac", "jar", "jshell", "keytool")
SPARK_LAUNCHERS = ("spark-submit", "spark-class", "spark-shell", "spark-sql", "pyspark", "beeline")
JVM_LAUNCHERS = frozenset(JDK_TOOLS + SPARK_LAUNCHERS)
SHELLS = frozenset({"sh", "bash", "dash", "zsh"})
LAUNCH_EVENTS = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"})
OUTSIDE_TESTS = "outside any test (collection or session start/end)"


@dataclass(frozen=True)
class JvmLaunch:
    test: str  # which test: its node id and phase (as in PYTEST_CURRENT_TEST), or when it was seen
    how: str  # which view saw it: an audit event name, "PATH/JAVA_HOME shim" or "running process"
    command: str

    def __str__(self) -> str:
        return f"{self.test}: {self.command}  [{self.how}]"


def no_jvm_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this run must start no JVM (BTCSTREAM_TEST_NO_JVM set and not 0)."""
    return environ.get(NO_JVM_VARIABLE, "") not in ("", "0")


def _words(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)):
        return [os.fsdecode(value)]
    return [os.fsdecode(v) for v in value]  # an argv sequence


def launches_jvm(executable: object, argv: object) -> bool:
    """Whether running `executable` with `argv` starts a JVM (argv may be a shell command string).

    >>> launches_jvm(None, ["/usr/lib/jvm/java-17/bin/java", "-version"]), launches_jvm(None, "ls -l")
    (True, False)
    """
    words = _words(argv)
    if isinstance(argv, (str, bytes)):  # shell=True or os.system: a command line
        words = ["sh", "-c", words[0]]
    programs = [Path(w).name for w in _words(executable) + words[:1]]
    if any(p in JVM_LAUNCHERS for p in programs):
        return True
    if any(p in SHELLS for p in programs) and "-c" in words:
        script = words[words.index("-c") + 1] if words.index("-c") + 1 < len(words) else ""
        try:
            tokens = shlex.split(script, comments=True)
        except ValueError:
            tokens = script.split()
        return any(Path(token).name in JVM_LAUNCHERS for token in tokens)
    return False


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", OUTSIDE_TESTS)


def _shim_script(log: Path, real: str) -> str:
    return (
        "#!/bin/sh\n"
        "# Written by tests/helpers/no_jvm.py: record this launch, then run the real tool.\n"
        f'printf \'%s\\t%s\\n\' "${{PYTEST_CURRENT_TEST:-{OUTSIDE_TESTS}}}" "$(basename "$0") $*" \\\n'
        f'    >> {shlex.quote(str(log))}\n'
        f'exec {shlex.quote(real)} "$@"\n'
    )


def java_descendants(root_pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the java processes below `root_pid`, read from /proc (empty elsewhere)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process has gone
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    below = {root_pid}
    changed = True
    while changed:
        grown = {pid for pid, parent in parents.items() if parent in below} | below
        changed, below = grown != below, grown
    found = []
    for pid in sorted(below - {root_pid}):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if comm in JDK_TOOLS or (argv and Path(os.fsdecode(argv[0])).name in JDK_TOOLS):
            found.append((pid, " ".join(os.fsdecode(a) for a in argv if a)))
    return found


class JvmWatch:
    """Records JVM launches from `start()` to `stop()`; `launches()` lists them.

    `directory` holds the shims and their log. `java_home` is where the real tools are (default:
    JAVA_HOME, else each tool on PATH). The audit hook stays installed for the life of the process
    (Python cannot remove one) but records nothing once the watch is stopped.
    """

    def __init__(self, directory: Path, java_home: Path | None = None) -> None:
        self.directory = directory
        self.shim_home = directory / "jdk-shim"
        self.shim_log = directory / "jvm-launches.tsv"
        self.java_home = java_home
        self.recorded: list[JvmLaunch] = []
        self._seen_pids: set[int] = set()
        self._active = False
        self._saved_environment: dict[str, str | None] = {}

    def start(self) -> None:
        shims = self._write_shims()
        self._saved_environment = {name: os.environ.get(name) for name in ("PATH", "JAVA_HOME")}
        os.environ["PATH"] = f"{self.shim_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        if "java" in shims:  # without a real java no JVM can start, and JAVA_HOME stays as it was
            os.environ["JAVA_HOME"] = str(self.shim_home)
        self._active = True
        sys.addaudithook(self._audit)

    def stop(self) -> None:
        self._active = False
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _real_tool(self, tool: str) -> str | None:
        home = self.java_home or (Path(os.environ["JAVA_HOME"]) if os.environ.get("JAVA_HOME") else None)
        if home is not None:
            candidate = home / "bin" / tool
            return str(candidate) if candidate.exists() else None
        return shutil.which(tool)

    def _write_shims(self) -> list[str]:
        """A recording shim for each JDK tool that exists; returns their names."""
        (self.shim_home / "bin").mkdir(parents=True, exist_ok=True)
        written = []
        for tool in JDK_TOOLS:
            real = self._real_tool(tool)
            if real is not None:
                shim = self.shim_home / "bin" / tool
                shim.write_text(_shim_script(self.shim_log, real))
                shim.chmod(0o755)
                written.append(tool)
        return written

    def _audit(self, event: str, args: tuple) -> None:
        if not self._active or event not in LAUNCH_EVENTS:
            return
        try:
            self._record_launch(event, args)
        except Exception as error:  # an exception here would abort the launch itself
            self.recorded.append(JvmLaunch(_current_test(), event, f"(could not inspect {args!r}: {error})"))

    def _record_launch(self, event: str, args: tuple) -> None:
        if event == "os.system":
            executable, argv = None, args[0]
        elif event == "os.spawn":
            executable, argv = args[1], args[2]
        else:  # subprocess.Popen: (executable, args, cwd, env); os.exec, os.posix_spawn: (path, argv, env)
            executable, argv = args[0], args[1]
        if launches_jvm(executable, argv):
            command = argv if isinstance(argv, (str, bytes)) else shlex.join(_words(argv))
            self.recorded.append(JvmLaunch(_current_test(), event, os.fsdecode(command)))

    def check_descendants(self, when: str) -> None:
        """Record java processes running below this process now (each process once), seen `when`."""
        if not self._active:
            return
        for pid, command in java_descendants(os.getpid()):
            if pid not in self._seen_pids:
                self._seen_pids.add(pid)
                self.recorded.append(JvmLaunch(when, "running process", f"pid {pid}: {command}"))

    def launches(self) -> list[JvmLaunch]:
        """Everything recorded so far by the three views, in order within each view."""
        from_shims = []
        if self.shim_log.exists():
            for line in self.shim_log.read_text().splitlines():
                test, _, command = line.partition("\t")
                from_shims.append(JvmLaunch(test, "PATH/JAVA_HOME shim", command))
        return [*self.recorded, *from_shims]
