"""Start-up time of the `btcstream` command line: median wall time of `btcstream --help` and friends.

Each command runs in a fresh interpreter (what a user waits for when typing it), alternated over
`--runs` rounds so machine noise hits every command alike. Also reports whether pyspark was imported
(`python -X importtime`), the CLI's promise being that only the Spark commands load the JVM libraries.

    .venv/bin/python bench/bench_cli_startup.py --runs 15
"""

from __future__ import annotations

import argparse
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


def time_command(arguments: list[str]) -> float:
    """Wall seconds of one `python -m btcstream ARGS` in a fresh interpreter."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "btcstream", *arguments], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def imports_pyspark(arguments: list[str]) -> bool:
    """True when running the command imports any pyspark module (read from -X importtime)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "btcstream", *arguments],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return any(line.rsplit("|", 1)[-1].strip().startswith("pyspark") for line in result.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds of every command (default 15)")
    parser.add_argument("--label", default="", help="a name for this run in the output (e.g. a commit)")
    args = parser.parse_args()
    for arguments in COMMANDS.values():  # warm the OS file cache once
        time_command(arguments)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, arguments in COMMANDS.items():
            times[name].append(time_command(arguments))
    print(f"## CLI start-up {args.label} ({args.runs} runs each, {Path(sys.executable).parent.parent.name})")
    print("| command | median s | min s | max s | imports pyspark |")
    print("|---|---|---|---|---|")
    for name, arguments in COMMANDS.items():
        runs = times[name]
        print(f"| `{name}` | {statistics.median(runs):.3f} | {min(runs):.3f} | {max(runs):.3f} "
              f"| {'yes' if imports_pyspark(arguments) else 'no'} |")


if __name__ == "__main__":
    main()
