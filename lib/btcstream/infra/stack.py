"""The local stack as a whole: which services this machine runs, and `up`, `down`, `status` for them.

A service is run locally only when the settings point at this machine: an external Kafka
bootstrap or an HDFS on another host (or a `file://` storage root) is left alone, and said so.
"""

from __future__ import annotations

import logging
import time

from btcstream.infra import artifacts, processes
from btcstream.infra.hdfs import hdfs_home, hdfs_services
from btcstream.infra.kafka import KafkaBroker
from btcstream.infra.service import LocalService, ServiceStatus
from btcstream.settings import Settings

log = logging.getLogger(__name__)


def local_services(settings: Settings) -> tuple[list[LocalService], list[str]]:
    """(services to run here, one line per service that is external or not needed)."""
    services: list[LocalService] = []
    skipped: list[str] = []
    if settings.kafka_is_local:
        services.append(KafkaBroker(settings))
    else:
        skipped.append(f"kafka: external ({settings.kafka_bootstrap}), not started here")
    if settings.hdfs_is_local:
        services.extend(hdfs_services(settings))
    elif settings.storage_scheme == "hdfs":
        skipped.append(f"hdfs: external ({settings.storage_root}), not started here")
    else:
        skipped.append(f"hdfs: not needed (storage root {settings.storage_root})")
    return services, skipped


def up(settings: Settings) -> list[str]:
    """Resolve jars if needed, start every local service and wait until each is healthy."""
    services, lines = local_services(settings)
    lines.extend(_stop_legacy_hdfs(settings))
    needed = sorted({"kafka" if isinstance(s, KafkaBroker) else "hdfs" for s in services})
    for component in needed:
        if not artifacts.is_resolved(settings, component):
            artifacts.resolve(settings, component)
    started = time.monotonic()
    for service in services:  # every port first: a taken one stops `up` before anything starts
        if service.pid() is None:
            service.check_ports()
    # All processes at once, then each awaited: the JVMs start side by side (the DataNode keeps
    # trying the NameNode until it answers), which takes about the slowest one's time, not the sum.
    launched = [(service, service.launch()) for service in services]
    for service, launch in launched:
        lines.append(launch if isinstance(launch, str) else service.wait_until_healthy(launch))
    lines.append(f"stack ready in {time.monotonic() - started:.1f} s; state in {settings.state_dir}")
    return lines


def down(settings: Settings) -> list[str]:
    """Stop every local service (in reverse start order)."""
    services, lines = local_services(settings)
    return lines + [service.stop() for service in reversed(services)] + _stop_legacy_hdfs(settings)


def _stop_legacy_hdfs(settings: Settings) -> list[str]:
    """Stop a one-JVM MiniDFSCluster that an earlier btcstream started (`<state>/hdfs/hdfs.pid`): it holds
    the ports and directories of the two daemons that replace it. Its data is theirs (same directories)."""
    home = hdfs_home(settings)
    if not settings.hdfs_is_local or processes.running_pid(home / "hdfs.pid", str(home)) is None:
        return []
    processes.stop(home / "hdfs.pid", str(home))
    # The NameNode and DataNode take over its ports next: give the kernel a moment to release them.
    processes.wait_until_free([port for service in hdfs_services(settings) for port in service.ports.values()],
                              settings.bind_host)
    return ["hdfs: stopped the one-JVM MiniDFSCluster of an earlier btcstream (now a NameNode and a DataNode)"]


def status(settings: Settings) -> tuple[list[ServiceStatus], list[str]]:
    """Status of each local service, plus the lines for external ones."""
    services, lines = local_services(settings)
    return [service.status() for service in services], lines


def all_healthy(settings: Settings) -> bool:
    """True when every local service runs and answers."""
    statuses, _ = status(settings)
    return all(s.healthy for s in statuses)
