"""The address every listener btcstream starts binds to (`Settings.bind_host`), and how to reach it.

`bind_host` is 127.0.0.1 by default: Kafka, HDFS, the Spark driver (RPC, block manager, UI), the
replay exchange and JupyterLab are reachable from this machine only. A wildcard (`0.0.0.0`, `::`)
opens them to the network; then this machine's own clients still connect through loopback, and
what a service tells remote clients to connect to (Kafka's advertised listener) is this host's name.
Not for: choosing ports (each service has its own).
"""

from __future__ import annotations

import ipaddress
import socket

from btcstream.errors import InfraError

WILDCARDS = frozenset({"0.0.0.0", "::"})


def is_wildcard(host: str) -> bool:
    """True for an address meaning "every interface" (0.0.0.0, ::)."""
    return host in WILDCARDS


def is_loopback(host: str) -> bool:
    """True for `localhost` and any loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_host(bind_host: str) -> str:
    """Where a client on this machine reaches a listener bound to `bind_host` (loopback for a wildcard)."""
    if bind_host == "::":
        return "::1"
    return "127.0.0.1" if bind_host == "0.0.0.0" else bind_host


def advertised_host(bind_host: str) -> str:
    """The host a service names to its clients: `bind_host` itself, or this machine's name for a wildcard."""
    return socket.getfqdn() if is_wildcard(bind_host) else bind_host


def url_host(host: str) -> str:
    """`host` as written in a URL or `host:port` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def check_stack_bind_host(bind_host: str) -> None:
    """Raise InfraError unless the local stack can bind `bind_host` and still be reached through localhost.

    `infra up` runs Kafka and HDFS only for a localhost bootstrap / storage root, so their clients
    connect through loopback: a specific non-loopback address would leave them unreachable.
    """
    if not (is_loopback(bind_host) or is_wildcard(bind_host)):
        raise InfraError(f"BTCSTREAM_BIND_HOST={bind_host}: the local Kafka and HDFS are reached through localhost, "
                         "so bind them to a loopback address (default 127.0.0.1) or to 0.0.0.0 / :: (every interface)")
