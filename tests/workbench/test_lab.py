"""`btcstream lab`: JupyterLab on 127.0.0.1 behind a token, in the notebook folder, stopped cleanly.

Fast: a real JupyterLab starts (no kernel, no JVM); the browser test (tests/test_browser.py) runs
a notebook in it on the real stack.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from btcstream.cli import main
from btcstream.settings import Settings
from btcstream.workbench import lab


def test_lab_command_serves_only_this_machine_and_keeps_the_token_off_the_command_line(tmp_path: Path) -> None:
    command = lab.lab_command(8899, tmp_path)

    assert "--ServerApp.ip=127.0.0.1" in command and "--ServerApp.port=8899" in command
    assert "--ServerApp.port_retries=0" in command  # never silently another port than the one printed
    assert f"--ServerApp.root_dir={tmp_path}" in command
    assert not any("token" in part.lower() for part in command)  # it goes in the environment (JUPYTER_TOKEN)


def test_started_lab_answers_with_the_token_only_and_stops(tmp_path: Path) -> None:
    (tmp_path / "03_hourly_spread_volatility.ipynb").write_text(json.dumps(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    server = lab.start_lab(port=0, notebook_dir=tmp_path)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/lab?token={server.token}" and len(server.token) >= 32
        with urllib.request.urlopen(f"{server.base_url}/api/contents?token={server.token}", timeout=10) as response:
            names = [item["name"] for item in json.load(response)["content"]]
        assert names == ["03_hourly_spread_volatility.ipynb"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.base_url}/api/contents", timeout=10)
        assert refused.value.code == 403
        with urllib.request.urlopen(f"{server.base_url}/api/kernelspecs?token={server.token}", timeout=10) as response:
            assert json.load(response)["default"] == "python3"  # the venv's ipykernel
    finally:
        server.stop()
    assert server.process.returncode is not None


def test_a_taken_port_is_one_clear_error(capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["lab", "--no-browser", "--port", str(port)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0
    assert f"port {port}" in error and "--port" in error


def test_notebook_folder_is_the_local_one_when_present(tmp_path: Path) -> None:
    assert lab.default_notebook_dir(tmp_path).name == "notebooks"  # falls back to the package's notebooks
    assert (lab.default_notebook_dir(tmp_path) / "03_hourly_spread_volatility.ipynb").exists()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_start_pipeline.ipynb").write_text("{}")
    assert lab.default_notebook_dir(tmp_path) == (tmp_path / "notebooks").resolve()


def test_services_are_reported_with_how_to_start_them(tmp_path: Path) -> None:
    from btcstream.commands.lab import service_lines

    settings = Settings(state_dir=tmp_path / "state")  # nothing was ever started there
    lines = service_lines(settings)
    assert lines[0].startswith("kafka:") and "not running" in lines[0]
    assert lines[1].startswith("hdfs-namenode:") and "not running" in lines[1]
    assert lines[2].startswith("hdfs-datanode:") and "not running" in lines[2]
    assert "btcstream infra up" in lines[3] and "--with-stack" in lines[3]


def test_ctrl_c_stops_jupyterlab_and_exits_cleanly(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: here, `btcstream lab`'s group."""
    import os
    import signal
    import subprocess
    import sys

    command = subprocess.Popen([sys.executable, "-m", "btcstream", "lab", "--no-browser", "--port", "0",
                                "--notebook-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        lines = []
        for line in command.stdout:
            lines.append(line)
            if line.startswith("stop with Ctrl-C"):
                break
        url = next(line.split()[1] for line in lines if line.startswith("JupyterLab: "))
        with urllib.request.urlopen(url.replace("/lab?", "/api/status?"), timeout=10) as response:
            assert response.status == 200

        os.killpg(command.pid, signal.SIGINT)
        assert command.wait(60) == 0, "".join(lines) + command.stdout.read()
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url.replace("/lab?", "/api/status?"), timeout=5)  # JupyterLab is gone too
