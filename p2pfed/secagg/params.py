"""Round parameters and the cohort plan: who masks with whom, who holds whose shares.

Theory of operation: every peer of a round derives the *same* plan from public facts only
(the consortium, the round number, the cohort's peer IDs and the ``SecAggConfig``), so no
coordinator is needed. The cohort is sorted by peer ID; a peer's Shamir x coordinate is its
position + 1, and in a pair the lower-sorted peer adds the pair mask while the other
subtracts it. The neighbour graph is the complete graph for small cohorts (Bonawitz et al.
2017) and, for large ones, the SecAgg+ Harary graph H(k, n) (Bell et al. 2020): peers are
placed on a ring in a public pseudo-random order (SHA-256 of consortium, round and peer ID)
and joined to the k/2 nearest on each side, k ≈ 2·log2 n. A peer's *holders* are its
neighbours and itself; it Shamir-shares its secrets among them with threshold t.

The threat model names a collusion bound c (default 1: a peer alone; at most t − 1): any c
members may pool what they see. From it follow three floors, all checked here, so a plan
that could reveal less is refused before a round starts:
- t ≥ c + 1, so c members' own shares never rebuild a secret (by default t is a strict
  majority of the m holders, ⌊m/2⌋ + 1);
- ``min_contributors`` ≥ c + 2 (default c + 2): no sum is unmasked over fewer inputs, so after
  a coalition removes its own at least two others' remain;
- the consistency ``quorum`` = max(t, ⌊(n + c)/2⌋ + 1): a peer reveals only once that many
  survivors signed the survivor set it was given; two quorums share more than c peers, so at
  least one honest peer, which signs one set only — honest peers never reveal for two sets.
  Since a set needs a quorum of its own members' signatures, ``min_survivors`` defaults to
  max(``min_contributors``, quorum): more than (n + c)/2 of the cohort must contribute.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Final, Literal, cast

import numpy as np

from p2pfed.errors import ConfigError, DataError
from p2pfed.secagg.primitives import UIntVector, domain, ring_dtype

MAX_PEERS: Final = 4096
MAX_PEER_ID_BYTES: Final = 128
MAX_CONSORTIUM_BYTES: Final = 128
MAX_DIMENSION: Final = 1 << 31

GraphKind = Literal["auto", "complete", "harary"]


@dataclass(frozen=True, slots=True)
class SecAggConfig:
    """Parameters of one secure-aggregation round (see docs/secure-aggregation.md)."""

    consortium: str
    round: int
    dimension: int
    ring_bits: int = 32
    graph: GraphKind = "auto"
    complete_max: int = 16
    degree: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None
    input_bits: int | None = None
    collusion: int = 1
    min_contributors: int | None = None

    def __post_init__(self) -> None:
        ring_dtype(self.ring_bits)
        if self.input_bits is not None and not 1 <= self.input_bits < self.ring_bits:
            raise ConfigError(
                f"input_bits must lie in 1..{self.ring_bits - 1}, got {self.input_bits}"
            )
        if not self.consortium or len(self.consortium.encode()) > MAX_CONSORTIUM_BYTES:
            raise ConfigError(f"the consortium ID must be 1..{MAX_CONSORTIUM_BYTES} bytes of UTF-8")
        if not 0 <= self.round < 1 << 63:
            raise ConfigError(f"the round must be a non-negative 63-bit integer, got {self.round}")
        if not 1 <= self.dimension <= MAX_DIMENSION:
            raise ConfigError(f"the dimension must lie in 1..{MAX_DIMENSION}, got {self.dimension}")
        if self.graph not in ("auto", "complete", "harary"):
            raise ConfigError(f"graph must be auto, complete or harary, got {self.graph!r}")
        if self.degree is not None and (self.degree < 2 or self.degree % 2):
            raise ConfigError(f"the SecAgg+ degree must be an even number ≥ 2, got {self.degree}")
        if self.threshold is not None and self.threshold < 2:
            raise ConfigError(f"the threshold must be at least 2, got {self.threshold}")
        if self.min_survivors is not None and self.min_survivors < 2:
            raise ConfigError(f"min_survivors must be at least 2, got {self.min_survivors}")
        if self.collusion < 1:
            raise ConfigError(f"the collusion bound must be at least 1, got {self.collusion}")
        floor = self.collusion + 2
        if self.min_contributors is not None and self.min_contributors < floor:
            raise ConfigError(
                f"min_contributors {self.min_contributors} is below collusion + 2 = {floor}: "
                f"{self.collusion} colluding members could isolate one other member's input"
            )


def default_degree(n: int) -> int:
    """SecAgg+ degree ≈ 2·log2 n, rounded up to an even number."""
    k = 2 * math.ceil(math.log2(max(n, 2)))
    return k + (k % 2)


@dataclass(frozen=True, slots=True)
class CohortPlan:
    """The public plan of a round, identical at every peer."""

    peers: tuple[str, ...]
    graph: Literal["complete", "harary"]
    neighbours: dict[str, frozenset[str]] = field(repr=False)
    threshold: int
    min_survivors: int

    index: dict[str, int] = field(repr=False)
    collusion: int = 1
    min_contributors: int = 3
    quorum: int = 3

    def x(self, peer: str) -> int:
        """The Shamir x coordinate of ``peer`` (1-based position in the sorted cohort)."""
        return self.index[peer] + 1

    def holders(self, peer: str) -> frozenset[str]:
        """The peers that hold shares of ``peer``'s secrets: its neighbours and itself."""
        return self.neighbours[peer] | {peer}

    def sign(self, me: str, other: str) -> int:
        """+1 if ``me`` adds the pair mask of {me, other}, −1 if it subtracts it."""
        return 1 if me < other else -1

    @property
    def degree(self) -> int:
        """Number of neighbours of every peer (the graphs are regular)."""
        return len(self.neighbours[self.peers[0]])


