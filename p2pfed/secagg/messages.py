"""Wire messages of secure aggregation and their explicit byte codec.

Theory of operation: six message kinds, each a frozen slotted dataclass carrying the codec
version, the consortium and the round, with every size limit checked on construction
(``DataError`` for a bad field). The encoding is fixed-layout big-endian::

    b"SA" | version u8 | kind u8 | len u8 + consortium UTF-8 | round u64 | body

where strings in the body are ``u8 length + UTF-8``, lists ``u16 count + items`` and keys,
digests, shares and signatures fixed-size byte strings. ``decode`` refuses trailing bytes,
truncation, unknown versions and kinds and anything over ``MAX_MESSAGE_BYTES``, raising
``RemoteProtocolError`` with the matching ``ReasonCode`` (the sender is filled in by the
caller, who knows it from the authenticated channel). The sender is deliberately *not* a
field: it comes from the channel, and the signatures bind it.

These payloads may later travel inside ``p2pfed.wire`` frames; this codec stays the payload.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from p2pfed.errors import DataError, ReasonCode, RemoteProtocolError
from p2pfed.secagg.params import MAX_CONSORTIUM_BYTES, MAX_PEER_ID_BYTES, MAX_PEERS
from p2pfed.secagg.primitives import KEY_BYTES, SIGNATURE_BYTES
from p2pfed.secagg.shamir import SHARE_BYTES

VERSION: Final = 1
MAGIC: Final = b"SA"
MAX_MESSAGE_BYTES: Final = 2 << 20
SEALED_SHARES_BYTES: Final = 24 + 16 + 2 * SHARE_BYTES + 2 * SIGNATURE_BYTES
DIGEST_BYTES: Final = 32


class MessageKind(enum.IntEnum):
    """The message kinds, in protocol order."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    SHARE_RECEIPT = 3
    INPUT_COMMIT = 4
    REVEAL = 5
    SURVIVOR_SIGNATURE = 6


class ShareKind(enum.IntEnum):
    """Which secret a revealed share belongs to."""

    SELF_SEED = 1
    PAIR_SECRET = 2


_KINDS: Final = frozenset(ShareKind)


def _check_header(version: int, consortium: str, round_: int) -> None:
    if version != VERSION:
        raise DataError(f"secagg message version {version} is not supported (want {VERSION})")
    ascii_ok = type(consortium) is str and consortium.isascii()  # no encode on that path
    size = len(consortium) if ascii_ok else len(str(consortium).encode())
    if not 1 <= size <= MAX_CONSORTIUM_BYTES:
        raise DataError(f"the consortium ID must be 1..{MAX_CONSORTIUM_BYTES} bytes")
    if not 0 <= round_ < 1 << 63:
        raise DataError(f"the round must be a non-negative 63-bit integer, got {round_}")


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise DataError(f"{name} must be {size} bytes")


def _check_peer(name: str, peer: str) -> None:
    # ASCII IDs (every libp2p peer ID) are their own UTF-8 length: no encode on that path.
    if type(peer) is str and peer.isascii() and 1 <= len(peer) <= MAX_PEER_ID_BYTES:
        return
    if not isinstance(peer, str) or not 1 <= len(peer.encode()) <= MAX_PEER_ID_BYTES:
        raise DataError(f"{name} must be a peer ID of 1..{MAX_PEER_ID_BYTES} bytes")


