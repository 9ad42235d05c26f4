"""The curious-member attack on gossip: solve for individual updates from what one peer sees.

A consortium runs R synchronous gossip rounds of D-PSGD through the real services on the
in-memory network: every peer starts from the same known model (zeros) and in round t feeds
``value + u_i^t``, where its update u_i^t is a *probe* (1 at coordinate t·n + i, so each
coordinate of a mixed vector is the coefficient of one update: what a peer receives is its
own row of the observation matrix) followed by a random *payload* (the secret it should
keep). Gossip is linear, so the same coefficients act on the payloads.

Secure runs use ``CuriousMember`` for every peer: it follows the protocol but keeps whatever
an owner sends back and unmasks it if it can (``OldProtocolMember``: owners that also return
the masked total, as before issue 12). Plain runs tap every vector a peer receives. The
observations (``own_sums``, ``learned_sums``, ``served_models``, ``received_vectors``) are
the rows one peer holds.

``solve`` then plays the attacker: it removes its own updates (it knows them), and for every
other peer's update asks whether the unit vector of that update lies in the row space of what
it saw (least squares). Where it does, the combination applied to the payloads gives the
victim's payload back, and the test compares it with the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import trio
from secure_gossip_peers import run_peers, secure_service

from p2pfed.collectives.codec import MessageStream
from p2pfed.collectives.gossip import MixingTopology
from p2pfed.collectives.gossip_driver import (
    GossipConfig,
    GossipService,
    VectorArrived,
    send_vector,
)
from p2pfed.collectives.messages import Contributors, GossipValue
from p2pfed.collectives.secure_gossip import MASKED_SUM_PROTOCOL, SecureGossipService
from p2pfed.secagg import SecAggPeer, Stage
from p2pfed.secagg.primitives import UIntVector
from p2pfed.transport.base import Transport

CONSORTIUM = "gossip-attack"
PAYLOAD = 6
RECOVERED = 1e-3  # distance of e_j from the row space below which the update is isolated

Vector = npt.NDArray[np.float64]


@dataclass
class GossipRun:
    """What every peer fed in, got out, and (plain gossip) received, round by round."""

    names: list[str]
    rounds: int
    topology: MixingTopology
    updates: dict[tuple[str, int], Vector] = field(default_factory=dict)
    outcomes: dict[tuple[str, int], Vector] = field(default_factory=dict)
    received: dict[str, list[Vector]] = field(default_factory=dict)
    learned: dict[str, list[Vector]] = field(default_factory=dict)

    @property
    def unknowns(self) -> int:
        """One unknown per (peer, round) update."""
        return len(self.names) * self.rounds

    def column(self, peer: str, t: int) -> int:
        """The probe coordinate of ``peer``'s round-``t`` update."""
        return t * len(self.names) + self.names.index(peer)


def _update(names: list[str], rounds: int, peer: str, t: int, rng: np.random.Generator) -> Vector:
    probe = np.zeros(len(names) * rounds + PAYLOAD)
    probe[t * len(names) + names.index(peer)] = 1.0
    probe[len(names) * rounds :] = rng.uniform(-0.5, 0.5, PAYLOAD)
    return probe


class _Tap:
    """A mailbox sender that keeps a copy of every vector handed to the plain-gossip round."""

    def __init__(self, inner: Any, log: list[Vector]) -> None:
        self.inner, self.log = inner, log

    def send_nowait(self, item: VectorArrived) -> None:
        self.log.append(np.frombuffer(item.data, dtype=item.word.dtype).astype(np.float64))
        self.inner.send_nowait(item)


class TappedGossipService(GossipService):
    """Plain gossip that records every neighbour vector this peer receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tapped: list[Vector] = []

    def _box(self, round: int) -> Any:
        send, receive = super()._box(round)
        return _Tap(send, self.tapped), receive


class CuriousMember(SecureGossipService):
    """Secure gossip that follows the protocol but keeps every byte an owner sends back.

    If an owner ever returns its group's masked total, this member feeds it to its own
    secure-aggregation peer, unmasks with the reveals it gets anyway, and records the sum.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.totals: set[int] = set()
        self.learned: list[Vector] = []

    async def _submit(
        self, owner: str, instance: int, masked: UIntVector
    ) -> tuple[UIntVector, frozenset[str]] | None:
        parts: list[bytes] = []
        with trio.move_on_after(3 * self.stage_timeout):
            stream = await self.transport.open_stream(owner, MASKED_SUM_PROTOCOL)
            async with stream:
                messages = MessageStream(stream, self.consortium, self.me)
                await send_vector(messages, instance, masked, 256 * 1024)
                while (envelope := await messages.receive(3 * self.stage_timeout)) is not None:
                    if isinstance(envelope.message, GossipValue):
                        parts.append(envelope.message.data)
                    elif isinstance(envelope.message, Contributors):
                        members = frozenset(envelope.message.members)
                        if not parts:
                            return np.zeros_like(masked), members
                        self.totals.add(instance)
                        total = np.frombuffer(b"".join(parts), dtype=masked.dtype).copy()
                        return cast(UIntVector, total), members
        return None

    async def _instance(
        self, t: int, k: int, term: npt.NDArray[np.float64], members: frozenset[str]
    ) -> tuple[SecAggPeer, frozenset[str]]:
        peer, contributors = await super()._instance(t, k, term, members)
        if t * len(self.peers) + k in self.totals and peer.stage is Stage.DONE:
            sum_ = self.fixed_point.decode_sum(peer.result(), len(peer.survivors))
            self.learned.append(np.asarray(sum_, dtype=np.float64))
        return peer, contributors


