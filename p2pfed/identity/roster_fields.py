"""The fields of a roster document: members, roles, signatures, addresses, times, errors.

Theory of operation: every value of a roster document is checked where it is built, so a
``Member`` or ``RosterSignature`` that exists is well formed (a member's peer ID is the one
of its public key, its addresses are TCP multiaddrs naming it). The small parsers here
(``json_object``, ``hex_bytes``, ``parse_time``...) turn one JSON value into a checked one
and raise ``RosterError(MALFORMED)`` with one sentence naming the field when they cannot;
``roster`` builds the whole document from them and ``roster_trust`` its state file.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.identity.keys import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Signer,
    peer_id_from_public_key,
    verify_signature,
)

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


def malformed(message: str) -> RosterError:
    """A ``RosterError(MALFORMED)`` carrying ``message``."""
    return RosterError(RosterProblem.MALFORMED, message)


class Role(enum.StrEnum):
    """What a member does: members train, observers connect and audit, relays carry circuits.

    A relay (``p2pfed relay``) carries Noise-encrypted circuits between members that cannot
    dial each other; like an observer it takes no part in rounds.
    """

    MEMBER = "member"
    OBSERVER = "observer"
    RELAY = "relay"


def parse_role(value: object, where: str = "") -> Role:
    """The ``Role`` named ``value``; ``where`` prefixes the error sentence."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return Role(value)
    except ValueError:
        raise malformed(
            f"{where}role {value!r} is not one of {', '.join(r.value for r in Role)}"
        ) from None


