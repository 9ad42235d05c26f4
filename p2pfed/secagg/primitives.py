"""Cryptographic primitives of secure aggregation, as pure functions.

Theory of operation: each peer holds two X25519 key pairs per round — ``c`` for encrypting
the Shamir shares it sends, ``s`` for agreeing pairwise mask secrets — and advertises both
public keys in a message signed by its long-term Ed25519 identity, so nobody relaying the
advertisement can substitute a key. The raw X25519 output is never used directly: every
key is derived by HKDF-SHA256 with a *domain* naming the consortium, the round, the ordered
pair (or the single owner) and the purpose, so a secret from one round, pair or use can never
stand in for another. Masks are expanded from the full 32-byte derived key by ChaCha20 (a
stream cipher, not a statistical generator: numpy's generators can be inverted or
brute-forced from a short seed) straight into a numpy uint32/uint64 view and added or
subtracted in place, chunk by chunk, so masking costs one keystream pass and one vector
add per neighbour and never holds more than one chunk of keystream.

Raises: ``ConfigError`` for a bad parameter (key length, ring size); ``DataError`` for a
vector of the wrong dtype.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, DataError

KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
PROTOCOL_LABEL: Final = b"p2pfed-secagg/v1"
# 128 KiB of keystream per chunk: large enough to amortise the Python calls, small enough
# that the chunk of the vector, the keystream and the zeros it encrypts stay in L2 cache.
MASK_CHUNK_BYTES: Final = 1 << 17

RandomBytes = Callable[[int], bytes]
# uint32 or uint64 words of the ring Z_2^k (numpy's unsigned arithmetic wraps mod 2^k).
UIntVector = NDArray[np.unsignedinteger[Any]]


@dataclass(frozen=True, slots=True, repr=False)
class AgreementKeyPair:
    """An X25519 key pair; ``secret`` never appears in repr."""

    secret: bytes
    public: bytes

    @staticmethod
    def generate(random_bytes: RandomBytes) -> AgreementKeyPair:
        """A fresh key pair from 32 bytes of ``random_bytes``."""
        return AgreementKeyPair.from_secret(random_bytes(KEY_BYTES))

    @staticmethod
    def from_secret(secret: bytes) -> AgreementKeyPair:
        """The key pair whose secret scalar is ``secret`` (32 bytes)."""
        if len(secret) != KEY_BYTES:
            raise ConfigError(f"an X25519 secret must be 32 bytes, got {len(secret)}")
        return AgreementKeyPair(secret, crypto_scalarmult_base(secret))

    def __repr__(self) -> str:
        return f"AgreementKeyPair(public={self.public.hex()[:16]}…)"


def agree(secret: bytes, peer_public: bytes) -> bytes:
    """The raw 32-byte X25519 shared secret (feed it to ``derive_key``, never use it raw).

    Raises ``DataError`` for a key of the wrong length or a low-order public key.
    """
    if len(secret) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise DataError("X25519 keys must be 32 bytes each")
    try:
        return crypto_scalarmult(secret, peer_public)
    except Exception as exc:  # nacl raises RuntimeError for an all-zero (low-order) result
        raise DataError("X25519 agreement failed: the public key has low order") from exc


_U64 = struct.Struct(">Q").pack
_U32 = struct.Struct(">I").pack


@lru_cache(maxsize=8192)
def _text_field(value: str) -> bytes:
    # Names (consortium, peers, purposes) repeat in every domain of a round: encode once.
    raw = value.encode()
    return b"b" + _U32(len(raw)) + raw


def domain(*parts: bytes | str | int) -> bytes:
    """An unambiguous (length-prefixed) encoding of a domain-separation tuple."""
    out = [PROTOCOL_LABEL]
    for part in parts:  # inlined: signed bytes are built for every signature checked
        if isinstance(part, int):
            out.append(b"i" + _U64(part))
        elif isinstance(part, str):
            out.append(_text_field(part))
        else:
            raw = bytes(part)
            out.append(b"b" + _U32(len(raw)) + raw)
    return b"".join(out)


def derive_key(ikm: bytes, *context: bytes | str | int) -> bytes:
    """HKDF-SHA256 of ``ikm`` into 32 bytes, bound to ``context`` (consortium, round, …)."""
    if len(ikm) < 16:
        raise ConfigError("key-derivation input must carry at least 16 bytes of secret")
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=domain(*context)
    ).derive(ikm)


def pair_mask_key(
    pair_secret: bytes, consortium: str, round_: int, peer_a: str, peer_b: str
) -> bytes:
    """The mask key of the unordered pair {a, b}: both peers derive the same key."""
    low, high = sorted((peer_a, peer_b))
    return derive_key(pair_secret, consortium, round_, low, high, "pair-mask")


def self_mask_key(seed: bytes, consortium: str, round_: int, owner: str) -> bytes:
    """The key of ``owner``'s self mask from its secret seed b_u."""
    return derive_key(seed, consortium, round_, owner, "self-mask")


