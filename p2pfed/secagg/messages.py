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


def _check_header(version: int, consortium: str, round_: int) -> None:
    if version != VERSION:
        raise DataError(f"secagg message version {version} is not supported (want {VERSION})")
    if not consortium or len(consortium.encode()) > MAX_CONSORTIUM_BYTES:
        raise DataError(f"the consortium ID must be 1..{MAX_CONSORTIUM_BYTES} bytes")
    if not 0 <= round_ < 1 << 63:
        raise DataError(f"the round must be a non-negative 63-bit integer, got {round_}")


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise DataError(f"{name} must be {size} bytes")


def _check_peer(name: str, peer: str) -> None:
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
        _check_peer("dealer", self.dealer)
        if self.kind not in (ShareKind.SELF_SEED, ShareKind.PAIR_SECRET):
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


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise RemoteProtocolError(ReasonCode.MALFORMED, "secagg message is truncated")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def string(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, "secagg message has a string that is not UTF-8"
            ) from None

    def strings(self) -> tuple[str, ...]:
        count = self.u16()
        if count > MAX_PEERS:
            raise RemoteProtocolError(ReasonCode.OVERSIZED, f"secagg list of {count} peers")
        return tuple(self.string() for _ in range(count))


def decode(data: bytes) -> Message:
    """The message in ``data``; ``RemoteProtocolError`` (with a reason code) if it is bad."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED, f"secagg message of {len(data)} bytes exceeds the limit"
        )
    reader = _Reader(bytes(data))
    if reader.take(2) != MAGIC:
        raise RemoteProtocolError(ReasonCode.MALFORMED, "not a secagg message (bad magic)")
    version, kind = reader.u8(), reader.u8()
    if version != VERSION:
        raise RemoteProtocolError(
            ReasonCode.UNKNOWN_VERSION, f"secagg message version {version} is not supported"
        )
    try:
        kind_enum = MessageKind(kind)
    except ValueError:
        raise RemoteProtocolError(
            ReasonCode.UNKNOWN_TYPE, f"unknown secagg message kind {kind}"
        ) from None
    consortium = reader.string()
    round_: int = struct.unpack(">Q", reader.take(8))[0]
    try:
        message = _decode_body(reader, kind_enum, consortium, round_)
    except DataError as exc:
        raise RemoteProtocolError(ReasonCode.MALFORMED, f"bad secagg message: {exc}") from None
    if reader.pos != len(reader.data):
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
            shares = []
            for _ in range(count):
                dealer = reader.string()
                share_kind = reader.u8()
                if share_kind not in (1, 2):
                    raise DataError(f"unknown share kind {share_kind}")
                shares.append(
                    RevealedShare(
                        dealer,
                        ShareKind(share_kind),
                        reader.take(SHARE_BYTES),
                        reader.take(SIGNATURE_BYTES),
                    )
                )
            return Reveal(consortium, round_, digest, tuple(shares))
        case MessageKind.SURVIVOR_SIGNATURE:
            return SurvivorSignature(
                consortium, round_, reader.take(DIGEST_BYTES), reader.take(SIGNATURE_BYTES)
            )
