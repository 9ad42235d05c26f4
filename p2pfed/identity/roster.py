"""The consortium roster: who may connect, signed by the consortium's admins.

Theory of operation: a roster is a JSON document ``{"body": {...}, "signatures": [...]}``.
The body names the consortium, a version, an expiry (UTC), the members (name, peer ID,
public key, addresses, role), the admin public keys and the threshold m of the m-of-n rule.
Admins sign ``SIGNING_DOMAIN + canonical(body)``, where canonical means JSON with sorted
keys, no whitespace and ASCII escapes, so every peer hashes the same bytes whatever the
file's layout. Editing a roster (add, remove, renew, change admins) makes a new version
with no signatures: it is a new document that the admins must sign again.

A peer accepts a roster (``check_roster``/``RosterStore.accept``) only if:

1. at least m *distinct* admin keys of that roster signed it (unknown signers, repeated and
   invalid signatures do not count; when too few are valid and an admin's signature does not
   verify, the body was changed after signing: *tampered*, else *under-signed*);
2. it is for the same consortium as the roster accepted before;
3. its version is not lower than the highest accepted before (*rolled back*), and a
   version equal to it is the very same document;
4. a newer version is *also* signed by the threshold of the previously accepted roster's
   admins, so no admin alone, and no new admin set alone, can take the consortium over;
5. it has not expired at ``now`` (a clock the caller passes in).

What was accepted (consortium, version, body digest, admins, threshold) is remembered in a
small state file, written atomically with fsync, so rollback protection survives restarts.
A member removed in version v is absent from v's member list, and a peer holding v never
goes back below v, so ``Roster.is_member`` refuses it from v on. The first roster a peer
sees is trusted on first use: compare its admin keys out of band (``p2pfed roster verify``
prints them). ``RosterGate`` is the live check a transport calls for every connection and
stream: listed in the newest accepted roster, and that roster not expired by the clock.

Errors: ``RosterError`` (a ``ConfigError``) with a ``RosterProblem`` naming the kind of
refusal, and one sentence naming what was wrong; ``IntegrityError`` for a corrupted state
file.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.identity.keys import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    peer_id_from_public_key,
    verify_signature,
)

ROSTER_FORMAT = "p2pfed-roster/1"
STATE_FORMAT = "p2pfed-roster-state/1"
SIGNING_DOMAIN = b"p2pfed roster signature v1\x00"
MAX_ROSTER_BYTES = 4 << 20

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")


class RosterProblem(enum.StrEnum):
    """Why a roster was refused."""

    MALFORMED = "malformed"
    TAMPERED = "tampered"
    UNDER_SIGNED = "under-signed"
    EXPIRED = "expired"
    ROLLED_BACK = "rolled-back"
    CONFLICT = "conflict"
    WRONG_CONSORTIUM = "wrong-consortium"


class RosterError(ConfigError):
    """A roster was refused; ``problem`` says why."""

    def __init__(self, problem: RosterProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


def _malformed(message: str) -> RosterError:
    return RosterError(RosterProblem.MALFORMED, message)


class Role(enum.StrEnum):
    """What a member does: members train and aggregate; observers only connect and audit."""

    MEMBER = "member"
    OBSERVER = "observer"


def _role(value: object, where: str = "") -> Role:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return Role(value)
    except ValueError:
        raise _malformed(
            f"{where}role {value!r} is not one of {', '.join(r.value for r in Role)}"
        ) from None


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _malformed(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return value


def check_multiaddr(address: object, peer_id: str | None = None) -> str:
    """Validate a TCP multiaddr such as ``/ip4/192.0.2.7/tcp/4001`` (optionally ``/p2p/ID``).

    Raises ``RosterError(MALFORMED)`` naming the problem. A ``/p2p/`` part must equal
    ``peer_id`` when given.
    """
    if not isinstance(address, str) or len(address) > 300:
        raise _malformed(f"address {address!r} is not a multiaddr string")
    parts = address.split("/")
    if parts[0] != "" or len(parts) not in (5, 7):
        raise _malformed(
            f"address {address!r} must look like /ip4/HOST/tcp/PORT (optionally /p2p/PEER_ID)"
        )
    proto, host, tcp, port = parts[1:5]
    try:
        if proto == "ip4":
            ipaddress.IPv4Address(host)
        elif proto == "ip6":
            ipaddress.IPv6Address(host)
        elif proto in ("dns", "dns4", "dns6"):
            if not _HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name")
        else:
            raise ValueError(f"{proto!r} is not ip4, ip6, dns, dns4 or dns6")
    except ValueError as exc:
        raise _malformed(f"address {address!r}: {exc}") from None
    if tcp != "tcp" or not port.isdigit() or not 0 < int(port) < 65536 or port != str(int(port)):
        raise _malformed(f"address {address!r} must name a TCP port in 1..65535 (/tcp/PORT)")
    if len(parts) == 7:
        if parts[5] != "p2p":
            raise _malformed(f"address {address!r} may only end with /p2p/PEER_ID")
        if peer_id is not None and parts[6] != peer_id:
            raise _malformed(f"address {address!r} names another peer than {peer_id}")
    return address


def _hex_bytes(value: object, size: int, what: str) -> bytes:
    pattern = _HEX64 if size == 32 else _HEX128
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _malformed(f"{what} must be {size} bytes as {2 * size} lowercase hex digits")
    return bytes.fromhex(value)


def format_time(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of an aware datetime, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str = "time") -> datetime:
    """An aware UTC datetime from an ISO 8601 timestamp that names its offset."""
    if not isinstance(value, str):
        raise _malformed(f"{what} must be an ISO 8601 timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _malformed(f"{what} {value!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise _malformed(f"{what} {value!r} must name its UTC offset, e.g. 2027-01-01T00:00:00Z")
    return moment.astimezone(UTC)


def _check_aware(moment: object, what: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ConfigError(f"{what} must be a timezone-aware datetime, not {moment!r}")
    return moment


@dataclass(frozen=True, slots=True)
class Member:
    """One roster entry; its peer ID must be the one of its public key."""

    name: str
    peer_id: str
    public_key: bytes
    addresses: tuple[str, ...] = ()
    role: Role = Role.MEMBER

    def __post_init__(self) -> None:
        _check_name(self.name, "member name")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_SIZE:
            raise _malformed(f"member {self.name}: public key must be {PUBLIC_KEY_SIZE} bytes")
        if self.peer_id != peer_id_from_public_key(self.public_key):
            raise _malformed(
                f"member {self.name}: peer ID {self.peer_id!r} is not the peer ID of its "
                f"public key ({peer_id_from_public_key(self.public_key)})"
            )
        if not isinstance(self.addresses, tuple):
            raise _malformed(f"member {self.name}: addresses must be a tuple")
        for address in self.addresses:
            check_multiaddr(address, self.peer_id)
        if len(set(self.addresses)) != len(self.addresses):
            raise _malformed(f"member {self.name}: an address is listed twice")
        object.__setattr__(self, "role", _role(self.role, f"member {self.name}: "))

    @classmethod
    def from_public_key(
        cls,
        name: str,
        public_key: bytes,
        addresses: Iterable[str] = (),
        role: Role | str = Role.MEMBER,
    ) -> Member:
        """A member whose peer ID is derived from ``public_key``."""
        return cls(
            name, peer_id_from_public_key(public_key), public_key, tuple(addresses), _role(role)
        )

    def to_dict(self) -> dict[str, Any]:
        """The member's JSON object."""
        return {
            "name": self.name,
            "peer_id": self.peer_id,
            "public_key": self.public_key.hex(),
            "addresses": list(self.addresses),
            "role": self.role.value,
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> Member:
        """Parse a member's JSON object; ``where`` locates it in error messages."""
        fields = _object(data, where, {"name", "peer_id", "public_key", "addresses", "role"})
        addresses = fields["addresses"]
        if not isinstance(addresses, list):
            raise _malformed(f"{where}: addresses must be a list of multiaddr strings")
        return cls(
            _check_name(fields["name"], f"{where}: name"),
            _text(fields["peer_id"], f"{where}: peer_id"),
            _hex_bytes(fields["public_key"], PUBLIC_KEY_SIZE, f"{where}: public_key"),
            tuple(addresses),
            _role(fields["role"], f"{where}: "),
        )


def _object(data: object, where: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise _malformed(f"{where} must be a JSON object")
    missing = keys - data.keys()
    extra = data.keys() - keys
    if missing:
        raise _malformed(f"{where} lacks the field {sorted(missing)[0]!r}")
    if extra:
        raise _malformed(f"{where} has an unexpected field {sorted(extra)[0]!r}")
    return data


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _malformed(f"{what} must be a string")
    return value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(f"{what} must be an integer")
    return value


@dataclass(frozen=True, slots=True)
class RosterSignature:
    """One admin's Ed25519 signature over the roster body."""

    public_key: bytes
    signature: bytes

    def to_dict(self) -> dict[str, str]:
        """The signature's JSON object."""
        return {"public_key": self.public_key.hex(), "signature": self.signature.hex()}


@dataclass(frozen=True, slots=True)
class Roster:
    """A consortium's membership at one version, with the admin signatures it carries."""

    consortium_id: str
    version: int
    expires_at: datetime
    members: tuple[Member, ...]
    admins: tuple[bytes, ...]
    threshold: int = 1
    signatures: tuple[RosterSignature, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.consortium_id, "consortium id")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise _malformed(f"roster version must be an integer, not {self.version!r}")
        if not 1 <= self.version < 1 << 53:
            raise _malformed(f"roster version {self.version} must be at least 1")
        if not isinstance(self.expires_at, datetime) or self.expires_at.tzinfo is None:
            raise _malformed("roster expiry must be a timezone-aware datetime")
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
                    raise _malformed(f"member {kind} {value} is listed twice")
                seen.add(value)
        if not self.admins:
            raise _malformed("a roster needs at least one admin public key")
        for key in self.admins:
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
                raise _malformed(f"admin public keys must be {PUBLIC_KEY_SIZE} bytes")
        if len(set(self.admins)) != len(self.admins):
            raise _malformed("an admin public key is listed twice")
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int)
            or not (1 <= self.threshold <= len(self.admins))
        ):
            raise _malformed(
                f"threshold {self.threshold!r} must be between 1 and the number of admins "
                f"({len(self.admins)})"
            )
        for sig in self.signatures:
            if len(sig.public_key) != PUBLIC_KEY_SIZE or len(sig.signature) != SIGNATURE_SIZE:
                raise _malformed("a signature entry has the wrong key or signature length")

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

    def canonical_body(self) -> bytes:
        """The body as canonical JSON: sorted keys, no whitespace, ASCII only."""
        return canonical_json(self.body())

    def signing_message(self) -> bytes:
        """The exact bytes admins sign (domain-separated canonical body)."""
        return SIGNING_DOMAIN + self.canonical_body()

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical body; identifies this version's content."""
        return hashlib.sha256(self.canonical_body()).hexdigest()

    def to_json(self) -> str:
        """The whole document (body and signatures), indented for people to read."""
        document = {"body": self.body(), "signatures": [s.to_dict() for s in self.signatures]}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "roster") -> Roster:
        """Parse a roster document; ``RosterError(MALFORMED)`` names the first problem."""
        if len(text) > MAX_ROSTER_BYTES:
            raise _malformed(f"{source} is larger than {MAX_ROSTER_BYTES} bytes")
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _malformed(f"{source} is not valid JSON: {exc}") from None
        top = _object(document, source, {"body", "signatures"})
        body = _object(
            top["body"],
            f"{source} body",
            {"format", "consortium_id", "version", "expires_at", "admins", "threshold", "members"},
        )
        if body["format"] != ROSTER_FORMAT:
            raise _malformed(f"{source} has format {body['format']!r}; expected {ROSTER_FORMAT}")
        admins = body["admins"]
        if not isinstance(admins, list):
            raise _malformed(f"{source}: admins must be a list of hex public keys")
        members = body["members"]
        if not isinstance(members, list):
            raise _malformed(f"{source}: members must be a list")
        signatures = top["signatures"]
        if not isinstance(signatures, list):
            raise _malformed(f"{source}: signatures must be a list")
        parsed_sigs = []
        for i, entry in enumerate(signatures):
            sig = _object(entry, f"{source} signature {i + 1}", {"public_key", "signature"})
            parsed_sigs.append(
                RosterSignature(
                    _hex_bytes(sig["public_key"], PUBLIC_KEY_SIZE, f"signature {i + 1} key"),
                    _hex_bytes(sig["signature"], SIGNATURE_SIZE, f"signature {i + 1}"),
                )
            )
        return cls(
            consortium_id=_check_name(body["consortium_id"], "consortium id"),
            version=_int(body["version"], "version"),
            expires_at=parse_time(body["expires_at"], "expires_at"),
            members=tuple(
                Member.from_dict(m, f"{source} member {i + 1}") for i, m in enumerate(members)
            ),
            admins=tuple(
                _hex_bytes(k, PUBLIC_KEY_SIZE, f"admin key {i + 1}") for i, k in enumerate(admins)
            ),
            threshold=_int(body["threshold"], "threshold"),
            signatures=tuple(parsed_sigs),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Roster:
        """Read and parse a roster file (no signature or freshness check: see ``RosterStore``)."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_ROSTER_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(f"roster file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read roster file {path}: {exc.strerror}") from None
        return cls.from_json(data, f"roster file {path}")

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        """Write the document atomically (temp file, fsync, rename), mode 0644."""
        atomic_write(Path(path), self.to_json().encode(), 0o644, overwrite=overwrite)

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

    def signed_by(self, identity: Identity) -> Roster:
        """This version with ``identity``'s signature appended.

        Raises ``ConfigError`` if that key already signed this version.
        """
        if any(s.public_key == identity.public_key for s in self.signatures):
            raise ConfigError(
                f"key {identity.public_key.hex()[:16]}… already signed roster version "
                f"{self.version}"
            )
        sig = RosterSignature(identity.public_key, identity.sign(self.signing_message()))
        return dataclasses.replace(self, signatures=(*self.signatures, sig))

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
        return _check_aware(now, "now") >= self.expires_at

    def valid_signers(self, keys: Iterable[bytes]) -> set[bytes]:
        """The distinct keys among ``keys`` with a valid signature on this version."""
        allowed = set(keys)
        message = self.signing_message()
        return {
            s.public_key
            for s in self.signatures
            if s.public_key in allowed and verify_signature(s.public_key, message, s.signature)
        }

    def bad_signers(self, keys: Iterable[bytes]) -> set[bytes]:
        """Keys among ``keys`` that signed *something*, but not this version's body."""
        allowed = set(keys)
        message = self.signing_message()
        return {
            s.public_key
            for s in self.signatures
            if s.public_key in allowed and not verify_signature(s.public_key, message, s.signature)
        } - self.valid_signers(allowed)


def canonical_json(value: object) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, ASCII escapes, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


@dataclass(frozen=True, slots=True)
class AcceptedRoster:
    """What a peer remembers of the newest roster it accepted."""

    consortium_id: str
    version: int
    digest: str
    admins: tuple[bytes, ...]
    threshold: int

    @classmethod
    def of(cls, roster: Roster) -> AcceptedRoster:
        """The record of accepting ``roster``."""
        return cls(
            roster.consortium_id,
            roster.version,
            roster.digest(),
            roster.admins,
            roster.threshold,
        )


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_signed(roster: Roster, admins: tuple[bytes, ...], threshold: int, whose: str) -> None:
    valid = len(roster.valid_signers(admins))
    if valid >= threshold:
        # Enough distinct valid signatures: a stray invalid one does not count, as an
        # unknown signer does not.
        return
    bad = roster.bad_signers(admins)
    if bad:
        raise RosterError(
            RosterProblem.TAMPERED,
            f"roster version {roster.version} was changed after it was signed: the signature "
            f"of {whose} admin {sorted(bad)[0].hex()[:16]}… does not match its content",
        )
    raise RosterError(
        RosterProblem.UNDER_SIGNED,
        f"roster version {roster.version} carries {_count(valid, 'valid signature')} of "
        f"{whose} admins; {threshold} of {len(admins)} are required",
    )


def check_roster(roster: Roster, *, now: datetime, accepted: AcceptedRoster | None) -> None:
    """Raise ``RosterError`` unless a peer that accepted ``accepted`` may accept ``roster``.

    See the module docstring for the rules, checked in that order.
    """
    _check_aware(now, "now")
    _check_signed(roster, roster.admins, roster.threshold, "its own")
    if accepted is not None:
        if roster.consortium_id != accepted.consortium_id:
            raise RosterError(
                RosterProblem.WRONG_CONSORTIUM,
                f"roster is for consortium {roster.consortium_id!r}, but this peer belongs to "
                f"{accepted.consortium_id!r}",
            )
        if roster.version < accepted.version:
            raise RosterError(
                RosterProblem.ROLLED_BACK,
                f"roster version {roster.version} is older than version {accepted.version} "
                f"accepted before; refusing to roll back",
            )
        if roster.version == accepted.version and roster.digest() != accepted.digest:
            raise RosterError(
                RosterProblem.CONFLICT,
                f"roster version {roster.version} differs from the version {accepted.version} "
                f"accepted before; a changed roster needs a new version",
            )
        if roster.version > accepted.version:
            _check_signed(roster, accepted.admins, accepted.threshold, "the previous")
    if roster.is_expired(now):
        raise RosterError(
            RosterProblem.EXPIRED,
            f"roster version {roster.version} expired at {format_time(roster.expires_at)} "
            f"(now {format_time(now)}); the admins must sign a renewed version",
        )


class RosterStore:
    """The state file remembering the newest accepted roster, across restarts."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> AcceptedRoster | None:
        """The accepted record, or ``None`` if this peer never accepted a roster.

        Raises ``IntegrityError`` if the state file exists but is damaged: resetting it
        silently would re-open the door to rolled-back rosters.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"cannot read roster state file {self.path}: {exc}") from None
        try:
            data = json.loads(text)
            fields = _object(
                data,
                "state",
                {"format", "consortium_id", "version", "digest", "admins", "threshold"},
            )
            if fields["format"] != STATE_FORMAT:
                raise _malformed(f"unknown format {fields['format']!r}")
            return AcceptedRoster(
                _check_name(fields["consortium_id"], "consortium id"),
                _int(fields["version"], "version"),
                _text(fields["digest"], "digest"),
                tuple(_hex_bytes(k, PUBLIC_KEY_SIZE, "admin key") for k in fields["admins"]),
                _int(fields["threshold"], "threshold"),
            )
        except (ValueError, TypeError, RosterError) as exc:
            raise IntegrityError(
                f"roster state file {self.path} is damaged ({exc}); restore it from a backup "
                f"rather than deleting it"
            ) from None

    def save(self, accepted: AcceptedRoster) -> None:
        """Record ``accepted`` atomically (temp file, fsync, rename)."""
        document = {
            "format": STATE_FORMAT,
            "consortium_id": accepted.consortium_id,
            "version": accepted.version,
            "digest": accepted.digest,
            "admins": [k.hex() for k in accepted.admins],
            "threshold": accepted.threshold,
        }
        atomic_write(
            self.path,
            json.dumps(document, indent=2, sort_keys=True).encode() + b"\n",
            overwrite=True,
        )

    def check(self, roster: Roster, *, now: datetime) -> None:
        """Raise ``RosterError`` if this peer may not accept ``roster``; records nothing."""
        check_roster(roster, now=now, accepted=self.load())

    def accept(self, roster: Roster, *, now: datetime) -> Roster:
        """Check ``roster`` and, if it is newer, record it; returns it for chaining."""
        accepted = self.load()
        check_roster(roster, now=now, accepted=accepted)
        if accepted is None or roster.version > accepted.version:
            self.save(AcceptedRoster.of(roster))
        return roster