def share_encryption_key(
    channel_secret: bytes, consortium: str, round_: int, dealer: str, holder: str
) -> bytes:
    """The SecretBox key for shares sent from ``dealer`` to ``holder`` (one key per direction)."""
    return derive_key(channel_secret, consortium, round_, dealer, holder, "share-encryption")


def commitment(secret: bytes, consortium: str, round_: int, owner: str) -> bytes:
    """A hiding, binding commitment to a 32-byte uniformly random secret (SHA-256)."""
    return hashlib.sha256(
        domain(consortium, round_, owner, "self-seed-commitment", secret)
    ).digest()


def ring_dtype(bits: int) -> type[np.uint32] | type[np.uint64]:
    """The numpy word type of the ring Z_2^bits (32 or 64)."""
    if bits == 32:
        return np.uint32
    if bits == 64:
        return np.uint64
    raise ConfigError(f"the ring size must be 32 or 64 bits, got {bits}")


def keystream_cipher(key: bytes) -> Cipher[None]:
    """ChaCha20 keyed by the full 32-byte ``key``; zero nonce and counter (one key, one use)."""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"a mask key must be 32 bytes, got {len(key)}")
    return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None)


class MaskExpander:
    """Adds or subtracts ChaCha20 mask streams into a uint32/uint64 vector, in place.

    Holds two reusable chunk buffers (zeros in, keystream out), so expanding a mask over a
    vector of any length allocates nothing and never loops in Python per element.
    """

    __slots__ = ("_chunk", "_out", "_zeros")

    def __init__(self, chunk_bytes: int = MASK_CHUNK_BYTES) -> None:
        if chunk_bytes <= 0 or chunk_bytes % 8:
            raise ConfigError("the mask chunk size must be a positive multiple of 8 bytes")
        self._chunk = chunk_bytes
        self._zeros = np.zeros(chunk_bytes, dtype=np.uint8)
        # update_into wants room for one extra block on some backends.
        self._out = np.empty(chunk_bytes + 64, dtype=np.uint8)

    def apply(self, vector: UIntVector, key: bytes, sign: int) -> None:
        """``vector += sign · ChaCha20(key)`` word by word mod 2^bits, with sign = ±1."""
        self.apply_many(vector, [(key, sign)])

    def apply_many(self, vector: UIntVector, keyed_signs: Sequence[tuple[bytes, int]]) -> None:
        """Add ``sign · ChaCha20(key)`` for every (key, sign) into ``vector``, in one pass.

        The loop runs over chunks of the vector outside and over keys inside, so each chunk
        of the vector stays in cache while every mask is added to it: the vector crosses
        the memory bus once however many neighbours there are.
        """
        if vector.dtype not in (np.uint32, np.uint64) or vector.ndim != 1:
            raise DataError("a masked vector must be a one-dimensional uint32 or uint64 array")
        if not vector.flags.c_contiguous or not vector.flags.writeable:
            raise DataError("a masked vector must be a writable, C-contiguous array")
        for _, sign in keyed_signs:
            if sign not in (1, -1):
                raise ConfigError(f"a mask sign must be +1 or -1, got {sign}")
        streams = [
            (keystream_cipher(key).encryptor(), np.add if sign > 0 else np.subtract)
            for key, sign in keyed_signs
        ]
        word = vector.dtype.itemsize
        per_chunk = self._chunk // word
        words = self._out[: self._chunk].view(vector.dtype)
        zeros, out = self._zeros, self._out
        total = vector.shape[0]
        for start in range(0, total, per_chunk):
            count = min(per_chunk, total - start)
            part = vector[start : start + count]
            source = zeros[: count * word].data
            for encryptor, op in streams:
                encryptor.update_into(source, out.data)
                op(part, words[:count], out=part)


def mask_vector(
    vector: UIntVector,
    self_key: bytes,
    pair_keys: Sequence[tuple[bytes, int]],
    expander: MaskExpander | None = None,
) -> None:
    """Double-mask ``vector`` in place: + PRG(self_key) and ± PRG(key) for each pair key.

    One keystream pass and one vector add per key; the benchmark times exactly this call.
    """
    (expander or MaskExpander()).apply_many(vector, [(self_key, 1), *pair_keys])


def keystream_seconds(total_bytes: int, chunk_bytes: int = MASK_CHUNK_BYTES) -> float:
    """Seconds to produce ``total_bytes`` of raw ChaCha20 keystream, as masking does.

    Same cipher, chunk size and reusable buffers as ``MaskExpander``; nothing is added.
    """
    encryptor = keystream_cipher(bytes(range(32))).encryptor()
    zeros = np.zeros(chunk_bytes, dtype=np.uint8)
    out = np.empty(chunk_bytes + 64, dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(max(1, -(-total_bytes // chunk_bytes))):
        encryptor.update_into(zeros.data, out.data)
    return time.perf_counter() - start


def keystream_rate(seconds: float = 0.5, chunk_bytes: int = MASK_CHUNK_BYTES) -> float:
    """Measured raw ChaCha20 keystream rate in bytes per second on this machine."""
    produced, elapsed = 0, 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        step = 64 * chunk_bytes
        elapsed += keystream_seconds(step, chunk_bytes)
        produced += step
    return produced / elapsed
