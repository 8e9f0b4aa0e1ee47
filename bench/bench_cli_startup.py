"""Start-up time of the `btcstream` command line: median wall time of `btcstream --help` and friends.

Each command runs in a fresh interpreter (what a user waits for when typing it), alternated over
`--runs` rounds so machine noise hits every command and every tree alike. Also reports whether
pyspark was imported (`python -X importtime`): only the Spark commands may load the JVM libraries.
`--tree LABEL=DIR` compares source trees (a checkout's `lib/` goes first on PYTHONPATH), e.g. main
against a worktree of an older commit, in one run:

    git worktree add /tmp/before 616026e
    .venv/bin/python bench/bench_cli_startup.py --runs 15 --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "btcstream --help": ["--help"],
    "btcstream data --help": ["data", "--help"],
    "btcstream infra --help": ["infra", "--help"],
}


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment that runs `tree`'s package (None: the installed one)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve() / "lib")
    return env


def time_command(arguments: list[str], tree: Path | None = None) -> float:
    """Wall seconds of one `python -m btcstream ARGS` in a fresh interpreter."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "btcstream", *arguments], check=True, env=tree_env(tree),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def imports_pyspark(arguments: list[str], tree: Path | None = None) -> bool:
    """True when running the command imports any pyspark module (read from -X importtime)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "btcstream", *arguments], env=tree_env(tree),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return any(line.rsplit("|", 1)[-1].strip().startswith("pyspark") for line in result.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds of every command (default 15)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                        help="a source tree to time (repeatable; default: the installed package)")
    args = parser.parse_args()
    trees: dict[str, Path | None] = {label: Path(path) for label, path in (t.split("=", 1) for t in args.tree)}
    trees = trees or {"installed": None}
    for tree in trees.values():  # warm the OS file cache once
        for arguments in COMMANDS.values():
            time_command(arguments, tree)
    times: dict[tuple[str, str], list[float]] = {(label, name): [] for label in trees for name in COMMANDS}
    for _ in range(args.runs):
        for label, tree in trees.items():
            for name, arguments in COMMANDS.items():
                times[label, name].append(time_command(arguments, tree))
    print(f"## CLI start-up ({args.runs} runs each, alternated)")
    print("| tree | command | median s | min s | max s | imports pyspark |")
    print("|---|---|---|---|---|---|")
    for label, tree in trees.items():
        for name, arguments in COMMANDS.items():
            runs = times[label, name]
            print(f"| {label} | `{name}` | {statistics.median(runs):.3f} | {min(runs):.3f} | {max(runs):.3f} "
                  f"| {'yes' if imports_pyspark(arguments, tree) else 'no'} |")


if __name__ == "__main__":
    main()
