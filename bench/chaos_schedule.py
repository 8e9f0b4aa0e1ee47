"""The chaos run's fault schedule: which faults, in which order, at which planned moment (seeded).

A fault kind names what is done to the pipeline (see `chaos_pipeline` for how each is done):

- `job_kill9`: kill -9 of the streaming job's process group (driver and JVM), then a restart.
- `broker_kill9`: SIGKILL of the Kafka broker, a few seconds down, then a restart.
- `hdfs_datanode_restart`, `hdfs_namenode_restart`: stop (SIGTERM) and start of the HDFS DataNode, or of
  the NameNode, each its own JVM; the other daemon stays up.
- `producer_kill9`: kill -9 of the producer, then a restart.
- `ws_drop`: the exchange drops the producer's WebSocket connections (TCP reset or FIN without close frame).
- `ws_silence`: the exchange goes silent on them (no data, no pings) for longer than the feed's watchdog.
- `api_429`, `api_418`, `api_5xx`: the exchange's REST API answers rate limit / IP ban / server errors,
  armed before a trade-id gap so the producer's REST gap fill meets them.
- `malformed_records`: records that are not valid quotes or trades, written straight into both topics.

`schedule(seed, minutes, each_once)` spreads the faults over the run: `each_once` gives one of every
kind (the CI run), otherwise FULL_RUN_COUNTS, scaled down for runs shorter than FULL_RUN_MINUTES.
Not for: doing anything to processes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FAULT_KINDS: tuple[str, ...] = (
    "job_kill9", "broker_kill9", "hdfs_datanode_restart", "hdfs_namenode_restart", "producer_kill9",
    "ws_drop", "ws_silence", "api_429", "api_418", "api_5xx", "malformed_records",
)
# Per kind in a full (FULL_RUN_MINUTES) run; the contract asks for 3 kills of the job.
FULL_RUN_COUNTS: dict[str, int] = {
    "job_kill9": 3, "broker_kill9": 1, "hdfs_datanode_restart": 1, "hdfs_namenode_restart": 1, "producer_kill9": 1,
    "ws_drop": 3, "ws_silence": 2, "api_429": 2, "api_418": 1, "api_5xx": 2, "malformed_records": 3,
}
FULL_RUN_MINUTES = 15.0
HEAVY_KINDS = frozenset({"job_kill9", "broker_kill9", "hdfs_datanode_restart", "hdfs_namenode_restart",
                         "producer_kill9"})  # a process dies: the next fault waits for its recovery
WARM_UP_FRACTION = 0.05  # no fault in the first 5 % of the run (after the pipeline first flows)
LAST_FAULT_FRACTION = 0.80  # nor in the last 20 %: the pipeline recovers before the checks


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule: its kind, its planned moment (seconds after the pipeline first flows), a seed."""

    number: int
    kind: str
    at_s: float
    seed: int  # for the fault's own random choices (which WS fault variant, which symbol)


def fault_counts(minutes: float, each_once: bool) -> dict[str, int]:
    """How many faults of each kind: one each, or FULL_RUN_COUNTS scaled to `minutes` (at least one each)."""
    if each_once:
        return {kind: 1 for kind in FAULT_KINDS}
    scale = min(1.0, minutes / FULL_RUN_MINUTES) if minutes > 0 else 1.0
    return {kind: max(1, round(count * scale)) for kind, count in FULL_RUN_COUNTS.items()}


def schedule(seed: int, minutes: float, each_once: bool = False, only: list[str] | None = None) -> list[PlannedFault]:
    """The faults in a seeded order at evenly spread moments (jittered by up to a third of the spacing);
    `only`: just these kinds, one each."""
    rng = random.Random(seed)
    counts = {kind: 1 for kind in only} if only else fault_counts(minutes, each_once)
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rng.shuffle(kinds)
    first, last = WARM_UP_FRACTION * minutes * 60, LAST_FAULT_FRACTION * minutes * 60
    spacing = (last - first) / max(1, len(kinds))
    return [PlannedFault(number=index + 1, kind=kind,
                         at_s=first + index * spacing + rng.uniform(0, spacing / 3), seed=rng.randrange(2**31))
            for index, kind in enumerate(kinds)]
