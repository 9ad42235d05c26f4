"""How a peer combines its update with the consortium's: the ``Aggregator`` layer.

Theory of operation: a round hands the aggregator this peer's (already clipped and noised)
update and gets back the *mean update over the peers whose updates made it into the sum*,
with who they were and what it cost. Implementations compose the collectives:

- ``SecureRingAggregator``: encode into Z_2^k (``FixedPoint``, or with distributed DP the
  ``DiscreteGaussianEncoder``, which adds each peer's integer noise in the ring, or with
  ``[rounds] compression`` the ``QuantisedEncoder`` plus error feedback) → secure
  aggregation (masks) → the masked words summed by round agreement + ring all-reduce →
  unmask → decode → mean. No peer ever holds another's update; only the sum is revealed.
- ``RingAggregator``: plain float ring all-reduce (secure aggregation off).
- ``GossipAggregator``: neighbourhood averaging over a topology (D-PSGD): this peer's model
  after its update is mixed with its neighbours' (securely, inside each averaging group of
  three or more, with ``SecureGossipService``: only the group's owner learns its sum); peers
  then hold different models that converge, so ``exact`` is False and no peer expects the
  others' model to equal its own. Being secure and not exact, its peers do not serve their
  models (``Peer`` turns ``ModelSync``'s ``serve_models`` off).

Example weighting (``[rounds] weighting = "examples"``, exact modes only): a member with
weight v = min(n, max_examples) / max_examples ∈ (0, 1] sends the vector (v·x, v) — its
update scaled and, as one extra coordinate, the weight itself — so a single (masked) sum
yields Σ v·x and Σ v together and the mean is their ratio: FedAvg's example-weighted mean,
with no count ever sent on its own. ``weighted_vector`` and ``weighted_mean`` do this.

Each is a thin adapter: all protocol logic lives in ``p2pfed.collectives`` and
``p2pfed.secagg``. A round that cannot complete (too few survivors, this peer left out)
returns ``Missed`` instead of a partial result.

The update may be handed over as a callable (``Update``), which the exact modes call only
once this round's cohort is fixed (the ring's agreed cohort; secure aggregation's share
holders), right before anything derived from it leaves: a privacy release behind it is then
charged only for rounds this peer can actually join. Gossip has no cohort to wait for and
calls it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from p2pfed.collectives.faults import Exclusion
from p2pfed.collectives.messages import NO_BASE, ModelBase
from p2pfed.collectives.round import RingRound
from p2pfed.collectives.secure import SecureRingRound
from p2pfed.errors import P2PFedError
from p2pfed.secagg.compression import ErrorFeedback, QuantisedEncoder, compress_with_feedback
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.primitives import UIntVector


@dataclass(frozen=True)
class Aggregate:
    """The mean update of one round and who contributed to it."""

    round: int
    mean: NDArray[np.float32]
    contributors: frozenset[str]
    bytes_sent: int
    exclusions: tuple[Exclusion, ...] = field(default_factory=tuple)
    stages_s: tuple[tuple[str, float], ...] = ()
    """Seconds of the aggregation's own stages (secure: mask, all-reduce, unmask), if timed."""


@dataclass(frozen=True)
class Missed:
    """A round this peer could not complete, and why (it should resynchronise)."""

    round: int
    reason: str
    exclusions: tuple[Exclusion, ...] = field(default_factory=tuple)


DECODE_CHUNK = 1 << 14
"""Ring words decoded at a time (128 KiB of float64 temporaries: below the daemon's mmap
threshold and inside L2 cache, as ``p2pfed.secagg.fixedpoint.CHUNK``)."""

Update = NDArray[np.float32] | Callable[[], NDArray[np.float32]]
"""This peer's update for a round, or what releases it once the cohort is fixed."""


def made(update: Update) -> NDArray[np.float32]:
    """The update itself (calling it if it is made on demand)."""
    return update() if callable(update) else update


def examples_weight(examples: int, max_examples: int) -> float:
    """A member's weight v = min(n, max_examples) / max_examples (in [0, 1])."""
    return min(examples, max_examples) / max_examples


def weighted_vector(update: NDArray[np.floating], weight: float | None) -> NDArray[np.floating]:
    """What a member puts into the sum: x (uniform, as it is), or (v·x, v) with weight v.

    The uniform case is no copy: the encoders widen a chunk at a time, and a float64 copy
    of a 10 M-parameter update would be 80 MB.
    """
    if weight is None:
        return np.asarray(update)
    values = np.asarray(update, dtype=np.float64)
    return np.append(values * weight, weight)


def weighted_mean(
    total: NDArray[np.floating], contributors: int, weighted: bool, error: float = 0.0
) -> NDArray[np.float32] | None:
    """The mean from a sum of ``weighted_vector``s: Σx / k, or Σv·x / Σv.

    None when Σv is within the sum's rounding ``error`` of zero: nobody held examples.
    """
    if not weighted:
        return (np.asarray(total, dtype=np.float64) / contributors).astype(np.float32)
    if not total[-1] > error:
        return None
    return (np.asarray(total[:-1], dtype=np.float64) / float(total[-1])).astype(np.float32)


