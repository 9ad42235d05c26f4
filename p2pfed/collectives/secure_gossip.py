"""Secure gossip: each averaging group's weighted sum is formed by secure aggregation.

Theory of operation: in synchronous round t, node k's next value is Σ_j W_kj·x_j over its
averaging group G_k = {k} ∪ in-neighbours(k). Instead of sending x_j in the clear, every
member j of G_k quantises its own term W_kj·x_j (``p2pfed.secagg.FixedPoint``) and the group
runs one secure-aggregation instance (``drive_secagg``) for it; a peer therefore takes part in
its own group and in the group of every node that mixes it in, all concurrently. The masked
vectors of a group are summed by its owner k (``MASKED_SUM_PROTOCOL``: each member sends its
masked words and gets back only the contributor set S, never the total), the members reveal
their shares for S, and only k unmasks. The owner then adds the weight of members missing
from S to its own term in the clear (it knows its own x_k), exactly the folding of plain
gossip, and takes the dequantised result as x_k.

What one member sees: per round, the sum of its own group only. Every group holds at least
``min_contributors`` peers (default 3 = c + 2 for a collusion bound c = 1) in every round of
the topology's period, checked when the service is built (``ConfigError``), and no member,
the owner included, reveals shares for a contributor set smaller than that (the secure-
aggregation survivor floor), so a smaller sum is never unmasked. In any combination of the
sums one peer holds, over any number of rounds, the latest sum carries the fresh updates of
at least two other peers, which no earlier sum holds: no combination isolates one other
peer's update (tests/gossip_attack.py solves for them). Coalitions of two or more are not
covered. ``ModelSync`` does not serve models in secure gossip either (``p2pfed.node.sync``):
another member's model is its group's sum. Instance numbers keep concurrent instances
apart: group k of round t uses secure-aggregation round t·n + k.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import trio

from p2pfed.collectives.codec import MessageStream
from p2pfed.collectives.faults import Exclusion
from p2pfed.collectives.gossip import MixingTopology, mixing_row_and_targets
from p2pfed.collectives.gossip_driver import receive_vector, send_vector
from p2pfed.collectives.messages import Contributors
from p2pfed.collectives.round import ControlService
from p2pfed.collectives.secure import drive_secagg
from p2pfed.errors import (
    BrokenError,
    ClosedError,
    ConfigError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.identity.keys import Signer
from p2pfed.secagg import FixedPoint, SecAggConfig, SecAggPeer, Stage
from p2pfed.secagg.primitives import RandomBytes, UIntVector, ring_dtype
from p2pfed.transport.base import Stream, Transport

log = logging.getLogger(__name__)

SECURE_GOSSIP_PROTOCOL = "/p2pfed/gossip/secagg/1.0.0"
MASKED_SUM_PROTOCOL = "/p2pfed/gossip/masked-sum/2.0.0"
MIN_CONTRIBUTORS = 3
"""Least inputs in any revealed group sum: c + 2 for the default collusion bound c = 1."""


def check_groups(topology: MixingTopology, min_contributors: int = MIN_CONTRIBUTORS) -> None:
    """Refuse (``ConfigError``) a topology with an averaging group below ``min_contributors``.

    A topology repeats after its ``period`` (1 if it has none), so one period covers every
    round; this runs before any round, so a refused topology never charges the privacy ledger.
    """
    if min_contributors < MIN_CONTRIBUTORS:
        raise ConfigError(
            f"min_contributors must be at least {MIN_CONTRIBUTORS} (two others besides any "
            f"one observer), got {min_contributors}"
        )
    for t in range(int(getattr(topology, "period", 1))):
        for k in range(topology.n):
            weights, _, _ = mixing_row_and_targets(topology, t, k)
            if len(weights) + 1 < min_contributors:
                raise ConfigError(
                    f"node {k}'s averaging group in round {t} has {len(weights) + 1} peers; "
                    f"secure gossip needs at least {min_contributors} (use plain gossip with "
                    "local noise for this topology)"
                )


@dataclass(frozen=True, slots=True)
class SecureGossipOutcome:
    """A secure gossip round's new vector and who contributed to this peer's group."""

    vector: npt.NDArray[np.float64]
    round: int
    contributors: frozenset[str]
    missing: tuple[str, ...]
    exclusions: list[Exclusion] = field(default_factory=list)


class _Collection:
    """The masked vectors a group owner gathers for one instance."""

    def __init__(self) -> None:
        self.vectors: dict[str, UIntVector] = {}
        self.arrived = trio.Event()
        self.total: UIntVector | None = None
        self.contributors: tuple[str, ...] = ()
        self.summed = trio.Event()


class SecureGossipService:
    """Synchronous gossip whose group sums are securely aggregated, for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        peers: Sequence[str],
        topology: MixingTopology,
        identities: Mapping[str, bytes],
        signer: Signer,
        *,
        fixed_point: FixedPoint | None = None,
        stage_timeout: float = 5.0,
        rng: np.random.Generator | None = None,
        random_bytes: RandomBytes = os.urandom,
        min_contributors: int = MIN_CONTRIBUTORS,
        collusion: int = 1,
    ) -> None:
        if len(peers) != topology.n or len(set(peers)) != len(peers):
            raise LocalProtocolError(f"secure gossip needs {topology.n} distinct peers")
        if set(peers) - set(identities):
            raise ConfigError("every gossip peer needs an identity key")
        check_groups(topology, min_contributors)
        self.min_contributors = min_contributors
        self.collusion = collusion
        self.transport = transport
        self.consortium = consortium
        self.peers = tuple(peers)
        self.topology = topology
        self.identities = dict(identities)
        self.signer = signer
        self.fixed_point = fixed_point or FixedPoint()
        self.stage_timeout = stage_timeout
        self.rng = rng or np.random.default_rng(0)
        self.random_bytes = random_bytes
        self.me = transport.local_peer
        self.index = self.peers.index(self.me)
        n = len(self.peers)
        self.channel = ControlService(
            transport,
            consortium,
            timeout=stage_timeout,
            protocol=SECURE_GOSSIP_PROTOCOL,
            max_ahead=2 * n,
            senders=self.peers.__contains__,
        )
        self.exclusions: list[Exclusion] = []
        self._collections: dict[int, _Collection] = {}
        transport.serve(MASKED_SUM_PROTOCOL, self._handle_masked)

    def pace(self, stage_timeout: float) -> None:
        """Run the next rounds under ``stage_timeout`` (``PacedAggregator`` sets it each round)."""
        self.stage_timeout = stage_timeout

    def _group(self, t: int, k: int) -> tuple[dict[str, float], float]:
        weights, self_weight, _ = mixing_row_and_targets(self.topology, t, k)
        return {self.peers[j]: w for j, w in weights.items()}, self_weight

    def _collection(self, instance: int) -> _Collection:
        if instance not in self._collections:
            self._collections[instance] = _Collection()
        return self._collections[instance]

    async def _handle_masked(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if peer not in self.peers:  # an observer's vector is never read, however large
            detail = f"{peer} may not send masked vectors: not a node of the gossip"
            self.channel.refuse(self.channel.floor, peer, ReasonCode.NOT_MEMBER, detail)
            return
        messages = MessageStream(stream, self.consortium, self.me)
        try:
            got = await receive_vector(messages, self.stage_timeout, 1 << 28)
            if got is None:
                return
            instance, word, data = got
            n = len(self.peers)
            if instance % n != self.index or instance < self.channel.floor:
                self._reject(instance, peer, ReasonCode.WRONG_ROUND, "masked vector misrouted")
                return
            collection = self._collection(instance)
            if collection.summed.is_set() or peer in collection.vectors:
                self._reject(instance, peer, ReasonCode.REPLAY, "masked vector too late or twice")
                return
            collection.vectors[peer] = cast(UIntVector, np.frombuffer(data, dtype=word.dtype))
            collection.arrived.set()
            collection.arrived = trio.Event()
            # The owner may wait a whole stage for absent members before it sums: wait longer.
            with trio.move_on_after(2 * self.stage_timeout):
                await collection.summed.wait()
            if collection.total is None or peer not in collection.contributors:
                return
            await self._reply(messages, instance, collection)
            await stream.send_eof()
        except (RemoteProtocolError, BrokenError, ClosedError) as exc:
            reason = exc.reason if isinstance(exc, RemoteProtocolError) else ReasonCode.DROPPED
            self._reject(-1, peer, reason, str(exc))

    async def _reply(self, messages: MessageStream, instance: int, collection: _Collection) -> None:
        # Only the contributor set goes back: with the total and the reveals a member could
        # unmask the owner's sum, one more sum than its own group's per round.
        await messages.send(Contributors(instance, collection.contributors))

    def _reject(self, round: int, peer: str, reason: ReasonCode, detail: str) -> None:
        log.info("secure gossip: rejected %s: %s", peer, detail)
        self.exclusions.append(Exclusion(round, peer, reason, detail))

    async def _collect(
        self, instance: int, members: frozenset[str], own: UIntVector, ring_bits: int
    ) -> tuple[UIntVector, frozenset[str]]:
        collection = self._collection(instance)
        others = members - {self.me}
        with trio.move_on_after(self.stage_timeout):
            while not others <= set(collection.vectors):
                await collection.arrived.wait()
        dtype = ring_dtype(ring_bits)
        total = cast(UIntVector, np.array(own, dtype=dtype, copy=True))
        contributors = {self.me}
        for peer, vector in sorted(collection.vectors.items()):
            if peer in others and vector.dtype == dtype and vector.shape == own.shape:
                np.add(total, vector, out=total)
                contributors.add(peer)
            else:
                self._reject(instance, peer, ReasonCode.WRONG_SHAPE, "masked vector misshapen")
        collection.total = total
        collection.contributors = tuple(sorted(contributors))
        collection.summed.set()
        return total, frozenset(contributors)

    async def _submit(
        self, owner: str, instance: int, masked: UIntVector
    ) -> tuple[UIntVector, frozenset[str]] | None:
        try:
            with trio.fail_after(3 * self.stage_timeout):
                stream = await self.transport.open_stream(owner, MASKED_SUM_PROTOCOL)
                async with stream:
                    messages = MessageStream(stream, self.consortium, self.me)
                    await send_vector(messages, instance, masked, 256 * 1024)
                    listing = await messages.receive(3 * self.stage_timeout)
        except (trio.TooSlowError, BrokenError, ClosedError, RemoteProtocolError) as exc:
            log.info("secure gossip: no contributor set from %s: %s", owner, exc)
            return None
        if listing is None or not isinstance(listing.message, Contributors):
            return None
        contributors = frozenset(listing.message.members)
        # A member never holds the total: it reveals for S and computes nothing it uses,
        # so its state machine is fed zeros in place of the sum.
        return np.zeros_like(masked), contributors

    async def _instance(
        self, t: int, k: int, term: npt.NDArray[np.float64], members: frozenset[str]
    ) -> tuple[SecAggPeer, frozenset[str]]:
        n = len(self.peers)
        instance = t * n + k
        owner = self.peers[k]
        config = SecAggConfig(
            self.consortium,
            instance,
            len(term),
            self.fixed_point.ring_bits,
            # Every member, the owner included, refuses to reveal for fewer contributors (the
            # protocol's floor; its consistency quorum adds to it).
            min_contributors=self.min_contributors,
            collusion=self.collusion,
        )
        identities = {p: self.identities[p] for p in members}
        peer = SecAggPeer(config, self.me, self.signer, identities, random_bytes=self.random_bytes)
        words = self.fixed_point.encode(term, self.rng, len(members))
        mailbox = self.channel.open_round(instance, retire_older=False)
        contributors: frozenset[str] = frozenset()

        async def summation(masked: UIntVector) -> tuple[UIntVector, frozenset[str]] | None:
            nonlocal contributors
            if owner == self.me:
                result: tuple[UIntVector, frozenset[str]] | None = await self._collect(
                    instance, members, masked, self.fixed_point.ring_bits
                )
            else:
                result = await self._submit(owner, instance, masked)
            if result is not None:
                contributors = result[1]
            return result

        await drive_secagg(
            peer, words, self.channel, mailbox, instance, self.stage_timeout, summation
        )
        return peer, contributors

    async def sync_round(self, t: int, vector: npt.NDArray[Any]) -> SecureGossipOutcome:
        """One synchronous round: x ← Σ W_ij x_j over this peer's group, summed securely.

        A group sum that cannot be formed over at least ``min_contributors`` inputs leaves
        this peer's value unchanged (all weight folded to self).
        """
        if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.floating):
            raise LocalProtocolError("secure gossip averages a flat float vector")
        n = len(self.peers)
        x = vector.astype(np.float64)
        own_weights, own_self = self._group(t, self.index)
        _, _, targets = mixing_row_and_targets(self.topology, t, self.index)
        memberships: dict[int, tuple[float, frozenset[str]]] = {
            self.index: (own_self, frozenset(own_weights) | {self.me})
        }
        for k in targets:
            weights, _ = self._group(t, k)
            memberships[k] = (weights[self.me], frozenset(weights) | {self.peers[k]})
        self.channel.advance(t * n)
        before = len(self.exclusions)
        outcomes: dict[int, tuple[SecAggPeer, frozenset[str]]] = {}

        async def run(k: int, weight: float, members: frozenset[str]) -> None:
            outcomes[k] = await self._instance(t, k, weight * x, members)

        async with trio.open_nursery() as nursery:
            for k, (weight, members) in memberships.items():
                nursery.start_soon(run, k, weight, members)
        for k in memberships:
            self.channel.close_round(t * n + k)
            self._collections.pop(t * n + k, None)
        self.channel.advance((t + 1) * n)
        peer, _ = outcomes[self.index]
        exclusions = self.exclusions[before:] + [
            Exclusion(t, r.peer, r.reason, r.detail) for r in peer.rejections
        ]
        exclusions += [
            Exclusion(t, e.peer, e.reason, e.detail, e.count)
            for e in self.channel.drain((t + 1) * n - 1)
        ]
        if peer.stage is not Stage.DONE:
            # The group's secure sum failed: keep our own value (all weight folded to self).
            missing = tuple(sorted(own_weights))
            return SecureGossipOutcome(x, t, frozenset({self.me}), missing, exclusions)
        survivors = peer.survivors
        mixed = self.fixed_point.decode_sum(peer.result(), len(survivors))
        missing = tuple(sorted(set(own_weights) - survivors))
        folded = sum(own_weights[j] for j in missing)
        if self.me not in survivors:
            folded += own_self
        mixed = mixed + folded * x
        return SecureGossipOutcome(mixed, t, survivors, missing, exclusions)