def _check_peers(name: str, peers: tuple[str, ...]) -> None:
    if len(peers) > MAX_PEERS:
        raise DataError(f"{name} lists {len(peers)} peers, more than {MAX_PEERS}")
    if len(set(peers)) != len(peers):
        raise DataError(f"{name} lists a peer twice")
    for peer in peers:
        _check_peer(name, peer)


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Broadcast: the round's two X25519 public keys and the self-seed commitment, signed."""

    consortium: str
    round: int
    channel_public: bytes
    mask_public: bytes
    seed_commitment: bytes
    signature: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_header(self.version, self.consortium, self.round)
        _check_bytes("channel_public", self.channel_public, KEY_BYTES)
        _check_bytes("mask_public", self.mask_public, KEY_BYTES)
        _check_bytes("seed_commitment", self.seed_commitment, DIGEST_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Directed: the dealer's two shares for this holder, sealed (SecretBox) to the holder."""

    consortium: str
    round: int
    sealed: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_header(self.version, self.consortium, self.round)
        _check_bytes("sealed", self.sealed, SEALED_SHARES_BYTES)


@dataclass(frozen=True, slots=True)
class ShareReceipt:
    """Directed to neighbours: the neighbours whose shares this peer received and verified."""

    consortium: str
    round: int
    received_from: tuple[str, ...]
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_header(self.version, self.consortium, self.round)
        _check_peers("received_from", self.received_from)


@dataclass(frozen=True, slots=True)
class InputCommit:
    """Broadcast before the masked vector is summed: the neighbours it is pair-masked with."""

    consortium: str
    round: int
    mask_set: tuple[str, ...]
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_header(self.version, self.consortium, self.round)
        _check_peers("mask_set", self.mask_set)


@dataclass(frozen=True, slots=True)
class RevealedShare:
    """One share a holder reveals: whose secret, which secret, the share, the dealer's signature."""

    dealer: str
    kind: ShareKind
    share: bytes
    signature: bytes

    def __post_init__(self) -> None:
        # One combined test on the hot path (a peer decodes ~(k+1)·n of these per round);
        # the field-by-field checks below only run to name what is wrong.
        if (
            type(self.share) is bytes
            and len(self.share) == SHARE_BYTES
            and type(self.signature) is bytes
            and len(self.signature) == SIGNATURE_BYTES
            and self.kind in _KINDS
            and type(self.dealer) is str
            and self.dealer.isascii()
            and 1 <= len(self.dealer) <= MAX_PEER_ID_BYTES
        ):
            return
        _check_peer("dealer", self.dealer)
        if self.kind not in _KINDS:
            raise DataError(f"unknown share kind {self.kind}")
        _check_bytes("share", self.share, SHARE_BYTES)
        _check_bytes("share signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class Reveal:
    """Broadcast to survivors: shares for the agreed survivor set (digest) and nothing else."""

    consortium: str
    round: int
    survivors_digest: bytes
    shares: tuple[RevealedShare, ...]
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_header(self.version, self.consortium, self.round)
        _check_bytes("survivors_digest", self.survivors_digest, DIGEST_BYTES)
        if len(self.shares) > MAX_PEERS:
            raise DataError(f"a reveal carries {len(self.shares)} shares, more than {MAX_PEERS}")
        if len({s.dealer for s in self.shares}) != len(self.shares):
            raise DataError("a reveal carries two shares of one dealer")


@dataclass(frozen=True, slots=True)
class SurvivorSignature:
    """Sent to survivors before any reveal: the sender's signature on the set it was given."""

    consortium: str
    round: int
    survivors_digest: bytes
    signature: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_header(self.version, self.consortium, self.round)
        _check_bytes("survivors_digest", self.survivors_digest, DIGEST_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)


Message = AdvertiseKeys | ShareKeys | ShareReceipt | InputCommit | Reveal | SurvivorSignature

KIND_OF: Final[dict[type[Message], MessageKind]] = {
    AdvertiseKeys: MessageKind.ADVERTISE_KEYS,
    ShareKeys: MessageKind.SHARE_KEYS,
    ShareReceipt: MessageKind.SHARE_RECEIPT,
    InputCommit: MessageKind.INPUT_COMMIT,
    Reveal: MessageKind.REVEAL,
    SurvivorSignature: MessageKind.SURVIVOR_SIGNATURE,
}


def kind_of(message: Message) -> MessageKind:
    """The kind of ``message``."""
    return KIND_OF[type(message)]


def _str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">B", len(raw)) + raw


def _strs(values: tuple[str, ...]) -> bytes:
    return struct.pack(">H", len(values)) + b"".join(_str(v) for v in values)


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``."""
    head = MAGIC + struct.pack(">BB", message.version, kind_of(message))
    head += _str(message.consortium) + struct.pack(">Q", message.round)
    match message:
        case AdvertiseKeys():
            body = (
                message.channel_public
                + message.mask_public
                + message.seed_commitment
                + message.signature
            )
        case ShareKeys():
            body = message.sealed
        case ShareReceipt():
            body = _strs(message.received_from)
        case InputCommit():
            body = _strs(message.mask_set)
        case Reveal():
            body = message.survivors_digest + struct.pack(">H", len(message.shares))
            body += b"".join(
                _str(s.dealer) + struct.pack(">B", s.kind) + s.share + s.signature
                for s in message.shares
            )
        case SurvivorSignature():
            body = message.survivors_digest + message.signature
    return head + body


_HEAD = struct.Struct(">2sBB")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_SHARE_KINDS: Final = {int(k): k for k in ShareKind}
_MESSAGE_KINDS: Final = {int(k): k for k in MessageKind}
_NAME_CACHE_MAX: Final = 8192
_names: dict[bytes, str] = {}
"""Peer IDs already decoded: a round repeats the same n names tens of thousands of times."""


def _truncated() -> RemoteProtocolError:
    return RemoteProtocolError(ReasonCode.MALFORMED, "secagg message is truncated")


def _name(raw: bytes) -> str:
    name = _names.get(raw)
    if name is None:
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, "secagg message has a string that is not UTF-8"
            ) from None
        if len(_names) >= _NAME_CACHE_MAX:
            _names.clear()  # bounded: a flood of fresh names cannot grow it
        _names[raw] = name
    return name


class _Reader:
    """A cursor over one message; every read checks the bounds, none copies the rest."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0

    def take(self, size: int) -> bytes:
        start, stop = self.pos, self.pos + size
        if stop > self.end:
            raise _truncated()
        self.pos = stop
        return self.data[start:stop]

    def u8(self) -> int:
        if self.pos >= self.end:
            raise _truncated()
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise _truncated()
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def string(self) -> str:
        size = self.u8()
        return _name(self.take(size))

    def strings(self) -> tuple[str, ...]:
        count = self.u16()
        if count > MAX_PEERS:
            raise RemoteProtocolError(ReasonCode.OVERSIZED, f"secagg list of {count} peers")
        data, end, pos, out = self.data, self.end, self.pos, []
        for _ in range(count):  # inlined string(): this loop runs once per listed peer
            if pos >= end:
                raise _truncated()
            stop = pos + 1 + data[pos]
            if stop > end:
                raise _truncated()
            out.append(_name(data[pos + 1 : stop]))
            pos = stop
        self.pos = pos
        return tuple(out)

    def revealed_shares(self, count: int) -> tuple[RevealedShare, ...]:
        """``count`` records of dealer string, kind u8, share and signature."""
        data, end, pos, out = self.data, self.end, self.pos, []
        fixed = 1 + SHARE_BYTES + SIGNATURE_BYTES
        for _ in range(count):
            if pos >= end:
                raise _truncated()
            start = pos + 1
            kind_at = start + data[pos]
            pos = kind_at + fixed
            if pos > end:
                raise _truncated()
            kind = _SHARE_KINDS.get(data[kind_at])
            if kind is None:
                raise DataError(f"unknown share kind {data[kind_at]}")
            share_end = kind_at + 1 + SHARE_BYTES
            dealer = _name(data[start:kind_at])
            share, signature = data[kind_at + 1 : share_end], data[share_end:pos]
            out.append(RevealedShare(dealer, kind, share, signature))
        self.pos = pos
        return tuple(out)


def decode(data: bytes) -> Message:
    """The message in ``data``; ``RemoteProtocolError`` (with a reason code) if it is bad."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED, f"secagg message of {len(data)} bytes exceeds the limit"
        )
    reader = _Reader(data if type(data) is bytes else bytes(data))
    if reader.end < _HEAD.size:
        raise _truncated()
    magic, version, kind = _HEAD.unpack_from(reader.data)
    if magic != MAGIC:
        raise RemoteProtocolError(ReasonCode.MALFORMED, "not a secagg message (bad magic)")
    if version != VERSION:
        raise RemoteProtocolError(
            ReasonCode.UNKNOWN_VERSION, f"secagg message version {version} is not supported"
        )
    kind_enum = _MESSAGE_KINDS.get(kind)
    if kind_enum is None:
        raise RemoteProtocolError(ReasonCode.UNKNOWN_TYPE, f"unknown secagg message kind {kind}")
    reader.pos = _HEAD.size
    consortium = reader.string()
    (round_,) = _U64.unpack(reader.take(8))
    try:
        message = _decode_body(reader, kind_enum, consortium, round_)
    except DataError as exc:
        raise RemoteProtocolError(ReasonCode.MALFORMED, f"bad secagg message: {exc}") from None
    if reader.pos != reader.end:
        raise RemoteProtocolError(ReasonCode.MALFORMED, "secagg message has trailing bytes")
    return message


def _decode_body(reader: _Reader, kind: MessageKind, consortium: str, round_: int) -> Message:
    match kind:
        case MessageKind.ADVERTISE_KEYS:
            return AdvertiseKeys(
                consortium,
                round_,
                channel_public=reader.take(KEY_BYTES),
                mask_public=reader.take(KEY_BYTES),
                seed_commitment=reader.take(DIGEST_BYTES),
                signature=reader.take(SIGNATURE_BYTES),
            )
        case MessageKind.SHARE_KEYS:
            return ShareKeys(consortium, round_, reader.take(SEALED_SHARES_BYTES))
        case MessageKind.SHARE_RECEIPT:
            return ShareReceipt(consortium, round_, reader.strings())
        case MessageKind.INPUT_COMMIT:
            return InputCommit(consortium, round_, reader.strings())
        case MessageKind.REVEAL:
            digest = reader.take(DIGEST_BYTES)
            count = reader.u16()
            if count > MAX_PEERS:
                raise RemoteProtocolError(ReasonCode.OVERSIZED, f"reveal of {count} shares")
            return Reveal(consortium, round_, digest, reader.revealed_shares(count))
        case MessageKind.SURVIVOR_SIGNATURE:
            return SurvivorSignature(
                consortium, round_, reader.take(DIGEST_BYTES), reader.take(SIGNATURE_BYTES)
            )