def decoded_mean(
    encoder: RingEncoder,
    total: UIntVector,
    contributors: int,
    weighted: bool,
    error: float = 0.0,
    *,
    chunk: int = DECODE_CHUNK,
) -> NDArray[np.float32] | None:
    """``weighted_mean(encoder.decode_sum(total, k), k, weighted, error)``, a chunk at a time.

    The same float64 arithmetic per coordinate, so the same float32 mean bit for bit, with
    float64 temporaries of one chunk instead of two or three of the whole model.
    """
    size = total.size - (1 if weighted else 0)
    divisor = float(contributors)
    if weighted:
        divisor = float(encoder.decode_sum(total[size:], contributors)[0])
        if not divisor > error:
            return None
    mean = np.empty(size, dtype=np.float32)
    for lo in range(0, size, chunk):
        part = encoder.decode_sum(total[lo : min(lo + chunk, size)], contributors)
        part /= divisor
        mean[lo : lo + chunk] = part
    return mean


class Aggregator(Protocol):
    """Averages one update per round with the rest of the consortium."""

    secure: bool
    """Whether individual updates stay hidden (only the sum is revealed)."""
    exact: bool
    """Whether every member ends the round with the same model (exact averaging)."""

    @property
    def guaranteed_contributors(self) -> int:
        """How many updates a completed sum always contains (for distributed DP noise)."""
        ...

    def newest_round_seen(self) -> int:
        """The highest round other members sent this peer round messages for (-1: none)."""
        ...

    async def aggregate(
        self, round: int, update: Update, weights: NDArray[np.float32], base: ModelBase = NO_BASE
    ) -> Aggregate | Missed:
        """The mean update over this round's contributors, or why there is none.

        ``weights`` are this peer's shared weights before the update (gossip mixes models);
        ``base`` names them (exact modes sum only with members on the same base).
        """
        ...


class RingEncoder(Protocol):
    """Update to ring words, ring sum back: ``FixedPoint`` or ``DiscreteGaussianEncoder``."""

    @property
    def ring_bits(self) -> int:
        """K of the ring Z_2^k."""
        ...

    def check_peers(self, n: int) -> None:
        """``ConfigError`` unless a sum of ``n`` encoded vectors decodes correctly."""
        ...

    def encode(self, values: NDArray[np.floating], rng: Any, peers: int) -> UIntVector:
        """Words for one update in a sum of ``peers``."""
        ...

    def decode_sum(self, total: UIntVector, peers: int) -> NDArray[np.float64]:
        """The float sum of ``peers`` encoded updates from their ring sum."""
        ...


class SecureRingAggregator:
    """Secure aggregation whose masked words are summed by the ring (the default)."""

    secure = True
    exact = True

    def __init__(
        self,
        secure_round: SecureRingRound,
        fixed_point: RingEncoder,
        members: int,
        min_survivors: int,
        rng: np.random.Generator,
        weight: float | None = None,
        feedback: ErrorFeedback | None = None,
    ) -> None:
        """``feedback``: error feedback for a ``QuantisedEncoder`` (compressed updates)."""
        fixed_point.check_peers(members)
        if feedback is not None and not isinstance(fixed_point, QuantisedEncoder):
            raise ValueError("error feedback needs a compressing (quantised) encoder")
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise ValueError(f"an example weight must lie in [0, 1], not {weight}")
        if weight is not None and not isinstance(fixed_point, FixedPoint):
            raise ValueError("example weighting needs the plain fixed-point encoder")
        if secure_round.min_survivors not in (None, min_survivors):
            raise ValueError("the aggregator and its secure round disagree on min_survivors")
        self.secure_round = secure_round
        self.fixed_point = fixed_point
        self.members = members
        self.min_survivors = min_survivors
        self.rng = rng
        #: This member's example weight v, or None for the uniform mean.
        self.weight = weight
        #: EF-SGD's residual, in memory only: it restarts at zero with the daemon.
        self.feedback = feedback
        # The protocol enforces it: a sum with fewer vectors aborts instead of completing.
        secure_round.min_survivors = min_survivors

    @property
    def guaranteed_contributors(self) -> int:
        """A secure sum completes only with at least ``min_survivors`` vectors in it."""
        return self.min_survivors

    def newest_round_seen(self) -> int:
        """The highest round of the members' agreement or secure-aggregation messages."""
        return max(
            self.secure_round.ring_round.control.newest_seen, self.secure_round.channel.newest_seen
        )

    async def aggregate(
        self, round: int, update: Update, weights: NDArray[np.float32], base: ModelBase = NO_BASE
    ) -> Aggregate | Missed:
        """Encode, mask, ring-sum, unmask and decode; the mean over the survivors."""

        def words() -> UIntVector:  # called once the share holders are fixed
            vector = weighted_vector(made(update), self.weight)
            if isinstance(self.fixed_point, QuantisedEncoder):
                return compress_with_feedback(
                    self.fixed_point, self.feedback, vector, self.rng, self.members
                )
            return self.fixed_point.encode(vector, self.rng, self.members)

        weighted = self.weight is not None
        outcome = await self.secure_round.aggregate(
            words,
            round,
            ring_bits=self.fixed_point.ring_bits,
            dimension=weights.size + (1 if weighted else 0),
            base=base,
        )
        exclusions = tuple(outcome.exclusions)
        if not outcome.ok or outcome.result is None:
            return Missed(round, outcome.abort_reason or outcome.stage.value, exclusions)
        survivors = outcome.survivors
        sent = outcome.ring.result.bytes_sent if outcome.ring and outcome.ring.result else 0
        # Each decoded word is off by less than one grid step: a Σv below that is zero.
        step = self.fixed_point.step if isinstance(self.fixed_point, FixedPoint) else 0.0
        error = len(survivors) * step if weighted else 0.0
        mean = decoded_mean(self.fixed_point, outcome.result, len(survivors), weighted, error)
        if mean is None:
            return Missed(round, "the members in the sum hold no examples", exclusions)
        return Aggregate(round, mean, frozenset(survivors), sent, exclusions, outcome.stages_s)


