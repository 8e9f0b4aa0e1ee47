"""The offline end-to-end demo: local stack -> replay of real BTC history -> Kafka -> Spark -> HDFS -> report.

`btcstream demo` (what `make demo` runs) starts the local Kafka and HDFS if they are not running,
then builds the report: notebook 01 replays real Binance BTCUSDT history through the local
exchange, the producer, Kafka and the Spark streaming queries into Parquet on HDFS; 02 attaches
further streaming queries; 03 reads hourly_metrics back and charts hourly spread and volatility.
The report goes to `reports/` under the current directory; the demo prints where to open it.
Not for: tests (they start what they need themselves).
"""

from __future__ import annotations

import logging
import time

from btcstream.infra import stack
from btcstream.settings import Settings

log = logging.getLogger(__name__)


def run_demo(settings: Settings) -> int:
    """Run the demo; returns the process exit code."""
    from btcstream.workbench.report import REPORT_DIR, build_report

    started = time.monotonic()
    output_dir = REPORT_DIR.resolve()
    print("[1/2] local stack (Kafka broker + HDFS)", flush=True)
    for line in stack.up(settings):
        print(f"      {line}", flush=True)
    print("[2/2] report: replay real BTCUSDT history -> producer -> Kafka -> Spark -> HDFS -> charts "
          "(notebooks executed with papermill)", flush=True)
    runs = build_report(output_dir=output_dir)
    for run in runs:
        print(f"      {run.notebook}: {run.seconds:.0f} s -> {run.html}", flush=True)
    print(f"demo finished in {time.monotonic() - started:.0f} s; open {output_dir / 'index.html'}")
    print("the local stack keeps running (data stays on HDFS); stop it with `btcstream infra down`")
    return 0