class OldProtocolMember(CuriousMember):
    """A curious member under the protocol before issue 12: owners also return the total."""

    async def _reply(self, messages: MessageStream, instance: int, collection: Any) -> None:
        await send_vector(messages, instance, collection.total, 256 * 1024)
        await super()._reply(messages, instance, collection)


async def run_gossip(
    topology: MixingTopology,
    rounds: int,
    *,
    secure: bool,
    seed: int = 0,
    member: type[CuriousMember] = CuriousMember,
    **options: Any,
) -> GossipRun:
    """Run ``rounds`` of D-PSGD gossip over ``topology`` with probe updates; record all."""
    n = topology.n
    names = [f"h{i}" for i in range(n)]
    run = GossipRun(names, rounds, topology)
    rng = np.random.default_rng(seed)
    for t in range(rounds):
        for p in names:
            run.updates[(p, t)] = _update(names, rounds, p, t, rng)

    def build(me: str, transport: Transport) -> Any:
        if secure:
            return secure_service(
                me,
                transport,
                names=names,
                topology=topology,
                consortium=CONSORTIUM,
                seed=seed,
                kind=member,
                **options,
            )
        return TappedGossipService(
            transport, CONSORTIUM, names, topology, config=GossipConfig(deadline=2.0)
        )

    async def rounds_of(me: str, service: Any) -> None:
        x = np.zeros(len(names) * rounds + PAYLOAD)
        for t in range(rounds):
            outcome = await service.sync_round(t, x + run.updates[(me, t)])
            x = np.asarray(outcome.vector, dtype=np.float64)
            run.outcomes[(me, t)] = x
        if secure:
            run.learned[me] = service.learned
        else:
            run.received[me] = service.tapped

    await run_peers(names, build, rounds_of)
    return run


Observation = Callable[[GossipRun, str], list[Vector]]


def own_sums(run: GossipRun, attacker: str) -> list[Vector]:
    """What a secure-gossip member holds: its own group's sum, once per round."""
    return [run.outcomes[(attacker, t)] for t in range(run.rounds)]


def learned_sums(run: GossipRun, attacker: str) -> list[Vector]:
    """Own sums plus every other group's sum the curious member could unmask itself."""
    return own_sums(run, attacker) + list(run.learned[attacker])


def served_models(run: GossipRun, attacker: str) -> list[Vector]:
    """Own sums plus every member's current model, as a model server would hand it out."""
    return own_sums(run, attacker) + [
        run.outcomes[(p, t)] for p in run.names if p != attacker for t in range(run.rounds)
    ]


def received_vectors(run: GossipRun, attacker: str) -> list[Vector]:
    """Plain gossip: every neighbour vector the attacker's service actually received."""
    return own_sums(run, attacker) + list(run.received[attacker])


@dataclass(frozen=True)
class Recovery:
    """Which other peers' updates the attacker isolates, with the payloads it computes."""

    recovered: dict[tuple[str, int], Vector]
    distances: dict[tuple[str, int], float]

    @property
    def peers(self) -> frozenset[str]:
        """Peers at least one of whose updates was isolated."""
        return frozenset(p for p, _ in self.recovered)


def solve(run: GossipRun, attacker: str | tuple[str, ...], observe: Observation) -> Recovery:
    """Least squares over what ``attacker`` (one peer or a coalition) saw, its updates removed."""
    coalition = (attacker,) if isinstance(attacker, str) else attacker
    rows = np.stack([row for member in coalition for row in observe(run, member)])
    d = run.unknowns
    matrix, payloads = rows[:, :d], rows[:, d:].copy()
    for member in coalition:
        for t in range(run.rounds):
            col = run.column(member, t)
            payloads -= np.outer(matrix[:, col], run.updates[(member, t)][d:])
    others = [(p, t) for t in range(run.rounds) for p in run.names if p not in coalition]
    a = matrix[:, [run.column(p, t) for p, t in others]]
    recovered: dict[tuple[str, int], Vector] = {}
    distances: dict[tuple[str, int], float] = {}
    for key, (distance, c) in zip(others, unit_distances(a), strict=True):
        distances[key] = distance
        if distance < RECOVERED:
            recovered[key] = cast(Vector, c @ payloads)
    return Recovery(recovered, distances)


def unit_distances(a: npt.NDArray[np.float64]) -> list[tuple[float, Vector]]:
    """Per column j: the distance of e_j from the row space of ``a``, and the best c (cᵀa ≈ e_j)."""
    out = []
    for j in range(a.shape[1]):
        unit = np.zeros(a.shape[1])
        unit[j] = 1.0
        c = np.linalg.lstsq(a.T, unit, rcond=None)[0]
        out.append((float(np.linalg.norm(a.T @ c - unit)), cast(Vector, c)))
    return out


def own_sum_rows(topology: MixingTopology, rounds: int, attacker: int) -> npt.NDArray[np.float64]:
    """Exact D-PSGD rows (no protocol): x^(t+1) = W_t (x^t + u^t), attacker's row per round.

    Columns are the updates of the other peers (round-major); the attacker's own are removed.
    """
    n = topology.n
    coeffs = np.zeros((n, n * rounds))  # x^t as combinations of all updates; x^0 is known
    rows = []
    for t in range(rounds):
        fresh = np.zeros((n, n * rounds))
        fresh[:, t * n : (t + 1) * n] = np.eye(n)
        coeffs = topology.mixing_at(t).toarray() @ (coeffs + fresh)
        rows.append(coeffs[attacker])
    keep = [c for c in range(n * rounds) if c % n != attacker]
    return np.stack(rows)[:, keep]


def true_payload(run: GossipRun, peer: str, t: int) -> Vector:
    """The victim's secret, to compare with what the attacker computed."""
    return run.updates[(peer, t)][run.unknowns :]
