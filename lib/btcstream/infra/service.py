"""What every local service (Kafka broker, HDFS) has in common: files, ports, start, stop, status."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from btcstream.errors import InfraError, PortInUse
from btcstream.infra import addresses, processes
from btcstream.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # first start of HDFS formats the NameNode; a cold JVM on 2 cores is slow
_LOG4J2_TEMPLATE = """\
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{ISO8601}}{{UTC}}Z %p %c{{1}}: %m%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
logger.lifecycle.name = {lifecycle_logger}
logger.lifecycle.level = info
"""


def log4j2_config(lifecycle_logger: str) -> str:
    """A log4j2 configuration: warnings and errors, plus INFO from the logger that reports start/stop."""
    return _LOG4J2_TEMPLATE.format(lifecycle_logger=lifecycle_logger)


@dataclass(frozen=True)
class ServiceStatus:
    """One line of `btcstream infra status`."""

    name: str
    running: bool
    healthy: bool
    pid: int | None
    ports: dict[str, int]
    data_dir: Path
    memory_mib: float | None
    detail: str


@dataclass(frozen=True)
class Launch:
    """A service process just started: its pid and when (time.monotonic())."""

    pid: int
    started: float


class LocalService(ABC):
    """A JVM service run in the background under `<state_dir>/<name>/`."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.state_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def gc_log_file(self) -> Path:
        """The JVM's garbage-collection log (`btcstream.infra.gc_log`)."""
        return self.home / f"{self.name}-gc.log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def marker(self) -> str:
        """A string on the command line that identifies our process (its state directory)."""
        return str(self.home)

    @property
    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Named TCP ports on `bind_host` (127.0.0.1 by default) this service listens on."""

    @abstractmethod
    def prepare(self) -> None:
        """Resolve jars, write configuration, format storage on the first run."""

    @abstractmethod
    def command(self) -> list[str]:
        """The java command line that runs the service in the foreground."""

    @abstractmethod
    def health(self) -> tuple[bool, str]:
        """(healthy, detail) from asking the running service itself."""

    def pid(self) -> int | None:
        return processes.running_pid(self.pid_file, self.marker)

    def start(self) -> str:
        """Start and wait until healthy; returns a one-line report. Idempotent."""
        launched = self.launch()
        return launched if isinstance(launched, str) else self.wait_until_healthy(launched)

    def check_ports(self) -> None:
        """Raise PortInUse (one line) when a port this service would listen on is taken."""
        addresses.check_stack_bind_host(self.settings.bind_host)
        for label, port in self.ports.items():
            if not processes.port_is_free(port, self.settings.bind_host):
                raise PortInUse(f"{self.name} ({label})", port)

    def launch(self) -> "Launch | str":
        """Start the process without waiting for it (a report line instead when it already runs)."""
        if self.pid() is not None:
            healthy, detail = self.health()
            return f"{self.name}: already running (pid {self.pid()}), {'healthy' if healthy else 'NOT healthy: ' + detail}"
        self.check_ports()
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        started = time.monotonic()
        pid = processes.start_detached(self.command(), self.log_file, self.pid_file)
        log.info("%s starting (pid %d), log %s", self.name, pid, self.log_file)
        return Launch(pid, started)

    def wait_until_healthy(self, launched: "Launch") -> str:
        """Wait for a launched process to answer healthy; its report line. Stops it on a time-out."""
        pid, started = launched.pid, launched.started
        detail = "no answer yet"
        while time.monotonic() - started < START_TIMEOUT_S:
            # waitpid, not the pid file: right after fork the child's /proc cmdline is still ours.
            if processes.child_exited(pid):
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(f"{self.name} exited during start-up; last lines of {self.log_file}:\n{self.log_tail()}")
            healthy, detail = self.health()
            if healthy:
                self.after_healthy()
                return f"{self.name}: started (pid {pid}) in {time.monotonic() - started:.1f} s, {detail}"
            time.sleep(0.5)
        self.stop()
        raise InfraError(f"{self.name} did not become healthy within {START_TIMEOUT_S:.0f} s ({detail}); "
                         f"see {self.log_file}:\n{self.log_tail()}")

    def after_healthy(self) -> None:
        """Hook run once after a successful start (e.g. remember that storage is formatted)."""

    def stop(self) -> str:
        """Stop cleanly (SIGTERM, wait, only then SIGKILL); idempotent."""
        was_running = processes.stop(self.pid_file, self.marker)
        return f"{self.name}: {'stopped' if was_running else 'not running'}"

    def status(self) -> ServiceStatus:
        pid = self.pid()
        healthy, detail = self.health() if pid is not None else (False, "not running")
        return ServiceStatus(self.name, pid is not None, healthy, pid, self.ports, self.data_dir,
                             processes.resident_memory_mib(pid) if pid else None, detail)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
