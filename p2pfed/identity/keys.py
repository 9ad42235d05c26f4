"""Ed25519 identities, their key files, and libp2p peer IDs.

Theory of operation: a peer *is* its Ed25519 key. The key file holds exactly the 32-byte
seed, is created with mode 0600 (``os.open`` with the mode, so it is never readable by
others even for an instant), written to a temporary name, fsynced and renamed into place,
so a crash leaves either the old file or the new one, never half a key. Loading refuses a
key file that group or others may read, as ssh refuses a private key with permissions
"too open": a key others could have copied identifies nobody.

The peer ID is libp2p's, computed here by hand so that this module never imports libp2p
(0.6 s and 58 MB): the public key is wrapped in libp2p's protobuf ``PublicKey`` message
(field 1 ``Type`` = 1 for Ed25519, field 2 ``Data`` = the 32 bytes), that 36-byte message
is wrapped in an *identity* multihash (code 0x00, length 36) because it is at most 42 bytes,
and the result is written in base58btc. Ed25519 peer IDs therefore begin ``12D3KooW`` and
embed the public key, which ``public_key_from_peer_id`` recovers.

Errors: ``ConfigError`` for a missing, malformed, or too-open key file, or an existing file
we were asked not to overwrite.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

import nacl.exceptions
import nacl.signing

from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# libp2p protobuf PublicKey: tag 0x08 (field 1, varint) value 1 = Ed25519;
# tag 0x12 (field 2, length-delimited) length 0x20 = 32 bytes of key.
_PROTOBUF_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, PUBLIC_KEY_SIZE])
# Multihash: code 0x00 (identity), digest length 36.
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, len(_PROTOBUF_ED25519_PREFIX) + PUBLIC_KEY_SIZE])
_PEER_ID_PREFIX = _IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet) text of ``data``; leading zero bytes become ``1``."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Bytes of base58btc ``text``; ``ValueError`` on a character outside the alphabet."""
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"{char!r} is not a base58 character")
        number = number * 58 + _B58_INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID of a 32-byte Ed25519 public key."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise ConfigError(
            f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, not {_describe(public_key)}"
        )
    return b58encode(_PEER_ID_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key embedded in a libp2p peer ID.

    Raises ``ConfigError`` if ``peer_id`` is not an Ed25519 peer ID (other key types hash
    the key, so it cannot be recovered, and p2pfed only uses Ed25519).
    """
    try:
        raw = b58decode(peer_id)
    except ValueError as exc:
        raise ConfigError(f"peer ID {peer_id!r} is not base58: {exc}") from None
    if len(raw) != len(_PEER_ID_PREFIX) + PUBLIC_KEY_SIZE or not raw.startswith(_PEER_ID_PREFIX):
        raise ConfigError(f"{peer_id!r} is not the peer ID of an Ed25519 key")
    return raw[len(_PEER_ID_PREFIX) :]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    Never raises on bad input: a malformed key or signature simply does not verify.
    """
    if (
        not isinstance(public_key, bytes)
        or not isinstance(signature, bytes)
        or len(public_key) != PUBLIC_KEY_SIZE
        or len(signature) != SIGNATURE_SIZE
    ):
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


class Signer(Protocol):
    """What signs on a peer's behalf (roster, audit, secure aggregation); ``Identity`` fits."""

    @property
    def peer_id(self) -> str:
        """The libp2p peer ID of ``public_key``."""

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"


class Identity:
    """One peer's Ed25519 key pair; its peer ID is the libp2p peer ID of the public key."""

    __slots__ = ("_peer_id", "_public_key", "_seed", "_signing_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ConfigError(f"an Ed25519 seed is {SEED_SIZE} bytes, not {_describe(seed)}")
        self._seed = seed
        self._signing_key = nacl.signing.SigningKey(seed)
        self._public_key = bytes(self._signing_key.verify_key)
        self._peer_id = peer_id_from_public_key(self._public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A new identity from the operating system's random generator."""
        return cls(os.urandom(SEED_SIZE))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose private key is derived from a 32-byte ``seed``."""
        return cls(seed)

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed (what the key file holds). Keep it secret."""
        return self._seed

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def peer_id(self) -> str:
        """The libp2p peer ID (base58btc, ``12D3KooW...``)."""
        return self._peer_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return bytes(self._signing_key.sign(message).signature)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other._seed == self._seed

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __repr__(self) -> str:
        # Never the seed: reprs end up in logs.
        return f"Identity(peer_id={self._peer_id!r})"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by ``save``.

        Raises ``ConfigError`` if the file is missing, readable by group or others, or not
        exactly a 32-byte seed.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ConfigError(f"key file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot open key file {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"key file {path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"permissions {mode:04o} for key file {path} are too open: it must not be "
                    f"accessible by group or others (run: chmod 600 {path})"
                )
            data = os.read(fd, SEED_SIZE + 1)
        finally:
            os.close(fd)
        if len(data) != SEED_SIZE:
            raise ConfigError(
                f"key file {path} is not a p2pfed key: it must hold exactly the {SEED_SIZE}-byte "
                f"Ed25519 seed"
            )
        return cls(data)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the seed to ``path`` with mode 0600, atomically.

        Without ``overwrite`` an existing file is never replaced (``ConfigError``), even if
        it appears between our check and the write.
        """
        atomic_write(Path(path), self._seed, 0o600, overwrite=overwrite)
