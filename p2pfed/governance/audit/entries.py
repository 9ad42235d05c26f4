"""What one audit entry is: its fields, kinds, hash and the bytes its signature covers.

Theory of operation: an entry is one canonical-JSON object (``p2pfed.canonical``) with
the fields ``ENTRY_FIELDS``. ``sig`` signs ``SIGNING_DOMAIN`` + the canonical JSON of the
entry without ``sig``; ``prev`` is ``entry_hash`` of the entry before (``GENESIS_HASH`` for
the first). The writer (``log``) and the verifier (``verify``) both build on these, so
what is signed and what is checked cannot drift apart.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from p2pfed.canonical import canonical_json
from p2pfed.errors import LocalError

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"p2pfed audit entry v1\x00"
GENESIS_HASH = "0" * 64
MAX_LINE_BYTES = 1 << 20
"""A cohort of thousands of hashed peer IDs fits; a line beyond this is treated as damage."""
ENTRY_FIELDS = frozenset({"v", "seq", "ts", "kind", "body", "prev", "signer", "key", "sig"})

_LOWER_HEX = re.compile(r"[0-9a-f]*")


class EntryKind(enum.StrEnum):
    """What an audit entry records."""

    DAEMON_START = "daemon_start"
    DAEMON_STOP = "daemon_stop"
    ROUND_START = "round_start"
    ROUND_END = "round_end"
    COHORT = "cohort"
    MODEL_VERSION = "model_version"
    MODEL_CERTIFIED = "model_certified"
    DP = "dp"
    ROSTER_VERSION = "roster_version"
    ROSTER_CHANGE = "roster_change"
    EXCLUSION = "exclusion"
    DRIFT_ALERT = "drift_alert"
    UNREACHABLE = "unreachable"
    LINK = "link"


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical JSON, signature included: the next ``prev``."""
    return hashlib.sha256(canonical_json(entry)).hexdigest()


def signing_message(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's signature covers: the domain tag and the entry without ``sig``."""
    return SIGNING_DOMAIN + canonical_json({k: v for k, v in entry.items() if k != "sig"})


def is_hex(value: object, size: int) -> bool:
    """Whether ``value`` is ``size`` bytes as lower-case hex."""
    # Lower-case only: one spelling per value, so the bytes of a verified line are unique.
    return (
        isinstance(value, str)
        and _LOWER_HEX.fullmatch(value) is not None
        and (len(value) == 2 * size)
    )


def finite(value: float, what: str) -> float | str:
    """``value`` as JSON can carry it; ``LocalError`` for NaN."""
    # ε is infinite when no noise is added; JSON has no infinity, so it is spelt out.
    if math.isnan(value):
        raise LocalError(f"{what} is NaN and cannot be audited")
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
