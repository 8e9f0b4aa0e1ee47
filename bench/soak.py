"""Soak run: the whole pipeline at a steady rate for hours; every minute, each process's memory and files.

What runs (all real, on a stack of its own so a running `btcstream infra up` stack is never touched):
the chaos run's pipeline (`chaos_pipeline.ChaosPipeline`) without faults: Kafka + HDFS started by
`btcstream.infra.stack` on other ports (`--kafka-port`, `--hdfs-port`) under a state directory of its
own; the replay exchange in this process (real-time speed, `--symbols` symbols, BTCUSDT real and the
others derived from it, `--quotes-per-second` book updates and `--trades-per-second` trades per
symbol per second); the producer (`btcstream produce --source replay --feed websocket`) and the
streaming job (`btcstream stream`), each its own process.

Every `--sample-seconds` (60) it records, per process (broker, HDFS NameNode and DataNode, job driver = the `btcstream
stream` Python process plus its JVM, producer): resident memory (RSS) and open file descriptors; for the three
service JVMs also the heap in use after garbage collection (the smallest after any collection of the minute)
and the live data G1's newest concurrent marking of the minute found (from their GC logs:
`btcstream.infra.gc_log`), and every `--live-every-minutes` (15) their live heap after a full collection
(`jcmd <pid> GC.class_histogram`: `btcstream.infra.heap_histogram`; exact, a pause of tens of ms); and
the job's Kafka lag (topic end offsets - the checkpoint's committed offsets, both topics), its last
batch duration (the progress document) and the number of files under the storage root (WebHDFS).

Verdict (exit 1 when any fails), over the samples after `--warm-up-minutes`:
- memory and descriptors do not keep growing: least-squares slope x post-warm-up duration stays
  under max(GROWTH_FRACTION x median, GROWTH_FLOOR) for each process, or the last third's median is
  not above the first third's by that much (a one-off step is not a leak; a trend is). A service JVM's
  memory is judged by the slope of its live heap after the forced full collections (a heap leak grows
  it; with fewer than 3 of them after warm-up, by its live data after G1's markings; with fewer than 3
  markings, by its heap after GC, which also holds the garbage of old regions G1 has not collected
  yet: G1 may not mark for hours in a heap with room, so that figure creeps up without a leak) and by
  its RSS staying under -Xmx + what lay outside its live heap after warm-up + a margin (`rss_bound`: a
  native leak crosses it), not by the slope of its RSS: the RSS of a JVM started with -Xms below
  -Xmx grows while the heap it commits and touches fills up to -Xmx, which is bounded and no leak;
- lag returns to near zero: after the producer stops, the lag drains to <= LAG_NEAR_ZERO within
  `--drain-minutes`, and no third of the run has a minimum lag above the messages of one minute.

Results: bench/results/soak.md (the table), bench/results/soak_samples.csv, bench/results/soak.html
(plotly chart). Run: `python bench/soak.py [--minutes 120]` (heavy: a quiet machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the derived-symbol histories the WebSocket benchmarks use
from helpers.replay_exchange import symbol_histories  # noqa: E402

from btcstream.errors import StorageReadError  # noqa: E402
from btcstream.infra.gc_log import heap_after_gc, live_after_marking, liveness_log  # noqa: E402
from btcstream.infra.heap_histogram import heap_histogram  # noqa: E402
from btcstream.infra.hdfs import DATANODE_HEAP, NAMENODE_HEAP, DataNode, NameNode  # noqa: E402
from btcstream.infra.kafka import HEAP as KAFKA_HEAP  # noqa: E402
from btcstream.infra.kafka import KafkaBroker  # noqa: E402
from btcstream.settings import Settings  # noqa: E402
from btcstream.streaming.progress import read_progress  # noqa: E402

from chaos_pipeline import ChaosConfig, ChaosPipeline  # noqa: E402 - the same isolated pipeline, without faults

RESULTS = ROOT / "bench" / "results"
GROWTH_FRACTION = {"rss_mib": 0.10, "heap_mib": 0.10, "live_mib": 0.10, "full_gc_live_mib": 0.10, "fds": 0.20}
GROWTH_FLOOR = {"rss_mib": 64.0, "heap_mib": 32.0, "live_mib": 32.0, "full_gc_live_mib": 32.0, "fds": 20.0}
MIN_MARKINGS = 3  # live readings after warm-up needed to judge a service JVM by them (else by the next figure)
# What judges a service JVM's heap, the first with MIN_MARKINGS readings after warm-up.
HEAP_FIGURES = {"full_gc_live_mib": "live heap after a full collection", "live_mib": "live data after marking",
                "heap_mib": "heap after GC"}
LAG_NEAR_ZERO = 1_000  # records
PROCESSES = ("broker", "namenode", "datanode", "job_driver", "producer")
SERVICE_JVMS = ("broker", "namenode", "datanode")  # judged by a heap figure (`heap_figure`) and an RSS bound (`rss_bound`)


def _mib(option: str) -> float:
    """-Xmx512m -> 512.0."""
    value, unit = option.removeprefix("-Xmx")[:-1], option[-1].lower()
    return float(value) * {"m": 1, "g": 1024}[unit]


SERVICE_MAX_HEAP_MIB = {"broker": _mib(KAFKA_HEAP), "namenode": _mib(NAMENODE_HEAP), "datanode": _mib(DATANODE_HEAP)}
log = logging.getLogger("soak")


@dataclass
class Sample:
    """One minute's readings."""

    at: float  # seconds since the start
    rss_mib: dict[str, float] = field(default_factory=dict)
    heap_mib: dict[str, float] = field(default_factory=dict)  # service JVMs: smallest heap after a GC of the interval
    live_mib: dict[str, float] = field(default_factory=dict)  # service JVMs: live data of the interval's newest marking
    full_gc_live_mib: dict[str, float] = field(default_factory=dict)  # service JVMs: after a forced full collection
    fds: dict[str, int] = field(default_factory=dict)
    lag: int | None = None
    batch_ms: float | None = None
    hdfs_files: int | None = None


