"""The consortium roster: who may connect, signed by the consortium's admins.

Theory of operation: a roster is a JSON document ``{"body": {...}, "signatures": [...]}``.
The body names the consortium, a version, an expiry (UTC), the members (name, peer ID,
public key, addresses, role), the admin public keys and the threshold m of the m-of-n rule.
Admins sign ``SIGNING_DOMAIN + canonical(body)``, where canonical means JSON with sorted
keys, no whitespace and ASCII escapes (``p2pfed.canonical``), so every peer hashes the
same bytes whatever the file's layout. Editing a roster (add, remove, renew, change admins)
makes a new version with no signatures: it is a new document that the admins must sign again.

This module holds the document (parse, serialise, edit, sign, count valid signatures);
``roster_fields`` its checked fields and ``roster_trust`` which roster a peer accepts and
remembers (m-of-n, rollback, expiry) and the live ``RosterGate``.

Errors: ``RosterError`` (a ``ConfigError``) with a ``RosterProblem`` naming the kind of
refusal, and one sentence naming what was wrong.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from p2pfed.errors import ConfigError
from p2pfed.identity.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Signer
from p2pfed.identity.roster_fields import (
    Member,
    RosterSignature,
    check_aware,
    check_name,
    format_time,
    hex_bytes,
    json_int,
    malformed,
    parse_time,
)
from p2pfed.identity.signed import Signed, parse_signed, read_signed

ROSTER_FORMAT = "p2pfed-roster/1"
SIGNING_DOMAIN = b"p2pfed roster signature v1\x00"
MAX_ROSTER_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Roster(Signed):
    """A consortium's membership at one version, with the admin signatures it carries."""

    DOMAIN: ClassVar[bytes] = SIGNING_DOMAIN

    consortium_id: str
    version: int
    expires_at: datetime
    members: tuple[Member, ...]
    admins: tuple[bytes, ...]
    threshold: int = 1
    signatures: tuple[RosterSignature, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.consortium_id, "consortium id")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise malformed(f"roster version must be an integer, not {self.version!r}")
        if not 1 <= self.version < 1 << 53:
            raise malformed(f"roster version {self.version} must be at least 1")
        if not isinstance(self.expires_at, datetime) or self.expires_at.tzinfo is None:
            raise malformed("roster expiry must be a timezone-aware datetime")
        # Stored as whole seconds in UTC, exactly what the JSON can hold.
        object.__setattr__(
            self, "expires_at", self.expires_at.astimezone(UTC).replace(microsecond=0)
        )
        for kind, values in (
            ("name", [m.name for m in self.members]),
            ("peer ID", [m.peer_id for m in self.members]),
        ):
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    raise malformed(f"member {kind} {value} is listed twice")
                seen.add(value)
        if not self.admins:
            raise malformed("a roster needs at least one admin public key")
        for key in self.admins:
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
                raise malformed(f"admin public keys must be {PUBLIC_KEY_SIZE} bytes")
        if len(set(self.admins)) != len(self.admins):
            raise malformed("an admin public key is listed twice")
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int)
            or not (1 <= self.threshold <= len(self.admins))
        ):
            raise malformed(
                f"threshold {self.threshold!r} must be between 1 and the number of admins "
                f"({len(self.admins)})"
            )
        for sig in self.signatures:
            if len(sig.public_key) != PUBLIC_KEY_SIZE or len(sig.signature) != SIGNATURE_SIZE:
                raise malformed("a signature entry has the wrong key or signature length")

    # --- serialisation --------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        """The signed part, as a JSON-ready dict."""
        return {
            "format": ROSTER_FORMAT,
            "consortium_id": self.consortium_id,
            "version": self.version,
            "expires_at": format_time(self.expires_at),
            "admins": [key.hex() for key in self.admins],
            "threshold": self.threshold,
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "roster") -> Roster:
        """Parse a roster document; ``RosterError(MALFORMED)`` names the first problem."""
        body, signatures = parse_signed(
            text,
            MAX_ROSTER_BYTES,
            source,
            {"format", "consortium_id", "version", "expires_at", "admins", "threshold", "members"},
            ROSTER_FORMAT,
        )
        admins = body["admins"]
        if not isinstance(admins, list):
            raise malformed(f"{source}: admins must be a list of hex public keys")
        members = body["members"]
        if not isinstance(members, list):
            raise malformed(f"{source}: members must be a list")
        return cls(
            consortium_id=check_name(body["consortium_id"], "consortium id"),
            version=json_int(body["version"], "version"),
            expires_at=parse_time(body["expires_at"], "expires_at"),
            members=tuple(
                Member.from_dict(m, f"{source} member {i + 1}") for i, m in enumerate(members)
            ),
            admins=tuple(
                hex_bytes(k, PUBLIC_KEY_SIZE, f"admin key {i + 1}") for i, k in enumerate(admins)
            ),
            threshold=json_int(body["threshold"], "threshold"),
            signatures=signatures,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Roster:
        """Read and parse a roster file (no signature or freshness check: see ``RosterStore``)."""
        path = Path(path)
        data = read_signed(path, MAX_ROSTER_BYTES, "roster file")
        return cls.from_json(data, f"roster file {path}")

    # --- editing: every change is a new, unsigned version ---------------------------------

    def _next(self, **changes: Any) -> Roster:
        return dataclasses.replace(self, version=self.version + 1, signatures=(), **changes)

    def with_member(self, member: Member) -> Roster:
        """The next version with ``member`` added."""
        return self._next(members=(*self.members, member))

    def without_member(self, name_or_peer_id: str) -> Roster:
        """The next version without the member of that name or peer ID."""
        kept = tuple(m for m in self.members if name_or_peer_id not in (m.name, m.peer_id))
        if len(kept) == len(self.members):
            raise ConfigError(f"no member named {name_or_peer_id!r} in the roster")
        return self._next(members=kept)

    def with_expiry(self, expires_at: datetime) -> Roster:
        """The next version with a new expiry."""
        return self._next(expires_at=expires_at)

    def with_admins(self, admins: Iterable[bytes], threshold: int) -> Roster:
        """The next version with a new admin set; the current admins must sign it too."""
        return self._next(admins=tuple(admins), threshold=threshold)

    def signed_by(self, identity: Signer) -> Roster:
        """This version with ``identity``'s signature appended.

        Raises ``ConfigError`` if that key already signed this version.
        """
        return self.sign(identity, f"roster version {self.version}")

    # --- queries --------------------------------------------------------------------------

    def member(self, peer_id: str) -> Member | None:
        """The member with that peer ID, if listed."""
        for m in self.members:
            if m.peer_id == peer_id:
                return m
        return None

    def is_member(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is listed in this version (a removed member is not)."""
        return self.member(peer_id) is not None

    def is_expired(self, now: datetime) -> bool:
        """Whether the roster is past its expiry at ``now`` (an aware datetime)."""
        return check_aware(now, "now") >= self.expires_at
