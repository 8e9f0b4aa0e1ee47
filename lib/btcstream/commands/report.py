"""`btcstream report`: execute the notebooks with papermill into ./reports as .ipynb and offline HTML.

`-p NOTEBOOK_PREFIX NAME VALUE` passes a parameter to one notebook (`-p 01 duration_s 120`);
`--only 03` runs a subset. Values are parsed as Python/JSON literals when they can be, else kept
as strings, the way papermill's own `-y`/`-p` do.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from btcstream.errors import ReportError
from btcstream.workbench.report import NOTEBOOKS, REPORT_DIR, build_report
from btcstream.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="execute the notebooks (papermill) into reports/ as .ipynb + HTML")
    parser.add_argument("-p", "--parameter", nargs=3, action="append", default=[],
                        metavar=("NOTEBOOK", "NAME", "VALUE"),
                        help="a notebook parameter, e.g. -p 01 duration_s 120 (NOTEBOOK is a file-name prefix)")
    parser.add_argument("--only", action="append", default=[], metavar="NOTEBOOK",
                        help="run only notebooks whose name starts with this (repeatable), e.g. --only 03")
    parser.add_argument("--output-dir", type=Path, default=REPORT_DIR,
                        help=f"default {REPORT_DIR}/ under the current directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    notebooks = [name for name in NOTEBOOKS if not args.only or any(name.startswith(p) for p in args.only)]
    if not notebooks:
        raise ReportError(f"--only {args.only} matches none of {', '.join(NOTEBOOKS)}")
    parameters: dict[str, dict[str, Any]] = {}
    for prefix, name, value in args.parameter:
        matches = [notebook for notebook in NOTEBOOKS if notebook.startswith(prefix)]
        if len(matches) != 1:
            raise ReportError(f"-p {prefix}: expected a prefix of exactly one of {', '.join(NOTEBOOKS)}")
        parameters.setdefault(matches[0], {})[name] = _literal(value)
    runs = build_report(parameters, notebooks, args.output_dir)
    for notebook_run in runs:
        print(f"{notebook_run.notebook}: {notebook_run.seconds:.0f} s -> {notebook_run.html}")
    print(f"open {args.output_dir.resolve() / 'index.html'}")
    return 0


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