def plan_cohort(config: SecAggConfig, cohort: set[str] | frozenset[str]) -> CohortPlan:
    """The plan for ``cohort`` under ``config``; ``ConfigError`` for an unusable cohort."""
    peers = tuple(sorted(cohort))
    n = len(peers)
    if not 3 <= n <= MAX_PEERS:
        raise ConfigError(f"a secure-aggregation cohort needs 3..{MAX_PEERS} peers, got {n}")
    for peer in peers:
        if not peer or len(peer.encode()) > MAX_PEER_ID_BYTES:
            raise ConfigError(f"peer ID {peer[:40]!r} must be 1..{MAX_PEER_ID_BYTES} bytes")
    kind: Literal["complete", "harary"]
    if config.graph == "auto":
        kind = "complete" if n <= config.complete_max else "harary"
    else:
        kind = config.graph
    degree = n - 1 if kind == "complete" else (config.degree or default_degree(n))
    if degree >= n - 1:
        kind, degree = "complete", n - 1
    neighbours: dict[str, frozenset[str]]
    if kind == "complete":
        everyone = frozenset(peers)
        neighbours = {p: everyone - {p} for p in peers}
    else:
        order = sorted(
            peers,
            key=lambda p: hashlib.sha256(
                domain(config.consortium, config.round, p, "harary-order")
            ).digest(),
        )
        half = degree // 2
        neighbours = {
            p: frozenset(order[(i + j) % n] for j in range(-half, half + 1) if j)
            for i, p in enumerate(order)
        }
    holders = degree + 1
    c = config.collusion
    threshold = config.threshold if config.threshold is not None else holders // 2 + 1
    if not 2 <= threshold <= holders:
        raise ConfigError(
            f"threshold {threshold} is impossible with {holders} share holders per peer"
        )
    if threshold <= c:
        raise ConfigError(
            f"threshold {threshold} is not above the collusion bound {c}: "
            f"{c} colluding members could rebuild any peer's secrets from their own shares"
        )
    if (
        config.input_bits is not None
        and n * ((1 << config.input_bits) - 1) >= 1 << config.ring_bits
    ):
        raise ConfigError(
            f"a sum of {n} inputs of {config.input_bits} bits could wrap the "
            f"2^{config.ring_bits} ring; use fewer input bits or a 64-bit ring"
        )
    floor = config.min_contributors if config.min_contributors is not None else c + 2
    quorum = max(threshold, (n + c) // 2 + 1)
    if config.min_survivors is not None and config.min_survivors < floor:
        raise ConfigError(
            f"min_survivors {config.min_survivors} is below min_contributors {floor}: a sum "
            f"of fewer inputs would let {c} colluding member(s) isolate another's input"
        )
    min_survivors = max(floor, quorum) if config.min_survivors is None else config.min_survivors
    if min_survivors > n:
        raise ConfigError(
            f"a cohort of {n} cannot meet min_survivors {min_survivors} (min_contributors "
            f"{floor}, consistency quorum {quorum} for collusion bound {c})"
        )
    index = {p: i for i, p in enumerate(peers)}
    return CohortPlan(
        peers, kind, neighbours, threshold, min_survivors, index, c, floor, max(quorum, 2)
    )


def guaranteed_contributors(n: int, collusion: int = 1) -> int:
    """The fewest inputs a completed sum of an n-member cohort holds under the defaults.

    ``plan_cohort``'s ``min_survivors`` for the default threshold and floors; what distributed
    noise may count on (``privacy plan``, the benchmarks).
    """
    names = frozenset(f"member-{i:04d}" for i in range(n))
    return plan_cohort(SecAggConfig("plan", 0, 1, collusion=collusion), names).min_survivors


def check_input(config: SecAggConfig, words: UIntVector, copy: bool) -> UIntVector:
    """``words`` as a peer's input for ``config`` (copied if ``copy`` or not maskable in place).

    Raises ``DataError`` for a wrong dtype or length, or a word wider than ``input_bits``.
    """
    dtype = ring_dtype(config.ring_bits)
    if words.dtype != dtype or words.shape != (config.dimension,):
        raise DataError(
            f"the input must be a {dtype.__name__} vector of length {config.dimension}, "
            f"got {words.dtype} of shape {words.shape}"
        )
    bits = config.input_bits
    if bits is not None and words.size and int(words.max()) >> bits:
        raise DataError(
            f"an input word exceeds {bits} bits, so the sum could wrap the ring silently"
        )
    if copy or not (words.flags.writeable and words.flags.c_contiguous):
        words = cast(UIntVector, np.array(words, dtype=dtype, copy=True))
    return words
