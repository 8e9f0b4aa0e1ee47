"""Bad input for the parsers' fuzz tests: hostile JSON values, and mutations of valid payloads.

The values are what a broken or hostile exchange, a bug in the producer or a corrupted Kafka record
can send: NaN and Infinity (JSON literals and strings), numbers beyond a double (1e400, 10**400),
wrong types, 1 MB strings, lone surrogates, invalid UTF-8, truncated and deeply nested JSON.
`mutated(payload, rng)` turns one valid payload into one bad (or, sometimes, still valid) byte string.
"""

from __future__ import annotations

import json
import random
from typing import Any

ONE_MB_STRING = "x" * (1 << 20)
HUGE_INTEGER = 10**400  # JSON text of 401 digits: beyond any double, and any 64-bit integer
DEEP_NESTING = b"[" * 100_000  # deeper than any JSON decoder's recursion

NASTY_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**63, -(2**63) - 1, HUGE_INTEGER, -HUGE_INTEGER,
    0.0, -0.0, 1.5, -97017.57, 5e-324, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
    "", " ", "NaN", "Infinity", "-Infinity", "inf", "1e400", "1" + "0" * 400, "97017.57", "-1", "abc",
    "\x00", "\ud800", "BTC\u00e9USDT", ONE_MB_STRING, "2025-02-14T10:58:31+00:00", "2025-02-14",
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "+275760-09-13T00:00:00Z",
    [], {}, [1, 2], {"a": {"b": [None]}}, [[[[[]]]]],
)
INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80")


def encode(value: Any) -> bytes:
    """JSON bytes of `value`, NaN/Infinity written as the bare literals some encoders emit."""
    return json.dumps(value, allow_nan=True, separators=(",", ":")).encode()


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-like value: a nasty scalar, or a small list or object of them."""
    roll = rng.random()
    if depth >= 3 or roll < 0.6:
        return rng.choice(NASTY_VALUES)
    if roll < 0.8:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(("a", "s", "p", "symbol", "data", "stream", "")): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def mutated(payload: Any, rng: random.Random) -> bytes:
    """One bad variant of a valid JSON payload (an object or an array), as bytes."""
    kind = rng.randrange(9)
    if isinstance(payload, dict) and payload and kind <= 2:  # one field: a nasty value, or gone
        changed = dict(payload)
        key = rng.choice(list(changed))
        if kind == 2:
            del changed[key]
        else:
            changed[key] = rng.choice(NASTY_VALUES) if kind == 0 else random_json(rng)
        return encode(changed)
    if isinstance(payload, list) and payload and kind <= 2:
        changed = list(payload)
        changed[rng.randrange(len(changed))] = rng.choice(NASTY_VALUES)
        return encode(changed[: rng.randint(0, len(changed))] if kind == 2 else changed)
    text = encode(payload)
    if kind == 3:  # truncated anywhere
        return text[: rng.randrange(len(text))]
    if kind == 4:  # invalid UTF-8 spliced in
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(INVALID_UTF8) + text[at:]
    if kind == 5:  # a valid JSON value of another shape
        return encode(random_json(rng))
    if kind == 6:
        return rng.choice((b"", b" ", b"null", b"[]", b"{}", b'"text"', b"NaN", b"-Infinity", DEEP_NESTING,
                           b"1" * 5000, b"{" * 1000))
    if kind == 7:  # every field at once
        if isinstance(payload, dict):
            return encode({key: rng.choice(NASTY_VALUES) for key in payload})
        return encode([rng.choice(NASTY_VALUES) for _ in payload])
    return encode({"wrapped": payload, "garbage": random_json(rng)})
