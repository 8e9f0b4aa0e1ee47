"""The commit conflicts delta-spark raises, for writers that retry them.

A Delta commit fails when a concurrent commit (an OPTIMIZE by `btcstream compact`, another writer)
changed what it read. delta-spark's Python exception classes for that do not share a base class:
`DeltaConcurrentModificationException` is one of them, not their parent, so catching it alone
misses `ConcurrentDeleteReadException` and the others.
"""

from __future__ import annotations


def commit_conflicts() -> tuple[type[Exception], ...]:
    """Every commit-conflict exception class of `delta.exceptions` (imported on call: needs delta-spark)."""
    from delta import exceptions

    return tuple(getattr(exceptions, name) for name in exceptions.__all__)
