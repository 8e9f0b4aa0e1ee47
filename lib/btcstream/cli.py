"""The `btcstream` command line: one sub-command per module in `btcstream.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`
(a callable taking the parsed args and the Settings and returning an exit code).
Any `BtcstreamError` becomes one clear line on stderr and exit code 2; any other failure one line
naming its type and message, exit code 1 (`-v` logs the traceback too).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from btcstream.errors import BtcstreamError
from btcstream.settings import load_settings

# Add a command by writing btcstream/commands/<name>.py with register() and listing it here.
COMMAND_MODULES = ("infra", "demo", "data", "exchange", "produce", "report", "stream", "status", "compact", "migrate",
                   "lab", "backfill", "forecast")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="btcstream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"btcstream.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of `python -m btcstream`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    for chatty in ("choreographer", "kaleido", "logistro"):  # the report's chart previews (headless Chromium)
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except BtcstreamError as error:
        print(f"btcstream: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a failure we did not classify: still one line, the traceback with -v
        logging.getLogger(__name__).debug("traceback of the failure below", exc_info=True)
        print(f"btcstream: error: {one_line(error)}" + ("" if args.verbose else " (run with -v for the traceback)"),
              file=sys.stderr)
        return 1


def one_line(error: BaseException) -> str:
    """`ExceptionType: first line of its message`, the way the CLI reports an unexpected failure.

    A JVM failure raised through py4j says only "An error occurred while calling o132.start." in
    its first line; its Java exception (e.g. `java.net.ConnectException: Call From ... to
    localhost:9000 failed`) is the line worth showing.
    """
    java = getattr(error, "java_exception", None)
    if java is not None:
        try:
            return str(java.toString()).strip().splitlines()[0]
        except Exception:  # the JVM is gone: fall back to the Python text
            pass
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