def load_roster(
    path: str | os.PathLike[str], *, state: str | os.PathLike[str], now: datetime
) -> Roster:
    """Read the roster at ``path`` and accept it against the state file ``state``."""
    return RosterStore(state).accept(Roster.load(path), now=now)


class RosterGate:
    """The live admission check a transport calls (a ``PeerGate``) for each peer.

    A peer is admitted while it is listed in the newest accepted roster *and* that roster
    has not expired by the injected ``clock``: a consortium whose admins stop renewing the
    roster stops admitting anyone, rather than running on stale membership. ``update``
    accepts a newer roster through the ``RosterStore``, so the gate never moves backwards.
    """

    def __init__(self, store: RosterStore, roster: Roster, clock: Callable[[], datetime]) -> None:
        store.check(roster, now=clock())
        self._store = store
        self._roster = roster
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        state: str | os.PathLike[str],
        clock: Callable[[], datetime],
    ) -> RosterGate:
        """Load and accept the roster at ``path`` against ``state``; the gate over it."""
        store = RosterStore(state)
        return cls(store, store.accept(Roster.load(path), now=clock()), clock)

    @property
    def roster(self) -> Roster:
        """The roster currently in force."""
        return self._roster

    def now(self) -> datetime:
        """The time by the gate's clock (what expiry is judged against)."""
        return self._clock()

    def __call__(self, peer_id: str) -> bool:
        return not self._roster.is_expired(self._clock()) and self._roster.is_member(peer_id)

    def update(self, roster: Roster) -> None:
        """Accept ``roster`` (raising ``RosterError`` if refused) and enforce it from now on."""
        self._roster = self._store.accept(roster, now=self._clock())
