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


class StorageReadError(BtcstreamError):
    """Stored data could not be read as asked (bad range, engine or storage root)."""


class SourceError(BtcstreamError):
    """A market-data API (Binance, CoinGecko) did not give a usable answer."""

    def __init__(self, host: str, path: str, problem: str) -> None:
        self.host = host
        self.path = path
        super().__init__(f"{host}{path}: {problem}")


class RateLimited(SourceError):
    """HTTP 429/418: the host must not be called again before `until` (from its Retry-After)."""

    def __init__(self, host: str, path: str, status: int, retry_after_s: float, until: float) -> None:
        self.status = status
        self.retry_after_s = retry_after_s
        self.until = until  # time.monotonic() before which the host is not called
        kind = "banned this IP (418)" if status == 418 else "rate limit hit (429)"
        super().__init__(host, path, f"{kind}; not calling this host for {retry_after_s:g} s (Retry-After)")


class AccessDenied(SourceError):
    """HTTP 451 or 403: the API refuses this client for a reason retrying cannot fix."""

    def __init__(self, host: str, path: str, status: int, cause: str) -> None:
        self.status = status
        super().__init__(host, path, f"HTTP {status}: {cause}")


class SourceUnavailable(SourceError):
    """Server errors (5xx), timeouts or connection failures that outlasted every retry."""


class BadResponse(SourceError):
    """The answer was not the documented JSON (an HTML page, a wrong shape) or a 4xx request error."""


class ReportError(BtcstreamError):
    """A notebook of the report could not be executed or exported."""


class StreamingQueryFailed(BtcstreamError):
    """A query of the streaming job terminated with an error (its checkpoint lets it resume)."""

    def __init__(self, query_name: str, cause: str) -> None:
        self.query_name = query_name
        first_line = cause.strip().splitlines()[0] if cause.strip() else cause
        super().__init__(f"streaming query {query_name} failed: {first_line}; fix the cause and run "
                         f"`btcstream stream` again (it resumes from its checkpoint)")


class CompactionError(BtcstreamError):
    """`btcstream compact` could not optimize or vacuum a table (e.g. a retention below the safe minimum)."""


class LegacyLayout(BtcstreamError):
    """The storage root holds datasets of the old file-sink layout, not Delta tables: `btcstream migrate` imports them."""


class PipelineError(BtcstreamError):
    """A part of the pipeline (exchange, producer, streaming query) failed to start or while running."""


class HistoryError(BtcstreamError):
    """A kline CSV cannot be replayed by the local exchange (missing, malformed, or bars that break high >= open/close >= low)."""


class UnknownSymbol(BtcstreamError):
    """The local exchange has no history for this symbol."""


class SparkSessionError(BtcstreamError):
    """The SparkSession of this process cannot do what was asked (e.g. it lacks the Kafka connector)."""


class StorageNotWritable(BtcstreamError):
    """The storage root refused a write: full (or over its HDFS quota), read-only, or not permitted.

    The job stops cleanly; its checkpoint holds the Kafka offsets of the last committed batch, so
    once the cause is fixed `btcstream stream` resumes there and nothing is lost (Kafka keeps the
    ticks for `topic_retention_hours`).
    """

    FIXES = {
        "full": "free space there or grow the volume",
        "over quota": "raise the HDFS quota (`hdfs dfsadmin -setSpaceQuota`) or free space",
        "read-only": "make it writable again (e.g. remount it read-write)",
        "not permitted": "give this user write access to it",
    }

    def __init__(self, storage_root: str, kind: str, cause: str) -> None:
        self.storage_root = storage_root
        self.kind = kind
        self.cause = cause
        super().__init__(f"storage root {storage_root} is {kind} ({cause}): {self.FIXES[kind]}, then run "
                         f"`btcstream stream` again; it resumes from its checkpoint and nothing is lost")
