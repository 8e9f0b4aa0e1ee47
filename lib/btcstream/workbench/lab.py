"""JupyterLab for the workbench notebooks: started on `bind_host` (127.0.0.1) with a token, the venv's kernel, and ready.

`start_lab` runs `jupyter lab` from the interpreter running btcstream (so its "Python 3" kernel is
this venv's, with btcstream importable), waits until the server answers, and returns the URL with
its token. The token is random per start and handed over in the environment (`JUPYTER_TOKEN`), so
it shows in no process listing; JupyterLab's own start-up log, which repeats the URL, is kept to
warnings. The token is required on any address: the server runs code, so `bind_host=0.0.0.0`
opens it to whoever has the token. Its kernels' ZMQ ports stay on 127.0.0.1 (jupyter_client's default).
Not for: the notebooks' content (they call into `btcstream.workbench`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from btcstream import resources
from btcstream.errors import BtcstreamError
from btcstream.infra import addresses

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the default (Settings.bind_host): never on the network, the token guards a kernel
DEFAULT_PORT = 8888
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0


class LabError(BtcstreamError):
    """JupyterLab could not be started (port taken, notebooks missing, server exited)."""


@dataclass
class LabServer:
    """A running JupyterLab: its process, the notebook folder it serves and the URL with the token."""

    process: subprocess.Popen
    port: int
    token: str
    notebook_dir: Path
    host: str = HOST

    @property
    def base_url(self) -> str:
        """Where this machine reaches the server (loopback when it listens on every interface)."""
        return f"http://{addresses.url_host(addresses.connect_host(self.host))}:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>/lab?token=<token>`: what a browser opens."""
        return f"{self.base_url}/lab?token={self.token}"

    def notebook_url(self, name: str) -> str:
        """The URL opening one notebook of `notebook_dir` in JupyterLab."""
        return f"{self.base_url}/lab/tree/{quote(name)}?token={self.token}"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (JupyterLab then shuts its kernels down), wait, only then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("JupyterLab (pid %d) did not stop in %.0f s; killing it", self.process.pid, timeout_s)
            self.process.kill()
            self.process.wait()


def default_notebook_dir(cwd: Path | None = None) -> Path:
    """`notebooks/` under the current directory when it holds the workbench notebooks, else the package's own."""
    here = (cwd or Path.cwd()) / "notebooks"
    shipped = resources.notebook_dir()
    if here.is_dir() and any(here.glob("0*.ipynb")):
        return here.resolve()
    return shipped.resolve()


def _probe(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with _probe(host) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port_free(port: int, host: str = HOST) -> None:
    with _probe(host) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise LabError(f"port {port} on {host} is taken (another JupyterLab?): "
                           "pass --port N, or --port 0 for any free port") from None


def lab_command(port: int, notebook_dir: Path, host: str = HOST) -> list[str]:
    """The `jupyter lab` command line on `host` (the token comes from the environment, see `start_lab`)."""
    command = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.ip={host}", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.root_dir={notebook_dir}", "--ServerApp.open_browser=False",
               "--ServerApp.log_level=WARN", "--LabApp.log_level=WARN",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; JupyterLab refuses without
        command.append("--allow-root")
    return command


def start_lab(port: int = DEFAULT_PORT, notebook_dir: Path | None = None, *, host: str = HOST,
              environment: dict[str, str] | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> LabServer:
    """Start JupyterLab on `host` (pass `Settings.bind_host`) and return once it answers; raises LabError naming the fix."""
    notebook_dir = (notebook_dir or default_notebook_dir()).resolve()
    if not notebook_dir.is_dir():
        raise LabError(f"notebook folder {notebook_dir} does not exist")
    port = free_port(host) if port == 0 else port
    check_port_free(port, host)
    token = secrets.token_hex(24)
    env = dict(os.environ if environment is None else environment)
    env["JUPYTER_TOKEN"] = token
    # The venv's scripts first, so `!pip`, `!btcstream` and the kernel's own subprocesses are this venv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Its own session: a Ctrl-C in the terminal reaches only btcstream, which then stops JupyterLab
    # with SIGTERM (JupyterLab itself would answer SIGINT with a y/n prompt it cannot read).
    process = subprocess.Popen(lab_command(port, notebook_dir, host), cwd=notebook_dir, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer(process, port, token, notebook_dir, host)
    try:
        wait_until_ready(server, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_ready(server: LabServer, timeout_s: float) -> None:
    """Poll the server's `/api/status` with the token until it answers 200."""
    deadline = time.monotonic() + timeout_s
    status_url = f"{server.base_url}/api/status?token={server.token}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise LabError(f"JupyterLab exited with code {server.process.returncode} while starting "
                           "(its messages are above)")
        try:
            with urllib.request.urlopen(status_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise LabError(f"JupyterLab did not answer on {server.base_url} within {timeout_s:.0f} s")
