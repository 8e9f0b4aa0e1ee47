"""The btcstream exception hierarchy: one base, specific subclasses that carry their context.

The CLI turns any `BtcstreamError` into one clear line on stderr and a non-zero exit; every
message names the problem and, where there is one, the fix.
"""

from __future__ import annotations


class BtcstreamError(Exception):
    """Base class of every error btcstream raises on purpose."""


class SettingsError(BtcstreamError):
    """A setting has a value btcstream cannot use."""

    def __init__(self, name: str, value: object, problem: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"setting {name}={value!r}: {problem}")


class InfraError(BtcstreamError):
    """The local Kafka/HDFS stack could not be resolved, started, checked or stopped."""


class PortInUse(InfraError):
    """A port that a local service needs is already taken by another program."""

    def __init__(self, service: str, port: int) -> None:
        self.service = service
        self.port = port
        super().__init__(
            f"{service} cannot start: port {port} is already in use by another program; "
            f"stop that program (see `ss -ltnp 'sport = :{port}'`) or point btcstream at it"
        )