def check_name(value: object, what: str) -> str:
    """``value`` if it is a valid member or consortium name (``what`` names it in errors)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise malformed(
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
        raise malformed(f"address {address!r} is not a multiaddr string")
    parts = address.split("/")
    if parts[0] != "" or len(parts) not in (5, 7):
        raise malformed(
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
        raise malformed(f"address {address!r}: {exc}") from None
    if tcp != "tcp" or not port.isdigit() or not 0 < int(port) < 65536 or port != str(int(port)):
        raise malformed(f"address {address!r} must name a TCP port in 1..65535 (/tcp/PORT)")
    if len(parts) == 7:
        if parts[5] != "p2p":
            raise malformed(f"address {address!r} may only end with /p2p/PEER_ID")
        if peer_id is not None and parts[6] != peer_id:
            raise malformed(f"address {address!r} names another peer than {peer_id}")
    return address


def hex_bytes(value: object, size: int, what: str) -> bytes:
    """The ``size`` bytes written as lowercase hex in ``value``."""
    pattern = _HEX64 if size == 32 else _HEX128
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise malformed(f"{what} must be {size} bytes as {2 * size} lowercase hex digits")
    return bytes.fromhex(value)


def format_time(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of an aware datetime, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str = "time") -> datetime:
    """An aware UTC datetime from an ISO 8601 timestamp that names its offset."""
    if not isinstance(value, str):
        raise malformed(f"{what} must be an ISO 8601 timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise malformed(f"{what} {value!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise malformed(f"{what} {value!r} must name its UTC offset, e.g. 2027-01-01T00:00:00Z")
    return moment.astimezone(UTC)


def check_aware(moment: object, what: str) -> datetime:
    """``moment`` if it is a timezone-aware datetime; ``ConfigError`` naming ``what`` if not."""
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
        check_name(self.name, "member name")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_SIZE:
            raise malformed(f"member {self.name}: public key must be {PUBLIC_KEY_SIZE} bytes")
        if self.peer_id != peer_id_from_public_key(self.public_key):
            raise malformed(
                f"member {self.name}: peer ID {self.peer_id!r} is not the peer ID of its "
                f"public key ({peer_id_from_public_key(self.public_key)})"
            )
        if not isinstance(self.addresses, tuple):
            raise malformed(f"member {self.name}: addresses must be a tuple")
        for address in self.addresses:
            check_multiaddr(address, self.peer_id)
        if len(set(self.addresses)) != len(self.addresses):
            raise malformed(f"member {self.name}: an address is listed twice")
        object.__setattr__(self, "role", parse_role(self.role, f"member {self.name}: "))

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
            name,
            peer_id_from_public_key(public_key),
            public_key,
            tuple(addresses),
            parse_role(role),
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
        fields = json_object(data, where, {"name", "peer_id", "public_key", "addresses", "role"})
        addresses = fields["addresses"]
        if not isinstance(addresses, list):
            raise malformed(f"{where}: addresses must be a list of multiaddr strings")
        return cls(
            check_name(fields["name"], f"{where}: name"),
            json_text(fields["peer_id"], f"{where}: peer_id"),
            hex_bytes(fields["public_key"], PUBLIC_KEY_SIZE, f"{where}: public_key"),
            tuple(addresses),
            parse_role(fields["role"], f"{where}: "),
        )


def json_object(data: object, where: str, keys: set[str]) -> Mapping[str, Any]:
    """``data`` if it is a JSON object with exactly ``keys``; the error names ``where``."""
    if not isinstance(data, dict):
        raise malformed(f"{where} must be a JSON object")
    missing = keys - data.keys()
    extra = data.keys() - keys
    if missing:
        raise malformed(f"{where} lacks the field {sorted(missing)[0]!r}")
    if extra:
        raise malformed(f"{where} has an unexpected field {sorted(extra)[0]!r}")
    return data


def json_text(value: object, what: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise malformed(f"{what} must be a string")
    return value


def json_int(value: object, what: str) -> int:
    """``value`` if it is an integer (a JSON boolean is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(f"{what} must be an integer")
    return value


@dataclass(frozen=True, slots=True)
class RosterSignature:
    """One admin's Ed25519 signature over the roster body."""

    public_key: bytes
    signature: bytes

    def to_dict(self) -> dict[str, str]:
        """The signature's JSON object."""
        return {"public_key": self.public_key.hex(), "signature": self.signature.hex()}


def signature_of(
    identity: Signer, message: bytes, signatures: Iterable[RosterSignature], what: str
) -> RosterSignature:
    """``identity``'s signature over ``message``; ``ConfigError`` if it already signed ``what``."""
    if any(s.public_key == identity.public_key for s in signatures):
        raise ConfigError(f"key {identity.public_key.hex()[:16]}… already signed {what}")
    return RosterSignature(identity.public_key, identity.sign(message))


def valid_signers(
    signatures: Iterable[RosterSignature], message: bytes, keys: Iterable[bytes]
) -> set[bytes]:
    """The distinct keys among ``keys`` with a valid signature over ``message``."""
    allowed = set(keys)
    return {
        s.public_key
        for s in signatures
        if s.public_key in allowed and verify_signature(s.public_key, message, s.signature)
    }


def bad_signers(
    signatures: Iterable[RosterSignature], message: bytes, keys: Iterable[bytes]
) -> set[bytes]:
    """Keys among ``keys`` that signed *something*, but not ``message``."""
    signatures = tuple(signatures)
    allowed = set(keys)
    return {
        s.public_key
        for s in signatures
        if s.public_key in allowed and not verify_signature(s.public_key, message, s.signature)
    } - valid_signers(signatures, message, allowed)


def parse_signatures(value: object, source: str) -> tuple[RosterSignature, ...]:
    """The ``signatures`` list of a signed document's JSON."""
    if not isinstance(value, list):
        raise malformed(f"{source}: signatures must be a list")
    parsed = []
    for i, entry in enumerate(value):
        sig = json_object(entry, f"{source} signature {i + 1}", {"public_key", "signature"})
        parsed.append(
            RosterSignature(
                hex_bytes(sig["public_key"], PUBLIC_KEY_SIZE, f"signature {i + 1} key"),
                hex_bytes(sig["signature"], SIGNATURE_SIZE, f"signature {i + 1}"),
            )
        )
    return tuple(parsed)
