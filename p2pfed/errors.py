"""The error hierarchy, split by blame.

Theory of operation: every error p2pfed raises on purpose derives from ``P2PFedError`` and
says *whose fault* it is, so callers can react without parsing messages:

- ``LocalError``: our side got it wrong — a bad config, a bad file, misuse of an API,
  a budget that would be exceeded. Fix the input; retrying the same thing fails the same way.
- ``RemoteProtocolError``: a peer sent something malformed, replayed, out of order or
  unauthorised. It carries a ``ReasonCode`` and the peer, so the peer can be excluded and
  the exclusion recorded (never dropped silently).
- ``ClosedError`` (we closed the resource) versus ``BrokenError`` (the peer or network
  broke it), as trio separates ``ClosedResourceError`` and ``BrokenResourceError``.

Messages are one sentence naming what was wrong; the CLI prints them as they are.
"""

from __future__ import annotations

import enum


class ReasonCode(enum.StrEnum):
    """Why a message or a peer was rejected; recorded with every exclusion."""

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNKNOWN_VERSION = "unknown-version"
    UNKNOWN_TYPE = "unknown-type"
    UNKNOWN_PEER = "unknown-peer"
    REMOVED_MEMBER = "removed-member"
    WRONG_CONSORTIUM = "wrong-consortium"
    WRONG_ROUND = "wrong-round"
    REPLAY = "replay"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out-of-order"
    UNEXPECTED_STAGE = "unexpected-stage"
    BAD_SIGNATURE = "bad-signature"
    DIGEST_MISMATCH = "digest-mismatch"
    WRONG_SHAPE = "wrong-shape"
    WRONG_DTYPE = "wrong-dtype"
    NON_FINITE = "non-finite"
    BAD_SHARE = "bad-share"
    TIMEOUT = "timeout"
    DROPPED = "dropped"
    PROTOCOL_VIOLATION = "protocol-violation"
    NOT_MEMBER = "not-member"
    RATE_LIMITED = "rate-limited"
    STALE_BASE = "stale-base"


class P2PFedError(Exception):
    """Root of every error p2pfed raises on purpose."""


class LocalError(P2PFedError):
    """Our side is at fault: bad input, bad configuration, or API misuse."""


class ConfigError(LocalError):
    """A configuration value or file is invalid; the message names the key."""


class DataError(LocalError):
    """A data file or tensor is unusable (wrong shape, NaN, failed validation)."""


class IntegrityError(LocalError):
    """A file we wrote earlier is corrupted or was tampered with; never reset silently."""


class BudgetExceededError(LocalError):
    """A release would spend more privacy budget than the institution allows."""


class LocalProtocolError(LocalError):
    """We tried to do something the protocol does not allow in the current state."""


class RemoteProtocolError(P2PFedError):
    """A peer misbehaved; carries the reason code and, when known, the peer."""

    def __init__(self, reason: ReasonCode, message: str, peer: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.peer = peer


class ClosedError(P2PFedError):
    """The resource was closed by us; using it again is a local mistake."""


class BrokenError(P2PFedError):
    """The peer or the network broke the resource (reset, EOF mid-message, timeout)."""
