"""Gossip averaging over a topology, as sans-I/O cores.

Theory of operation. *Synchronous mode*: in round t peer i sends its vector x_i to every
peer that mixes it in (the non-zero off-diagonal entries of column i of W_t) and waits, until
a deadline, for the vectors of its in-neighbours (row i). ``GossipRound`` then sets

    x_i ← W_ii·x_i + Σ_{j heard} W_ij·x_j + Σ_{j missing} W_ij·x_i,

folding each missing neighbour's weight into the self weight, so the update stays a convex
combination (row sums stay 1: no value ever leaves the hull of the inputs). What folding
costs is column stochasticity: if i misses j but j heard i, column sums of the effective
matrix are no longer 1 and the network average drifts by W_ij·(x_i − x_j)/n that round. When
both ends miss each other (a cut link, a crashed peer seen by everyone) the effective matrix
stays symmetric, hence doubly stochastic, and the average is preserved exactly.

*Asynchronous push-pull mode* (no barrier, for stragglers): a peer picks a random neighbour,
sends x_i, and the neighbour answers with its current x_j and moves halfway,
x_j ← x_j + (x_i − x_j)/2; the initiator applies x_i ← x_i + (x_j − x_i^sent)/2. Updates are
written as deltas against the values actually exchanged, so the sum over peers is conserved
even if other exchanges touched x_i meanwhile (``push_pull_delta``).

Vectors are float32/float64 and mixed in float64. Misbehaviour raises
``RemoteProtocolError`` naming the sender: wrong round (``WRONG_ROUND``), a second vector
(``REPLAY``), a peer that is not an in-neighbour this round (``PROTOCOL_VIOLATION``), the
wrong length or word type (``WRONG_SHAPE``/``WRONG_DTYPE``).

*Direct links first*: a link between two members behind NAT (``relayed``: the roster lists
no address for them) runs through a relay. ``place_peers`` puts those members on topology
nodes that share as few edges as possible, and ``partner_weights`` makes a push-pull partner
over a relayed link ``RELAYED_PARTNER_WEIGHT`` times as likely as one over a direct link.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from p2pfed.collectives.messages import GossipValue, Message, WordType
from p2pfed.collectives.robust import ROBUST_RULES, robust_mix
from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError


class MixingTopology(Protocol):
    """What gossip needs from a ``topologies.Topology``."""

    @property
    def n(self) -> int:
        """Number of nodes."""
        ...

    def mixing_at(self, t: int) -> Any:
        """The n×n mixing matrix of round t (a scipy sparse array)."""
        ...


class GossipState(enum.Enum):
    """Where one synchronous gossip round stands."""

    WAITING = "waiting"
    MIXED = "mixed"


class GossipEvent(enum.Enum):
    """What moves a synchronous gossip round."""

    ALL_HEARD = "all-heard"
    DEADLINE = "deadline"


RELAYED_PARTNER_WEIGHT = 0.25
"""A relayed link's push-pull draw weight against 1 for a direct one: above zero, so every
edge of the topology stays in use (the exchanges still mix over a connected graph)."""
EXACT_PLACEMENT_LIMIT = 20_000
"""Up to this many candidate node sets ``place_peers`` tries them all; beyond, greedily."""


def partner_weights(me: str, candidates: Sequence[str], relayed: Collection[str]) -> list[float]:
    """Draw weights of ``candidates`` as ``me``'s push-pull partner: direct links first."""
    mine = me in relayed
    return [RELAYED_PARTNER_WEIGHT if mine and c in relayed else 1.0 for c in candidates]


def place_peers(
    peers: Sequence[str], relayed: Collection[str], n: int, edges: Iterable[tuple[int, int]]
) -> tuple[str, ...]:
    """Which peer sits on each of the n topology nodes: members behind NAT kept apart.

    The relayed peers take the node set with the fewest edges inside it (every set when
    there are at most ``EXACT_PLACEMENT_LIMIT``, the first such in lexicographic order;
    else greedily, each next node the one with the fewest edges to those taken, then the
    lowest degree, then the lowest index), in sorted order; the others take the remaining
    nodes in sorted order. Pure and deterministic, so every member computes the same.
    """
    ordered = sorted(peers)
    if len(ordered) != n or len(set(ordered)) != n:
        raise LocalProtocolError(f"placing peers needs {n} distinct peers, got {len(peers)}")
    behind = [p for p in ordered if p in relayed]
    direct = [p for p in ordered if p not in relayed]
    adjacent: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        if a != b:
            adjacent[a].add(b)
            adjacent[b].add(a)

    def inside(nodes: Iterable[int]) -> int:
        chosen = set(nodes)
        return sum(len(adjacent[v] & chosen) for v in chosen)

    r = len(behind)
    if math.comb(n, r) <= EXACT_PLACEMENT_LIMIT:
        taken: list[int] = list(min(itertools.combinations(range(n), r), key=inside))
    else:
        taken = []
        for _ in range(r):
            free = (v for v in range(n) if v not in taken)
            taken.append(
                min(free, key=lambda v: (len(adjacent[v] & set(taken)), len(adjacent[v]), v))
            )
        taken.sort()
    rest = iter(direct)
    behind_at = dict(zip(taken, behind, strict=True))
    return tuple(behind_at[v] if v in behind_at else next(rest) for v in range(n))


