"""The one canonical JSON encoding that p2pfed hashes and signs.

Sorted keys, no whitespace, ASCII escapes and no NaN or infinity: two honest encoders
produce the same bytes for the same value, so a hash or signature over them is stable
across peers, Python versions and platforms.
"""

from __future__ import annotations

import json

from p2pfed.errors import LocalError


def canonical_json(value: object) -> bytes:
    """The canonical bytes of ``value``; ``LocalError`` if JSON cannot carry it exactly."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise LocalError(f"value is not canonical JSON: {exc}") from None
    return text.encode("ascii")
