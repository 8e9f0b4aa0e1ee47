"""`btcstream lab`: JupyterLab on `bind_host` (127.0.0.1) in notebooks/, with this venv's kernel, until Ctrl-C.

Prints the URL with its token once, then which local services are up (Kafka, HDFS) or starts
them with `--with-stack` (they keep running after JupyterLab stops, like `make demo` leaves them;
`btcstream infra down` stops them). Opens the browser unless `--no-browser`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import webbrowser
from pathlib import Path

from btcstream.infra import stack
from btcstream.settings import Settings
from btcstream.workbench.lab import DEFAULT_PORT, default_notebook_dir, start_lab


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("lab", help="start JupyterLab on the workbench notebooks (bind_host, 127.0.0.1 by default; token)",
                                   description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on BTCSTREAM_BIND_HOST (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    parser.add_argument("--with-stack", action="store_true",
                        help="start the local Kafka and HDFS first when they are not running")
    parser.add_argument("--notebook-dir", type=Path, default=None,
                        help="folder to serve (default: notebooks/ here when it holds the notebooks, "
                             "else the package's own)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.with_stack:
        for line in stack.up(settings):
            print(line, flush=True)
    server = start_lab(args.port, args.notebook_dir or default_notebook_dir(), host=settings.bind_host)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    try:
        print(f"JupyterLab: {server.url}", flush=True)
        print(f"notebooks:  {server.notebook_dir}")
        print(f"kernel:     Python 3 ({sys.executable})")
        for line in service_lines(settings):
            print(line)
        print("stop with Ctrl-C", flush=True)
        if not args.no_browser:
            webbrowser.open(server.url)
        while not stop.wait(1.0):
            if server.process.poll() is not None:
                print(f"btcstream: JupyterLab exited with code {server.process.returncode}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def service_lines(settings: Settings) -> list[str]:
    """One line per data service the notebooks use: up or not, and how to start it."""
    statuses, external = stack.status(settings)
    lines = []
    for status in statuses:
        ports = ", ".join(f"{name} {port}" for name, port in status.ports.items())
        state = "up" if status.healthy else ("running, not healthy" if status.running else "not running")
        lines.append(f"{status.name + ':':11} {state} ({ports})")
    if any(not status.healthy for status in statuses):
        lines.append("            start them with `btcstream infra up` (or `btcstream lab --with-stack`); "
                     "notebook 01 also starts them")
    return lines + list(external)