GOSSIP_TRANSITIONS: dict[tuple[GossipState, GossipEvent], GossipState] = {
    (GossipState.WAITING, GossipEvent.ALL_HEARD): GossipState.MIXED,
    (GossipState.WAITING, GossipEvent.DEADLINE): GossipState.MIXED,
}


def mixing_row_and_targets(
    topology: MixingTopology, t: int, i: int
) -> tuple[dict[int, float], float, tuple[int, ...]]:
    """Row i of W_t as {j: W_ij} without i, the self weight W_ii, and who mixes i in."""
    if not 0 <= i < topology.n:
        raise LocalProtocolError(f"node {i} is outside 0..{topology.n - 1}")
    matrix = topology.mixing_at(t).tocsr()
    row = matrix[[i], :]
    weights: dict[int, float] = {}
    self_weight = 0.0
    for j, w in zip(row.indices.tolist(), row.data.tolist(), strict=True):
        if j == i:
            self_weight = float(w)
        elif w != 0:
            weights[int(j)] = float(w)
    column = matrix.tocsc()[:, [i]]
    targets = tuple(
        sorted(
            int(j)
            for j, w in zip(column.indices.tolist(), column.data.tolist(), strict=True)
            if j != i and w != 0
        )
    )
    return weights, self_weight, targets


class GossipRound:
    """One peer's synchronous gossip round: collect neighbours' vectors, then mix."""

    def __init__(
        self,
        vector: npt.NDArray[Any],
        round: int,
        weights: Mapping[str, float],
        self_weight: float,
        robust: str = "off",
        byzantine_neighbours: int = 1,
    ) -> None:
        if vector.ndim != 1:
            raise LocalProtocolError(f"gossip needs a flat vector, got {vector.ndim}-D")
        self.word = WordType.of(vector.dtype.newbyteorder("<"))
        if self.word.is_integer:
            raise LocalProtocolError("gossip averages float32/float64 vectors, not integers")
        total = self_weight + sum(weights.values())
        if abs(total - 1.0) > 1e-9 or self_weight < 0 or min(weights.values(), default=0) < 0:
            raise LocalProtocolError(
                f"mixing row must be non-negative and sum to 1, sums to {total:.12g}"
            )
        if robust not in ROBUST_RULES:
            raise LocalProtocolError(f"gossip mixing must be one of {ROBUST_RULES}, not {robust!r}")
        self.robust = robust
        self.byzantine_neighbours = byzantine_neighbours
        self.round = round
        self.vector = vector
        self.weights = dict(weights)
        self.self_weight = self_weight
        self.heard: dict[str, npt.NDArray[Any]] = {}
        self.state = GossipState.WAITING

    def _fire(self, event: GossipEvent) -> None:
        try:
            self.state = GOSSIP_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"gossip round cannot take {event.value} in state {self.state.value}"
            ) from None

    @property
    def missing(self) -> tuple[str, ...]:
        """In-neighbours not heard from (yet)."""
        return tuple(sorted(set(self.weights) - set(self.heard)))

    def receive(self, sender: str, round: int, word: WordType, data: bytes) -> bool:
        """Take ``sender``'s vector; returns True once every in-neighbour was heard."""
        if round != self.round:
            raise RemoteProtocolError(
                ReasonCode.WRONG_ROUND,
                f"peer {sender} sent a gossip vector of round {round} into round {self.round}",
                sender,
            )
        if self.state is not GossipState.WAITING:
            raise RemoteProtocolError(
                ReasonCode.UNEXPECTED_STAGE, f"peer {sender} sent after the round mixed", sender
            )
        if sender not in self.weights:
            raise RemoteProtocolError(
                ReasonCode.PROTOCOL_VIOLATION,
                f"peer {sender} is not an in-neighbour in gossip round {self.round}",
                sender,
            )
        if sender in self.heard:
            raise RemoteProtocolError(
                ReasonCode.REPLAY, f"peer {sender} sent its round-{round} vector twice", sender
            )
        if word is not self.word:
            raise RemoteProtocolError(
                ReasonCode.WRONG_DTYPE,
                f"peer {sender} sent {word.name.lower()} words, expected {self.word.name.lower()}",
                sender,
            )
        values = np.frombuffer(data, dtype=self.word.dtype)
        if values.shape != self.vector.shape:
            raise RemoteProtocolError(
                ReasonCode.WRONG_SHAPE,
                f"peer {sender} sent {values.size} words, expected {self.vector.size}",
                sender,
            )
        if self.robust != "off" and not np.all(np.isfinite(values)):
            # Clipping bounds a far vector's pull, not a NaN's: refuse it outright.
            raise RemoteProtocolError(
                ReasonCode.NON_FINITE, f"peer {sender} sent a non-finite gossip vector", sender
            )
        self.heard[sender] = values
        if not self.missing:
            self._fire(GossipEvent.ALL_HEARD)
            return True
        return False

    def mix(self) -> npt.NDArray[Any]:
        """The mixed vector; missing neighbours' weight goes to the self weight.

        With ``robust = "clipped-gossip"`` every heard neighbour's difference from our vector
        is clipped to the adaptive radius for ``byzantine_neighbours`` Byzantine neighbours
        (``robust_mix``).
        """
        if self.state is GossipState.WAITING:
            self._fire(GossipEvent.DEADLINE)
        if self.robust == "clipped-gossip" and self.heard:
            names = sorted(self.heard)
            others = np.stack([self.heard[j] for j in names])
            weights = np.array([self.weights[j] for j in names])
            mixed = robust_mix(self.vector, others, weights, self.byzantine_neighbours)
            return mixed.astype(self.vector.dtype)
        own = self.self_weight + sum(self.weights[j] for j in self.missing)
        out = own * self.vector.astype(np.float64)
        for j, values in self.heard.items():
            out += self.weights[j] * values.astype(np.float64)
        return out.astype(self.vector.dtype)