def memory_and_files(pid: int | None, with_children: bool = False) -> tuple[float, int] | None:
    """(RSS in MiB, open descriptors) of a process (and its children: the job's JVM), None when gone."""
    if pid is None:
        return None
    try:
        parent = psutil.Process(pid)
        procs = [parent, *(parent.children(recursive=True) if with_children else [])]
        return (sum(p.memory_info().rss for p in procs) / 2**20, sum(p.num_fds() for p in procs))
    except psutil.Error:
        return None


def kafka_lag(pipeline: ChaosPipeline) -> int | None:
    """Records in both topics that the job's checkpoint has not committed yet (None: unknown now)."""
    ends, committed = pipeline.end_offsets(), pipeline.committed_offsets()
    if ends is None or committed is None:
        log.warning("lag unknown: the broker or the checkpoint did not answer")
        return None
    return sum(max(0, ends[topic] - committed.get(topic, 0)) for topic in ends)


def hdfs_files(settings: Settings) -> int | None:
    """Files under the storage root (WebHDFS GETCONTENTSUMMARY)."""
    url = f"http://localhost:{settings.webhdfs_port}/webhdfs/v1{settings.storage_path}?op=GETCONTENTSUMMARY&user.name=btcstream"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.load(response)["ContentSummary"]["fileCount"])
    except Exception as error:  # noqa: BLE001
        log.warning("HDFS file count unknown: %s", error)
        return None


def last_batch_ms(settings: Settings) -> float | None:
    """The job's last batch duration from its progress document; None (logged) when it cannot be read."""
    try:
        document = read_progress(settings, "btcstream_ingest") or {}
    except (StorageReadError, OSError) as error:  # one sample without it, not the end of the run
        log.warning("batch duration unknown: %s", error)
        return None
    history = document.get("history") or []
    duration = history[-1].get("duration_ms") if history else None
    return float(duration) if duration is not None else None


