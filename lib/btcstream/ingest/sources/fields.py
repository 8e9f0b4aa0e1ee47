"""Turning raw JSON values into typed values at the edge: the shared coercions of the source parsers.

Every function returns None for a missing, null, empty or unparsable value; none ever invents one.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from btcstream.ingest.tick import utc_from_ms


def as_float(value: Any) -> float | None:
    """A JSON number or numeric string ("97017.57000000") as a finite float, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float (10**400)
        return None
    return number if math.isfinite(number) else None


def as_utc_from_ms(value: Any) -> datetime | None:
    """Epoch milliseconds (a JSON integer) as an aware UTC datetime, else None (also outside years 1..9999)."""
    number = as_float(value)
    if number is None:
        return None
    try:
        return utc_from_ms(number)
    except (OverflowError, ValueError, OSError):  # beyond the platform's time_t or datetime's years
        return None


def as_utc_from_iso(value: Any) -> datetime | None:
    """An ISO-8601 time with zone ("2025-02-14T10:58:30.120Z") as an aware UTC datetime, else None.

    A time without a zone is refused (None) rather than guessed.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # "0001-01-01T00:00+01:00" is before year 1 in UTC
        return None
