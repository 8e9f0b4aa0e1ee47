"""Background JVM processes with pid files: start detached, check liveness, stop cleanly.

A service is "ours" only while its pid file names a live process whose command line carries the
service's marker, so a stale pid reused by an unrelated program is never signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # how long SIGTERM gets before SIGKILL


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file`, or None when the file is missing or unreadable."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line contains `marker`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = _proc_state(pid)
    return marker in cmdline and state not in ("Z", "X")


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid of our live process for this pid file, else None (a stale pid file is removed)."""
    pid = read_pid(pid_file)
    if pid is not None and is_alive(pid, marker):
        return pid
    if pid_file.exists():
        pid_file.unlink(missing_ok=True)
    return None


def start_detached(command: list[str], log_file: Path, pid_file: Path,
                   env: dict[str, str] | None = None) -> int:
    """Start `command` in its own session, output appended to `log_file`; writes and returns the pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env={**os.environ, **(env or {})}, close_fds=True)
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def child_exited(pid: int) -> bool:
    """True when our child process `pid` has exited (its status is collected)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return done == pid


def stop(pid_file: Path, marker: str, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the process (and its session), wait up to `grace_s`, only then SIGKILL. True if it was running."""
    pid = running_pid(pid_file, marker)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and is_alive(pid, marker):
        _reap(pid)
        time.sleep(0.2)
    if is_alive(pid, marker):
        log.warning("pid %d did not stop within %.0f s of SIGTERM; sending SIGKILL", pid, grace_s)
        _signal_group(pid, signal.SIGKILL)
        while is_alive(pid, marker):
            _reap(pid)
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_free(ports: list[int], host: str = "127.0.0.1", timeout_s: float = 10.0) -> bool:
    """Wait until nothing listens on any of `ports` (a process just stopped may still be closing them)."""
    deadline = time.monotonic() + timeout_s
    while not all(port_is_free(port, host) for port in ports):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def port_answers(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resident_memory_mib(pid: int) -> float | None:
    """Resident set size of a process in MiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (otherwise it stays a zombie until we exit)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]
