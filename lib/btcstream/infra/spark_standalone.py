"""A real Spark standalone cluster (one master, one worker) on 127.0.0.1, from pyspark's own jars.

It runs `pyspark/bin/spark-class org.apache.spark.deploy.master.Master` and `...worker.Worker`,
the same daemons a Spark cluster runs, so the streaming job can be submitted to a `spark://`
master exactly as on a real cluster. Every port is ephemeral (port 0), read back from the
daemon's log; health comes from the master web UI's JSON (`/json`). Meant for tests and trying
cluster mode on one machine. Not for: production clusters (use Spark's own deployment).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from btcstream.errors import InfraError
from btcstream.infra import processes
from btcstream.infra.java import java_executable

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
DAEMON_MEMORY = "512m"  # heap of the master and worker daemons themselves (executors are separate JVMs)
_MASTER_URL = re.compile(r"Starting Spark master at (spark://\S+)")
_UI_PORT = re.compile(r"Successfully started service '(?:MasterUI|WorkerUI)' on port (\d+)")
# Daemon settings: no REST submission server (it would take the fixed port 6066).
DAEMON_PROPERTIES = {"spark.master.rest.enabled": "false", "spark.ui.showConsoleProgress": "false"}


@dataclass(frozen=True)
class ClusterStatus:
    """What the master reports about itself (from its web UI's JSON)."""

    master_state: str
    alive_workers: int
    cores: int
    memory_mib: int
    active_apps: list[str]
    completed_apps: list[str]

    @property
    def ready(self) -> bool:
        return self.master_state == "ALIVE" and self.alive_workers >= 1


class StandaloneCluster:
    """One Spark master and one worker under `work_dir`; use as a context manager or start()/stop()."""

    def __init__(self, work_dir: Path, *, cores: int = 1, memory: str = "1g") -> None:
        self.work_dir = Path(work_dir)
        self.cores = cores
        self.memory = memory
        self.master_url: str | None = None
        self.ui_url: str | None = None

    # Files of the two daemons.
    def _log(self, role: str) -> Path:
        return self.work_dir / f"{role}.log"

    def _pid_file(self, role: str) -> Path:
        return self.work_dir / f"{role}.pid"

    @property
    def _marker(self) -> str:
        """On both daemons' command lines (their properties file), so only our processes are signalled."""
        return str(self.work_dir / "daemon.properties")

    def start(self) -> "StandaloneCluster":
        """Start master then worker and wait until the master reports the worker ALIVE."""
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "conf").mkdir(exist_ok=True)  # an empty SPARK_CONF_DIR: no stray user config
        Path(self._marker).write_text("".join(f"{key}={value}\n" for key, value in DAEMON_PROPERTIES.items()))
        try:
            self._start_daemon("master", "org.apache.spark.deploy.master.Master", [])
            self.master_url = self._wait_for_log("master", _MASTER_URL)
            self.ui_url = f"http://{HOST}:{self._wait_for_log('master', _UI_PORT)}"
            self._start_daemon("worker", "org.apache.spark.deploy.worker.Worker",
                               ["--cores", str(self.cores), "--memory", self.memory,
                                "--work-dir", str(self.work_dir / "worker-work"), self.master_url])
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        log.info("Spark standalone cluster %s ready in %.1f s (UI %s)", self.master_url,
                 time.monotonic() - started, self.ui_url)
        return self

    def stop(self) -> None:
        """Stop the worker (which ends its executors) and then the master; idempotent."""
        for role in ("worker", "master"):
            processes.stop(self._pid_file(role), self._marker)

    def status(self) -> ClusterStatus:
        """Ask the master's web UI; raises InfraError when it does not answer."""
        if self.ui_url is None:
            raise InfraError("the Spark standalone cluster was not started")
        try:
            with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as response:
                state = json.load(response)
        except (OSError, ValueError) as error:
            raise InfraError(f"the Spark master UI {self.ui_url} did not answer: {error}") from error
        return ClusterStatus(
            master_state=state.get("status", "UNKNOWN"),
            alive_workers=int(state.get("aliveworkers", 0)),
            cores=int(state.get("cores", 0)),
            memory_mib=int(state.get("memory", 0)),
            active_apps=[app["name"] for app in state.get("activeapps", [])],
            completed_apps=[app["name"] for app in state.get("completedapps", [])],
        )

    def log_tail(self, role: str, lines: int = 20) -> str:
        try:
            return "\n".join(self._log(role).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start_daemon(self, role: str, main_class: str, args: list[str]) -> None:
        import pyspark

        spark_home = Path(pyspark.__file__).parent
        command = ["bash", str(spark_home / "bin" / "spark-class"), main_class, "--host", HOST, "--port", "0",
                   "--webui-port", "0", "--properties-file", self._marker, *args]
        env = {"SPARK_HOME": str(spark_home), "SPARK_CONF_DIR": str(self.work_dir / "conf"),
               "SPARK_LOCAL_IP": HOST, "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
               "SPARK_LOCAL_DIRS": str(self.work_dir / "local"),
               "JAVA_HOME": os.environ.get("JAVA_HOME") or str(Path(java_executable()).resolve().parents[1])}
        pid = processes.start_detached(command, self._log(role), self._pid_file(role), env)
        # Until the forked child has exec'd, its command line is still ours (without the marker).
        deadline = time.monotonic() + 10
        while not processes.is_alive(pid, self._marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("Spark %s starting (pid %d), log %s", role, pid, self._log(role))

    def _wait_for_log(self, role: str, pattern: re.Pattern[str]) -> str:
        """The first match of `pattern` in the daemon's log (the daemon picks its own ports)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = pattern.search(self._log(role).read_text(errors="replace")) if self._log(role).exists() else None
            if match:
                return match.group(1)
            if processes.running_pid(self._pid_file(role), self._marker) is None:
                raise InfraError(f"Spark {role} exited during start-up:\n{self.log_tail(role)}")
            time.sleep(0.3)
        raise InfraError(f"Spark {role} did not start within {START_TIMEOUT_S:.0f} s:\n{self.log_tail(role)}")

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        detail = "no answer yet"
        while time.monotonic() < deadline:
            if processes.running_pid(self._pid_file("worker"), self._marker) is None:
                raise InfraError(f"Spark worker exited during start-up:\n{self.log_tail('worker')}")
            try:
                status = self.status()
                if status.ready:
                    return
                detail = f"master {status.master_state}, {status.alive_workers} alive workers"
            except InfraError as error:
                detail = str(error)
            time.sleep(0.5)
        raise InfraError(f"Spark standalone cluster not ready within {START_TIMEOUT_S:.0f} s ({detail}):\n"
                         f"{self.log_tail('worker')}")
