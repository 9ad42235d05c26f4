"""Compressed updates inside the integer ring: few-level quantisation, bit packing, EF.

Theory of operation: a consortium may declare ``compression = "q8"`` or ``"q4"``. Each
member then rounds its *update* stochastically onto 2^8 (2^4) levels of ``[−c, c]``
(``FixedPoint`` with those level bits: unbiased, error below one step). A sum of n such
words is at most n(L − 1) < 2^w with ``w = level_bits + ⌈log2 n⌉`` (``sum_width``), so the
sum is exact modulo 2^w: the ring all-reduce adds w-bit words modulo 2^w and moves them
bit-packed (``pack_words``/``unpack_words``), w bits a word instead of 32.

Secure aggregation is unchanged: masks are drawn in Z_2^32 and cancel there, so they also
cancel modulo 2^w (2^w divides 2^32); the low w bits of a uniform 32-bit mask are uniform,
so a masked w-bit word still reveals nothing, and the unmasked total modulo 2^w is the sum
of the members' words (``QuantisedEncoder.decode_sum`` reduces it before decoding).

Error feedback (EF-SGD): what rounding and clipping took from this round's update — the
residual e = (u + e_prev) − decode(words) — is added to the next round's update, so the
error does not accumulate over rounds. The residual lives in memory only and restarts at
zero when the daemon restarts (one round's residual is lost; nothing else depends on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, DataError
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.primitives import UIntVector

COMPRESSIONS: Final = {"none": 0, "q8": 8, "q4": 4}
"""``[rounds] compression`` values and their level bits (0: not compressed)."""
RING_BITS: Final = 32
"""Secure aggregation's ring; packed sums must fit inside it."""