def take_sample(pipeline: ChaosPipeline, started: float, pids: dict[str, int | None], gc_logs: dict[str, Path],
                interval_s: float) -> Sample:
    settings = pipeline.settings
    sample = Sample(at=time.monotonic() - started)
    for name, pid in pids.items():
        reading = memory_and_files(pid, with_children=name == "job_driver")
        if reading is not None:
            sample.rss_mib[name], sample.fds[name] = reading
    for name, path in gc_logs.items():
        heap = heap_after_gc(path, timedelta(seconds=interval_s))
        if heap is not None and name in sample.rss_mib:  # None: no collection in the interval
            sample.heap_mib[name] = float(heap.used_mib)
        live = live_after_marking(liveness_log(path), timedelta(seconds=interval_s))
        if live is not None and name in sample.rss_mib:  # None: no marking in the interval
            sample.live_mib[name] = live.live_mib
    sample.lag, sample.batch_ms, sample.hdfs_files = kafka_lag(pipeline), last_batch_ms(settings), hdfs_files(settings)
    return sample


def measure_live_heaps(sample: Sample, pids: dict[str, int | None]) -> None:
    """Each service JVM's live heap after a full collection (`jcmd GC.class_histogram`) into `sample`,
    with its largest classes in the log (what grew, if anything does)."""
    for name in SERVICE_JVMS:
        histogram = heap_histogram(pids[name]) if pids.get(name) else None
        if histogram is None:
            log.warning("%s: live heap not measured (process gone, or no jcmd beside java)", name)
            continue
        sample.full_gc_live_mib[name] = histogram.live_mib
        log.info("%s: %.1f MiB live after a full collection; largest: %s", name, histogram.live_mib,
                 ", ".join(f"{kind} {mib:.1f} MiB" for kind, mib in histogram.top[:3]))


def growth(times_h: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(least-squares growth over the span, last third's median - first third's median)."""
    slope = float(np.polyfit(times_h, values, 1)[0]) if len(values) >= 3 else 0.0
    third = max(1, len(values) // 3)
    return slope * float(times_h[-1] - times_h[0]), float(np.median(values[-third:]) - np.median(values[:third]))


def rss_bound(name: str, after: list[Sample]) -> tuple[str, str | None]:
    """A service JVM's RSS against what heap growth can explain: bound = -Xmx + what was outside the
    heap's live data at the first sample after warm-up (RSS - heap after GC: the JVM's own memory
    plus heap pages touched but free; an upper estimate, so the bound errs on the generous side) +
    GROWTH_FLOOR. RSS above it means memory outside the heap grew (a native leak), which the heap
    after GC cannot show."""
    readings = [s for s in after if name in s.rss_mib]
    first = next((s for s in readings if name in s.heap_mib), None)
    if first is None:
        return f"| {name} | rss_mib | - | - | - | no heap reading after warm-up |", None
    outside = max(0.0, first.rss_mib[name] - first.heap_mib[name])
    bound = SERVICE_MAX_HEAP_MIB[name] + outside + GROWTH_FLOOR["rss_mib"]
    peak = max(s.rss_mib[name] for s in readings)
    over = peak > bound
    line = (f"| {name} | rss_mib | {readings[0].rss_mib[name]:,.0f} | {readings[-1].rss_mib[name]:,.0f} | peak "
            f"{peak:,.0f} (bound {bound:,.0f} = -Xmx {SERVICE_MAX_HEAP_MIB[name]:,.0f} + {outside:,.0f} outside the "
            f"live heap after warm-up + {GROWTH_FLOOR['rss_mib']:,.0f}) | {'ABOVE ITS BOUND' if over else 'within its bound'} |")
    return line, (f"{name} rss_mib {peak:,.0f} above its bound {bound:,.0f}: memory outside the heap grew"
                  if over else None)


def heap_figure(name: str, after: list[Sample]) -> str:
    """The figure that judges service JVM `name`'s heap: the first of HEAP_FIGURES with enough readings."""
    for metric in HEAP_FIGURES:
        if sum(name in getattr(s, metric) for s in after) >= MIN_MARKINGS:
            return metric
    return "heap_mib"


def _judged(metric: str, name: str, by: dict[str, str]) -> tuple[bool, str]:
    """Whether `metric` of process `name` decides the verdict; if not, what does instead."""
    if name not in SERVICE_JVMS or metric == "fds":
        return True, ""
    if metric == by[name]:
        return True, ""
    return False, f"{HEAP_FIGURES[by[name]]} and the RSS bound"