def push_pull_delta(sent: npt.NDArray[Any], other: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """What a peer adds to its vector after a push-pull exchange: (other − sent)/2."""
    if sent.shape != other.shape:
        raise LocalProtocolError(
            f"push-pull vectors differ in shape: {sent.shape} vs {other.shape}"
        )
    delta: npt.NDArray[np.float64] = (other.astype(np.float64) - sent.astype(np.float64)) / 2
    return delta


def peer_weights(peers: Sequence[str], weights: Mapping[int, float]) -> dict[str, float]:
    """Map node-indexed weights to peer IDs (node k is ``peers[k]``)."""
    return {peers[j]: w for j, w in weights.items()}


class VectorAssembly:
    """One vector put back together from its ``GossipValue`` slices, strictly in order.

    Every slice must repeat the first one's round, length and word type and start where the
    previous one ended; the first may announce at most ``max_words`` words. Anything else
    raises ``RemoteProtocolError`` naming ``peer``.
    """

    def __init__(self, peer: str, max_words: int) -> None:
        self.peer = peer
        self.max_words = max_words
        self._parts: list[bytes] = []
        self._expected = 0
        self._first: GossipValue | None = None

    @property
    def started(self) -> bool:
        """True once a slice came in (an end of stream now cuts a vector short)."""
        return self._first is not None

    def add(self, message: Message) -> tuple[int, WordType, bytes] | None:
        """Take the next message; the (round, word type, raw bytes) once the vector is whole."""
        peer = self.peer
        if not isinstance(message, GossipValue):
            raise RemoteProtocolError(
                ReasonCode.UNEXPECTED_STAGE,
                f"peer {peer} sent a {type(message).__name__} in a gossip stream",
                peer,
            )
        first = self._first
        if first is None:
            if message.total > self.max_words:
                raise RemoteProtocolError(
                    ReasonCode.OVERSIZED, f"peer {peer} announced {message.total} words", peer
                )
            first = self._first = message
        if (message.round, message.total, message.word, message.offset) != (
            first.round,
            first.total,
            first.word,
            self._expected,
        ):
            raise RemoteProtocolError(
                ReasonCode.OUT_OF_ORDER, f"peer {peer} sent an inconsistent gossip slice", peer
            )
        self._parts.append(message.data)
        self._expected += message.count
        if self._expected == first.total:
            return first.round, first.word, b"".join(self._parts)
        return None


def exchanged_vector(
    mine: npt.NDArray[Any], word: WordType, data: bytes, peer: str, what: str
) -> npt.NDArray[Any]:
    """The vector ``peer`` sent in a push-pull exchange, which must match ``mine``.

    Raises ``RemoteProtocolError`` (``WRONG_DTYPE`` or ``WRONG_SHAPE``) saying that ``what``
    does not match.
    """
    theirs = np.frombuffer(data, dtype=word.dtype)
    if word.dtype != mine.dtype or theirs.shape != mine.shape:
        reason = ReasonCode.WRONG_DTYPE if word.dtype != mine.dtype else ReasonCode.WRONG_SHAPE
        raise RemoteProtocolError(reason, f"{what} does not match", peer)
    return theirs
