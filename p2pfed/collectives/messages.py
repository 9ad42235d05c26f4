"""Wire messages of the collectives: ring chunks, round agreement and gossip values.

Theory of operation: every message is a frozen, slotted dataclass with a ``version`` field
whose limits (vector length, cohort size, identifier lengths) are checked on construction,
so a message that exists is a message that may be sent. The frame that carries a message
adds the consortium, the round, the sender and a per-stream sequence number
(``p2pfed.collectives.codec``); messages repeat the round so that a protocol core can check
it without looking at the frame.

Vectors travel as raw little-endian words with an explicit ``WordType``: the receiver knows
the dtype and the length it expects and rejects anything else with ``WRONG_DTYPE`` or
``WRONG_SHAPE`` instead of reinterpreting bytes. ``PACKED`` words are bit-packed integer
words of a ring whose reduced modulus 2^w every member agreed (``[rounds] compression``): the
width is never sent, a chunk of the wrong byte length is ``WRONG_SHAPE``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from p2pfed.errors import LocalProtocolError

MESSAGE_VERSION = 1
MAX_CHUNK_BYTES = 16 << 20  # one ring chunk or gossip slice; senders use far smaller ones
MAX_COHORT = 1024
MAX_PEER_ID = 128
MAX_ROUND = (1 << 63) - 1
MAX_ATTEMPTS = 255
MAX_SIGNATURE = 128
DIGEST_BYTES = 32


class WordType(enum.IntEnum):
    """The element types a collective may sum; codes are stable on the wire."""

    FLOAT32 = 1
    FLOAT64 = 2
    UINT32 = 3
    UINT64 = 4
    PACKED = 5

    @property
    def dtype(self) -> np.dtype[np.generic]:
        """The little-endian numpy dtype of this word type."""
        return np.dtype(_DTYPES[self])

    @property
    def is_integer(self) -> bool:
        """True for the modular (masked-vector) word types."""
        return self in (WordType.UINT32, WordType.UINT64)

    @classmethod
    def of(cls, dtype: np.dtype[np.generic]) -> WordType:
        """The word type of a numpy dtype; ``LocalProtocolError`` for any other dtype."""
        for member, name in _DTYPES.items():
            if np.dtype(name) == dtype and member is not WordType.PACKED:
                return member
        raise LocalProtocolError(
            f"dtype {dtype} cannot be summed by a collective; use float32, float64, "
            "uint32 or uint64"
        )


_DTYPES: dict[WordType, str] = {
    WordType.FLOAT32: "<f4",
    WordType.FLOAT64: "<f8",
    WordType.UINT32: "<u4",
    WordType.UINT64: "<u8",
    WordType.PACKED: "<u1",  # bytes of bit-packed words; never a vector's own dtype
}


def _check_round(round: int) -> None:
    if not 0 <= round <= MAX_ROUND:
        raise LocalProtocolError(f"round {round} is outside 0..2^63-1")


def _check_attempt(attempt: int) -> None:
    if not 0 <= attempt <= MAX_ATTEMPTS:
        raise LocalProtocolError(f"attempt {attempt} is outside 0..{MAX_ATTEMPTS}")


def _check_roster_version(version: int) -> None:
    if not 0 <= version <= MAX_ROUND:
        raise LocalProtocolError(f"roster version {version} is outside 0..2^63-1")


def _check_peer(peer: str, what: str) -> None:
    if not 0 < len(peer.encode()) <= MAX_PEER_ID:
        raise LocalProtocolError(f"{what} must be 1..{MAX_PEER_ID} bytes of UTF-8, got {peer!r}")


def _check_words(what: str, word: WordType, data: bytes) -> None:
    """A vector message carries at most one maximal chunk, of whole words."""
    if len(data) > MAX_CHUNK_BYTES:
        raise LocalProtocolError(f"{what} of {len(data)} bytes exceeds {MAX_CHUNK_BYTES} bytes")
    if len(data) % word.dtype.itemsize:
        raise LocalProtocolError(
            f"{what} of {len(data)} bytes is not a whole number of {word.name.lower()} words"
        )


@dataclass(frozen=True, slots=True)
class ModelBase:
    """The model a member adds a round's sum to: the round that committed it and its digest.

    ``round`` is -1 for the initial model; ``digest`` is the SHA-256 the commit certificates
    sign (``p2pfed.node.sync.weights_digest``). Members on different bases add the same sum
    to different models, so a cohort forms only on one base.
    """

    round: int
    digest: bytes

    def __post_init__(self) -> None:
        if not -1 <= self.round <= MAX_ROUND:
            raise LocalProtocolError(f"base model round {self.round} is outside -1..2^63-1")
        if len(self.digest) != DIGEST_BYTES:
            raise LocalProtocolError(
                f"a base model digest is {DIGEST_BYTES} bytes, got {len(self.digest)}"
            )

    def __str__(self) -> str:
        return f"round {self.round} model {self.digest.hex()[:16]}"


NO_BASE = ModelBase(-1, bytes(DIGEST_BYTES))
"""The base of collectives run without a model (tests, benchmarks): all agree on it."""


@dataclass(frozen=True, slots=True)
class RingChunk:
    """One pipeline chunk of one ring step: ``step`` counts reduce-scatter then all-gather.

    ``data`` holds ``count`` raw little-endian words of type ``word``.
    """

    round: int
    attempt: int
    step: int
    chunk: int
    word: WordType
    data: bytes
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_attempt(self.attempt)
        if not 0 <= self.step < 2 * MAX_COHORT:
            raise LocalProtocolError(f"ring step {self.step} is outside 0..{2 * MAX_COHORT - 1}")
        if not 0 <= self.chunk < 1 << 31:
            raise LocalProtocolError(f"ring chunk index {self.chunk} is negative or too large")
        _check_words("ring chunk", self.word, self.data)

    @property
    def count(self) -> int:
        """The number of words carried."""
        return len(self.data) // self.word.dtype.itemsize


@dataclass(frozen=True, slots=True)
class Ready:
    """A peer announces to the round's coordinator that it will take part in a round.

    ``accused`` lists peers this one saw misbehave in the previous attempt, with reasons,
    so the coordinator can leave them out of the next cohort.
    """

    round: int
    attempt: int
    takeover: int
    accused: tuple[tuple[str, str], ...] = ()
    roster_version: int = 0
    """The roster version the sender runs under: a cohort forms only within one version."""
    base: ModelBase = NO_BASE
    """The model the sender will add the sum to: a cohort forms only on one base."""
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_attempt(self.attempt)
        _check_roster_version(self.roster_version)
        if not 0 <= self.takeover < MAX_COHORT:
            raise LocalProtocolError(f"takeover index {self.takeover} is outside 0..1023")
        if len(self.accused) > MAX_COHORT:
            raise LocalProtocolError(f"{len(self.accused)} accusations exceed {MAX_COHORT}")
        for peer, reason in self.accused:
            _check_peer(peer, "accused peer")
            if not 0 < len(reason) <= 64:
                raise LocalProtocolError(f"accusation reason {reason!r} must be 1..64 chars")


@dataclass(frozen=True, slots=True)
class Cohort:
    """The coordinator fixes who takes part in one attempt of a round, and signs it."""

    round: int
    attempt: int
    takeover: int
    coordinator: str
    members: tuple[str, ...]
    signature: bytes = b""
    roster_version: int = 0
    base: ModelBase = NO_BASE
    """The base every member shares: a member on another base does not sum with them."""
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_attempt(self.attempt)
        _check_roster_version(self.roster_version)
        if not 0 <= self.takeover < MAX_COHORT:
            raise LocalProtocolError(f"takeover index {self.takeover} is outside 0..1023")
        _check_peer(self.coordinator, "coordinator")
        if not 0 < len(self.members) <= MAX_COHORT:
            raise LocalProtocolError(
                f"a cohort must have 1..{MAX_COHORT} members, got {len(self.members)}"
            )
        for member in self.members:
            _check_peer(member, "cohort member")
        if len(set(self.members)) != len(self.members):
            raise LocalProtocolError("a cohort lists a member twice")
        if len(self.signature) > MAX_SIGNATURE:
            raise LocalProtocolError(f"cohort signature exceeds {MAX_SIGNATURE} bytes")

    def signed_bytes(self, consortium: str) -> bytes:
        """The bytes the coordinator signs: domain, consortium, roster version, base, members."""
        body = "\n".join(
            [
                "p2pfed-cohort-v3",
                consortium,
                str(self.roster_version),
                str(self.base.round),
                self.base.digest.hex(),
                str(self.round),
                str(self.attempt),
                str(self.takeover),
                self.coordinator,
                *self.members,
            ]
        )
        return body.encode()


@dataclass(frozen=True, slots=True)
class Abort:
    """Tells the cohort that an attempt failed and whom the sender accuses, and why."""

    round: int
    attempt: int
    accused: str
    reason: str
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_attempt(self.attempt)
        _check_peer(self.accused, "accused peer")
        if not 0 < len(self.reason) <= 64:
            raise LocalProtocolError(f"abort reason {self.reason!r} must be 1..64 chars")


@dataclass(frozen=True, slots=True)
class Done:
    """A cohort member tells the coordinator that its ring finished with the whole sum."""

    round: int
    attempt: int
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_attempt(self.attempt)


@dataclass(frozen=True, slots=True)
class Commit:
    """The coordinator saw every member done: the attempt's sum is the round's result."""

    round: int
    attempt: int
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_attempt(self.attempt)


@dataclass(frozen=True, slots=True)
class GossipValue:
    """A peer's current vector (or a slice of it) for one gossip round or push-pull exchange."""

    round: int
    offset: int
    total: int
    word: WordType
    data: bytes
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_words("gossip slice", self.word, self.data)
        size = self.word.dtype.itemsize
        if not 0 <= self.offset <= self.total or self.offset + len(self.data) // size > self.total:
            raise LocalProtocolError(
                f"gossip slice at {self.offset} of {len(self.data) // size} words "
                f"does not fit a vector of {self.total}"
            )

    @property
    def count(self) -> int:
        """The number of words carried."""
        return len(self.data) // self.word.dtype.itemsize


@dataclass(frozen=True, slots=True)
class SecAggData:
    """One encoded ``p2pfed.secagg`` message, carried between peers for round ``round``."""

    round: int
    data: bytes
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        if not 0 < len(self.data) <= MAX_CHUNK_BYTES:
            raise LocalProtocolError(
                f"secure-aggregation message of {len(self.data)} bytes is empty or exceeds "
                f"{MAX_CHUNK_BYTES} bytes"
            )


@dataclass(frozen=True, slots=True)
class Contributors:
    """Whose masked vectors a group's owner summed (sent with the total to each member)."""

    round: int
    members: tuple[str, ...]
    version: int = MESSAGE_VERSION

    def __post_init__(self) -> None:
        _check_round(self.round)
        if not 0 < len(self.members) <= MAX_COHORT:
            raise LocalProtocolError(f"contributors must list 1..{MAX_COHORT} peers")
        for member in self.members:
            _check_peer(member, "contributor")
        if len(set(self.members)) != len(self.members):
            raise LocalProtocolError("contributors list a peer twice")


Message = (
    RingChunk | Ready | Cohort | Abort | Done | Commit | GossipValue | SecAggData | Contributors
)