class RingAggregator:
    """Plain ring all-reduce of float updates (secure aggregation off)."""

    secure = False
    exact = True

    def __init__(self, ring_round: RingRound, weight: float | None = None) -> None:
        self.ring_round = ring_round
        #: This member's example weight v, or None for the uniform mean.
        self.weight = weight

    @property
    def guaranteed_contributors(self) -> int:
        """Without masks any single update may be seen: no guarantee beyond oneself."""
        return 1

    def newest_round_seen(self) -> int:
        """The highest round of the members' agreement messages."""
        return self.ring_round.control.newest_seen

    async def aggregate(
        self, round: int, update: Update, weights: NDArray[np.float32], base: ModelBase = NO_BASE
    ) -> Aggregate | Missed:
        """Sum the float updates by ring all-reduce; the mean over the committed cohort."""

        def vector() -> NDArray[np.float32]:
            return weighted_vector(made(update), self.weight).astype(np.float32)

        outcome = await self.ring_round.all_reduce(vector, round, base)
        exclusions = tuple(outcome.exclusions)
        if not outcome.committed or outcome.result is None or outcome.cohort is None:
            return Missed(round, outcome.phase.value, exclusions)
        cohort = frozenset(outcome.cohort)
        mean = weighted_mean(outcome.result.vector, len(cohort), self.weight is not None)
        if mean is None:
            return Missed(round, "the members in the sum hold no examples", exclusions)
        return Aggregate(round, mean, cohort, outcome.result.bytes_sent, exclusions)


class GossipRound(Protocol):
    """A synchronous gossip service: ``GossipService`` or ``SecureGossipService``."""

    me: str

    async def sync_round(self, t: int, vector: NDArray[np.floating]) -> Any:
        """Mix ``vector`` with the neighbours' for round ``t``."""
        ...


class GossipAggregator:
    """D-PSGD: mix this peer's updated model with its neighbours' over a topology."""

    exact = False

    def __init__(self, service: GossipRound, secure: bool) -> None:
        self.service = service
        self.secure = secure

    @property
    def guaranteed_contributors(self) -> int:
        """Gossip makes no promise about how many updates share a sum: use local noise."""
        return 1

    def newest_round_seen(self) -> int:
        """Gossip rejoins from the members' statuses (``Peer._rejoin``), not from messages."""
        return -1

    async def aggregate(
        self, round: int, update: Update, weights: NDArray[np.float32], base: ModelBase = NO_BASE
    ) -> Aggregate | Missed:
        """The mixed model minus ours (``base`` unused: members' models differ by design)."""
        current = weights
        mine = made(update)  # no cohort to wait for: neighbours are fixed by the topology
        try:
            outcome = await self.service.sync_round(round, (current + mine).astype(np.float32))
        except P2PFedError as exc:
            return Missed(round, str(exc))
        heard: frozenset[str] = frozenset(
            outcome.contributors if hasattr(outcome, "contributors") else outcome.heard
        )
        mixed = np.asarray(outcome.vector, dtype=np.float32)
        if not np.all(np.isfinite(mixed)):
            return Missed(round, "the mixed model is not finite", tuple(outcome.exclusions))
        return Aggregate(
            round,
            (mixed - current).astype(np.float32),
            heard | {self.service.me},
            0,
            tuple(outcome.exclusions),
        )