def level_bits_of(compression: str) -> int:
    """The level bits of a declared compression (0 for "none"); ``ConfigError`` if unknown."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {tuple(COMPRESSIONS)}, not {compression!r}")
    return COMPRESSIONS[compression]


def compression_refusal(
    compression: str, mode: str, secure: bool, privacy: str, weighting: str
) -> str | None:
    """Why a consortium cannot run ``compression`` with these settings (None: it can)."""
    if compression not in COMPRESSIONS:
        return f"must be one of {tuple(COMPRESSIONS)}"
    if compression == "none":
        return None
    if mode != "ring" or not secure:
        return (
            "needs [rounds] mode = ring with [secagg] enabled (it quantises inside the secure "
            "ring; compressed gossip runs in the simulator only)"
        )
    if privacy == "distributed":
        return (
            "cannot be combined with [privacy] mode = distributed: its discrete noise is "
            "planned for the full-width ring, where a narrow ring would wrap; use local or dp-sgd"
        )
    if weighting != "uniform":
        return 'needs [rounds] weighting = "uniform" (a quantised weight would skew the mean)'
    return None


def sum_width(level_bits: int, peers: int) -> int:
    """Bits w in which a sum of ``peers`` words of ``level_bits`` bits cannot wrap."""
    if peers < 1:
        raise ConfigError(f"the number of peers must be at least 1, got {peers}")
    return level_bits + math.ceil(math.log2(peers))


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` words of ``bits`` bits take packed."""
    return -(-count * bits // 8)


def pack_words(words: NDArray[np.unsignedinteger[Any]], bits: int) -> bytes:
    """The low ``bits`` bits of each uint32/uint64 word, concatenated (bit 0 first).

    ``DataError`` if a word does not fit in ``bits`` bits (it would be silently cut).
    """
    flat = np.asarray(words)
    if flat.ndim != 1 or flat.dtype not in (np.uint32, np.uint64):
        raise DataError("only a flat vector of uint32 or uint64 words can be packed")
    width = flat.dtype.itemsize * 8
    if not 1 <= bits <= width:
        raise ConfigError(f"a packed {width}-bit word has 1..{width} bits, not {bits}")
    if bits < width and flat.size and int(flat.max()) >> bits:
        raise DataError(f"a word does not fit in {bits} bits")
    raw = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("<")).view(np.uint8)
    every = np.unpackbits(raw.reshape(-1, width // 8), axis=1, bitorder="little")
    return np.packbits(every[:, :bits], bitorder="little").tobytes()


def unpack_words(data: bytes, bits: int, count: int, dtype: Any = np.uint32) -> UIntVector:
    """The ``count`` words of ``dtype`` that ``pack_words(…, bits)`` made ``data`` from.

    ``DataError`` unless ``data`` is exactly ``packed_size(count, bits)`` bytes.
    """
    width = np.dtype(dtype).itemsize * 8
    if not 1 <= bits <= width:
        raise ConfigError(f"a packed {width}-bit word has 1..{width} bits, not {bits}")
    if len(data) != packed_size(count, bits):
        raise DataError(
            f"{len(data)} bytes do not hold {count} packed {bits}-bit words "
            f"({packed_size(count, bits)} bytes do)"
        )
    raw = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    every = np.zeros((count, width), dtype=np.uint8)
    every[:, :bits] = raw[: count * bits].reshape(count, bits)
    little = np.dtype(dtype).newbyteorder("<")
    packed = np.packbits(every, axis=1, bitorder="little")
    return cast(UIntVector, packed.view(little).reshape(count).astype(dtype))


@dataclass(frozen=True, slots=True)
class QuantisedEncoder:
    """Update ↔ words of ``level_bits`` levels whose sum over ``peers`` fits ``width`` bits.

    A ``RingEncoder`` for ``SecureRingAggregator``: the words live in the 32-bit ring that
    secure aggregation masks, the ring all-reduce sums them modulo 2^``width``.
    """

    clip: float
    level_bits: int
    peers: int

    def __post_init__(self) -> None:
        self.check_peers(self.peers)

    @property
    def fixed_point(self) -> FixedPoint:
        """The stochastic rounder onto the grid (in the 32-bit ring)."""
        return FixedPoint(self.clip, self.level_bits, RING_BITS)

    @property
    def ring_bits(self) -> int:
        """Secure aggregation's ring (masks are drawn there)."""
        return RING_BITS

    @property
    def width(self) -> int:
        """Bits of each summed word on the wire."""
        return sum_width(self.level_bits, self.peers)

    @property
    def step(self) -> float:
        """Grid step: one encoding's error bound per coordinate."""
        return self.fixed_point.step

    def check_peers(self, n: int) -> None:
        """``ConfigError`` unless a sum of ``n`` words fits ``width`` bits and the ring.

        n(2^l − 1) < 2^(l + ⌈log2 n⌉): a sum of at most ``peers`` words cannot wrap.
        """
        width = sum_width(self.level_bits, self.peers)
        if n < 1 or n > self.peers:
            raise ConfigError(f"a sum of {n} peers does not fit a ring sized for {self.peers}")
        if width > RING_BITS:
            raise ConfigError(
                f"{self.peers} peers need {width}-bit sums of {self.level_bits}-bit levels, "
                f"more than the {RING_BITS}-bit ring: use fewer members or no compression"
            )

    def encode(self, values: NDArray[np.floating], rng: Any, peers: int) -> UIntVector:
        """Words for one update (stochastic rounding; see ``FixedPoint.encode``)."""
        self.check_peers(peers)
        return self.fixed_point.encode(values, rng, 1)

    def reduce(self, total: UIntVector) -> UIntVector:
        """``total`` modulo 2^width (what the packed ring and unmasking agree on)."""
        return total & total.dtype.type((1 << self.width) - 1)

    def decode_sum(self, total: UIntVector, peers: int) -> NDArray[np.float64]:
        """The float sum of ``peers`` encoded updates from their (masked-ring) sum."""
        self.check_peers(peers)
        return self.fixed_point.decode_sum(self.reduce(total), peers)

    def decode(self, words: UIntVector) -> NDArray[np.float64]:
        """One member's float vector from its own words."""
        return self.fixed_point.decode(words)


class ErrorFeedback:
    """EF-SGD's residual: what compression took from one round, given back the next."""

    def __init__(self) -> None:
        self.residual: NDArray[np.float64] | None = None

    def compensate(self, update: NDArray[np.floating]) -> NDArray[np.float64]:
        """``update`` plus the residual carried from the previous round."""
        values = np.asarray(update, dtype=np.float64)
        if self.residual is None or self.residual.shape != values.shape:
            return values.copy()
        return values + self.residual

    def record(self, intended: NDArray[np.floating], sent: NDArray[np.floating]) -> None:
        """Keep ``intended − sent`` (what the compressed words missed) for the next round."""
        self.residual = np.asarray(intended, dtype=np.float64) - np.asarray(sent, np.float64)


def compress_with_feedback(
    encoder: QuantisedEncoder,
    feedback: ErrorFeedback | None,
    update: NDArray[np.floating],
    rng: np.random.Generator,
    peers: int,
) -> UIntVector:
    """The words of ``update`` (+ residual), recording the new residual when ``feedback``."""
    intended = feedback.compensate(update) if feedback is not None else update
    words = encoder.encode(intended, rng, peers)
    if feedback is not None:
        feedback.record(intended, encoder.decode(words))
    return words