def verdict(samples: list[Sample], warm_up_s: float, messages_per_minute: float,
            drained_lag: int | None) -> tuple[list[str], list[str]]:
    """(lines of the growth table, failures)."""
    after = [s for s in samples if s.at >= warm_up_s]
    lines, failures = [], []
    by = {name: heap_figure(name, after) for name in SERVICE_JVMS}
    for metric in ("rss_mib", *HEAP_FIGURES, "fds"):
        for name in PROCESSES:
            if metric in HEAP_FIGURES and name not in SERVICE_JVMS:
                continue
            points = [(s.at / 3600, getattr(s, metric)[name]) for s in after if name in getattr(s, metric)]
            if len(points) < 3:
                few = {"live_mib": "markings (G1 marks once the heap fills past its threshold)",
                       "full_gc_live_mib": "full collections (--live-every-minutes)"}.get(metric, "samples")
                lines.append(f"| {name} | {metric} | - | - | - | too few {few} |")
                continue
            times, values = np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)
            trend, step = growth(times, values)
            limit = max(GROWTH_FRACTION[metric] * float(np.median(values)), GROWTH_FLOOR[metric])
            grows = trend > limit and step > limit
            judged, instead = _judged(metric, name, by)
            label = ("KEEPS GROWING" if grows else "flat") if judged else (
                f"{'grows' if grows else 'flat'} (not judged: {instead} are)")
            lines.append(f"| {name} | {metric} | {values[0]:,.0f} | {values[-1]:,.0f} | {trend:+,.1f} "
                         f"(limit {limit:,.0f}) | {label} |")
            if grows and judged:
                failures.append(f"{name} {metric} keeps growing: {trend:+,.1f} over the run after warm-up")
    for name in SERVICE_JVMS:
        line, failure = rss_bound(name, after)
        lines.append(line)
        failures.extend([failure] if failure else [])
    lags = [s.lag for s in after if s.lag is not None]
    if lags:
        third = max(1, len(lags) // 3)
        for index in range(0, len(lags), third):
            if min(lags[index:index + third]) > messages_per_minute:
                failures.append(f"lag stayed above {messages_per_minute:,.0f} (a minute of messages) for a third of the run")
                break
    if drained_lag is None or drained_lag > LAG_NEAR_ZERO:
        failures.append(f"lag did not drain to <= {LAG_NEAR_ZERO:,} after the producer stopped (last: {drained_lag})")
    return lines, failures


def write_results(args: argparse.Namespace, samples: list[Sample], lines: list[str], failures: list[str],
                  drained_lag: int | None, rate: float) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "soak_samples.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["minute", *(f"{n}_rss_mib" for n in PROCESSES), *(f"{n}_heap_mib" for n in SERVICE_JVMS),
                         *(f"{n}_live_mib" for n in SERVICE_JVMS), *(f"{n}_full_gc_live_mib" for n in SERVICE_JVMS),
                         *(f"{n}_fds" for n in PROCESSES),
                         "lag", "batch_ms", "hdfs_files"])
        for s in samples:
            writer.writerow([f"{s.at / 60:.1f}", *(f"{s.rss_mib.get(n, float('nan')):.1f}" for n in PROCESSES),
                             *(f"{s.heap_mib.get(n, float('nan')):.0f}" for n in SERVICE_JVMS),
                             *(f"{s.live_mib.get(n, float('nan')):.1f}" for n in SERVICE_JVMS),
                             *(f"{s.full_gc_live_mib.get(n, float('nan')):.1f}" for n in SERVICE_JVMS),
                             *(s.fds.get(n, "") for n in PROCESSES), s.lag, s.batch_ms, s.hdfs_files])
    at_ten = min(samples, key=lambda s: abs(s.at - 600)) if samples else None
    last = samples[-1] if samples else None
    def reading(sample: Sample, name: str) -> str:
        figures = [f"heap after GC {sample.heap_mib[name]:,.0f}"] if name in sample.heap_mib else []
        marked = [s for s in samples if name in s.live_mib and abs(s.at - sample.at) <= 300]  # markings are minutes apart
        if marked:
            figures.append(f"live after marking {min(marked, key=lambda s: abs(s.at - sample.at)).live_mib[name]:,.0f}")
        measured = [s for s in samples if name in s.full_gc_live_mib and abs(s.at - sample.at) <= args.live_every_minutes * 60]
        if measured:
            figures.append("live after a full GC "
                           f"{min(measured, key=lambda s: abs(s.at - sample.at)).full_gc_live_mib[name]:,.0f}")
        heap = f" ({', '.join(figures)})" if figures else ""
        return f"{sample.rss_mib.get(name, float('nan')):,.0f} MiB{heap}, {sample.fds.get(name, '-')} fds"

    rows = [f"| {n} | {reading(at_ten, n)} | {reading(last, n)} |" for n in PROCESSES] if at_ten and last else []
    lags = [s.lag for s in samples if s.lag is not None]
    batches = [s.batch_ms for s in samples if s.batch_ms is not None]
    files = [s.hdfs_files for s in samples if s.hdfs_files is not None]
    text = "\n".join([
        f"# Soak run: {args.minutes:g} minutes at a steady rate", "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, `python bench/soak.py --minutes {args.minutes:g}`: "
        f"{args.symbols} symbols x ({args.quotes_per_second:g} book updates + {args.trades_per_second:g} trades) per "
        f"second from the replay exchange's WebSocket streams (~{rate:,.0f} messages/s), the producer, Kafka, the job "
        f"(`local[2]`, {args.trigger_seconds:g} s trigger), HDFS; a sample every {args.sample_seconds:g} s; warm-up "
        f"{args.warm_up_minutes:g} min. {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB.", "",
        "| process | at 10 min | at the end |", "|---|---|---|", *rows, "",
        "| process | metric | first after warm-up | last | least-squares growth after warm-up | verdict |",
        "|---|---|---|---|---|---|", *lines, "",
        f"Kafka lag (records): median {statistics.median(lags) if lags else '-'}, max {max(lags) if lags else '-'}; "
        f"after the producer stopped: {drained_lag}.",
        f"Batch duration: median {statistics.median(batches) if batches else '-'} ms, "
        f"max {max(batches) if batches else '-'} ms. Files under the root: {files[0] if files else '-'} -> "
        f"{files[-1] if files else '-'}.", "",
        "Verdict: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)), "",
        "Samples: soak_samples.csv; chart: soak.html.", ""])
    (RESULTS / "soak.md").write_text(text)
    chart(samples)
    return text


def chart(samples: list[Sample]) -> None:
    """bench/results/soak.html: RSS, descriptors, lag, batch duration and HDFS files over the run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    minutes = [s.at / 60 for s in samples]
    figure = make_subplots(rows=5, cols=1, shared_xaxes=True, subplot_titles=(
        "RSS, and service JVMs' heap after GC and live data after marking (MiB)", "open descriptors", "Kafka lag (records)",
        "batch duration (ms)", "files under the root"))
    for name in PROCESSES:
        figure.add_trace(go.Scatter(x=minutes, y=[s.rss_mib.get(name) for s in samples], name=f"{name} RSS"), 1, 1)
        if name in SERVICE_JVMS:
            figure.add_trace(go.Scatter(x=minutes, y=[s.heap_mib.get(name) for s in samples],
                                        name=f"{name} heap after GC", line={"dash": "dot"}), 1, 1)
            figure.add_trace(go.Scatter(x=minutes, y=[s.live_mib.get(name) for s in samples], mode="markers",
                                        name=f"{name} live after marking"), 1, 1)
            figure.add_trace(go.Scatter(x=minutes, y=[s.full_gc_live_mib.get(name) for s in samples], mode="markers",
                                        marker={"symbol": "diamond"}, name=f"{name} live after a full GC"), 1, 1)
        figure.add_trace(go.Scatter(x=minutes, y=[s.fds.get(name) for s in samples], name=f"{name} fds"), 2, 1)
    figure.add_trace(go.Scatter(x=minutes, y=[s.lag for s in samples], name="lag"), 3, 1)
    figure.add_trace(go.Scatter(x=minutes, y=[s.batch_ms for s in samples], name="batch ms"), 4, 1)
    figure.add_trace(go.Scatter(x=minutes, y=[s.hdfs_files for s in samples], name="files"), 5, 1)
    figure.update_xaxes(title_text="minutes", row=5, col=1)
    figure.update_layout(height=1400, title="btcstream soak run")
    figure.write_html(RESULTS / "soak.html", include_plotlyjs=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--warm-up-minutes", type=float, default=10.0)
    parser.add_argument("--drain-minutes", type=float, default=5.0)
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--quotes-per-second", type=float, default=20.0, help="book updates per symbol per second")
    parser.add_argument("--trades-per-second", type=float, default=20.0, help="trades per symbol per second")
    parser.add_argument("--trigger-seconds", type=float, default=10.0)
    parser.add_argument("--kafka-port", type=int, default=20092)
    parser.add_argument("--hdfs-port", type=int, default=20000)
    parser.add_argument("--webhdfs-port", type=int, default=20870)
    parser.add_argument("--live-every-minutes", type=float, default=15.0,
                        help="measure the service JVMs' live heap after a full collection this often (0: never)")
    parser.add_argument("--keep-state", action="store_true", help="leave the soak's state dir (logs, HDFS data) behind")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="btcstream-soak-"))
    config = ChaosConfig(state_dir=state, kafka_port=args.kafka_port, hdfs_port=args.hdfs_port,
                         webhdfs_port=args.webhdfs_port, symbols=args.symbols, quotes_per_second=args.quotes_per_second,
                         trades_per_second=args.trades_per_second, speed=1.0, trigger_s=args.trigger_seconds)
    pipeline = ChaosPipeline(config, symbol_histories(state, args.symbols))
    rate = args.symbols * (args.quotes_per_second + args.trades_per_second + 1)
    samples: list[Sample] = []
    restarts = 0
    drained_lag: int | None = None
    finished = False
    log.info("soak: %g minutes, ~%.0f messages/s, state in %s", args.minutes, rate, state)
    try:
        pipeline.start()
        started = time.monotonic()
        services = {"broker": KafkaBroker(pipeline.settings), "namenode": NameNode(pipeline.settings),
                    "datanode": DataNode(pipeline.settings)}
        pids = {**{name: service.pid() for name, service in services.items()},
                "job_driver": pipeline.job.process.pid, "producer": pipeline.producer.process.pid}
        gc_logs = {name: service.gc_log_file for name, service in services.items()}
        next_full_gc = started + args.warm_up_minutes * 60  # the first at the end of the warm-up
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.sample_seconds)
            for process in (pipeline.job, pipeline.producer):
                if not process.alive():  # a soak has no faults: any exit fails it
                    raise RuntimeError(f"the {process.name} exited ({process.process.returncode}): "
                                       f"see {process.log_file}")
            samples.append(take_sample(pipeline, started, pids, gc_logs, args.sample_seconds))
            last = samples[-1]
            if args.live_every_minutes > 0 and time.monotonic() >= next_full_gc:
                measure_live_heaps(last, pids)
                next_full_gc += args.live_every_minutes * 60
            log.info("minute %.0f: rss %s, heap after GC %s, live after marking %s, lag %s, batch %s ms, files %s",
                     last.at / 60, {k: round(v) for k, v in last.rss_mib.items()}, last.heap_mib, last.live_mib,
                     last.lag, last.batch_ms, last.hdfs_files)
        restarts = int((read_progress(pipeline.settings, "btcstream_ingest") or {}).get("restarts") or 0)
        pipeline.stop_producer()
        deadline = time.monotonic() + args.drain_minutes * 60
        while time.monotonic() < deadline:
            drained_lag = kafka_lag(pipeline)
            if drained_lag is not None and drained_lag <= LAG_NEAR_ZERO:
                break
            time.sleep(10)
        finished = True
    finally:
        pipeline.stop()
        if finished and not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)
        else:
            log.info("logs and data left in %s", state)
    lines, failures = verdict(samples, args.warm_up_minutes * 60, rate * 60, drained_lag)
    if restarts:  # `btcstream stream` restarted its failed query: a soak has no faults to explain that
        failures.append(f"the job's query failed and was restarted {restarts} time(s): see {pipeline.job.log_file}")
    print(write_results(args, samples, lines, failures, drained_lag, rate))
    return 1 if failures else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
