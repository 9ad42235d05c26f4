"""Secure ring all-reduce: secure aggregation's masked vectors summed by the ring.

Theory of operation: ``p2pfed.secagg.SecAggPeer`` is a sans-I/O state machine whose only
step it cannot take alone is "sum these masked uint vectors mod 2^k and say whose are in the
sum". ``SecureRingRound`` drives it over the transport: its messages (key advertisements,
sealed shares, receipts, input commitments, reveals) travel as ``SecAggData`` frames on their
own control protocol, each stage waits for what it needs or for its stage timeout, and once
the peer holds its masked vector the summation step is ``RingRound.all_reduce``: round
agreement plus ring all-reduce over the uint words, retried without peers that fail. The
committed cohort of the ring is exactly the contributor set S handed to
``SecAggPeer.receive_sum``; peers that dropped before or during the ring are outside S and
their pair masks are removed by threshold recovery. No peer ever sees another's unmasked
vector: the ring and its coordinator only move masked words.

``RingMaskedSum`` is the same step as a stand-alone object: given only the local peer's
masked vector it returns the same (total, contributors) at every peer, the distributed
counterpart of ``p2pfed.secagg.DirectMaskedSum`` (asynchronous, because it talks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import trio

from p2pfed.collectives.agreement import AgreementTiming, CohortSigner
from p2pfed.collectives.faults import Exclusion, FaultPlan
from p2pfed.collectives.messages import Message, SecAggData
from p2pfed.collectives.ring_driver import RingConfig
from p2pfed.collectives.round import ControlService, RingRound, RoundOutcome
from p2pfed.errors import DataError, LocalProtocolError, RemoteProtocolError
from p2pfed.secagg import SecAggConfig, SecAggPeer, Stage
from p2pfed.secagg.messages import InputCommit, decode, encode
from p2pfed.secagg.primitives import RandomBytes, Signer, UIntVector, ring_dtype
from p2pfed.secagg.protocol import Outgoing
from p2pfed.transport.base import Transport

log = logging.getLogger(__name__)

SECAGG_PROTOCOL = "/p2pfed/secagg/1.0.0"
_MAX_HELD = 4096  # early messages held back per round (a few per peer and stage)
_PRE_SUM = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.RECEIPTS)


Summation = Callable[[UIntVector], Awaitable[tuple[UIntVector, frozenset[str]] | None]]
"""Sums this peer's masked vector with the others'; (total, contributors), or None if it failed."""


async def drive_secagg(
    peer: SecAggPeer,
    words: UIntVector,
    channel: ControlService,
    mailbox: trio.MemoryReceiveChannel[tuple[str, Message]],
    round: int,
    stage_timeout: float,
    summation: Summation,
) -> None:
    """Run ``peer`` on ``words`` to its end: messages over ``channel``, sum by ``summation``.

    ``round`` is the frame round its messages travel under (their mailbox is ``mailbox``).
    Each pre-sum stage and the unmasking wait for what they need or ``stage_timeout``.
    """
    progressed = trio.Event()
    # Who has committed its mask set: the sum can only be taken once every contributor's
    # commitment is in, and commitments travel apart from (and may trail) the vectors.
    committed: set[str] = {peer.me}

    def stage() -> Stage:
        # A function, not the attribute: the peer's stage changes behind awaits.
        return peer.stage

    async with trio.open_nursery() as senders:

        def emit(outgoing: list[Outgoing]) -> None:
            for item in outgoing:
                frame = SecAggData(round, encode(item.message))
                senders.start_soon(channel.send, item.to, frame)

        # Messages that overtook what they depend on (separate streams are not ordered),
        # offered again after every change; bounded so a flood cannot grow it.
        held: list[tuple[str, bytes]] = []

        def take(sender: str, data: bytes) -> bool:
            if peer.is_early(sender, data):
                if len(held) < _MAX_HELD:
                    held.append((sender, data))
                return False
            try:
                emit(peer.receive_bytes(sender, data))
            except RemoteProtocolError as exc:
                log.info("secagg: refused a message from %s: %s", sender, exc)
                return False
            if isinstance(decode(data), InputCommit):
                committed.add(sender)
            return True

        def retry_held() -> None:
            changed = True
            while changed and held:
                changed = False
                for item in list(held):
                    if not peer.is_early(*item):
                        held.remove(item)
                        changed |= take(*item)

        async def pump() -> None:
            nonlocal progressed
            async for sender, message in mailbox:
                if not isinstance(message, SecAggData):
                    continue
                if take(sender, message.data):
                    retry_held()
                progressed.set()
                progressed = trio.Event()

        async def wait_stage_change(stages: tuple[Stage, ...]) -> bool:
            with trio.move_on_after(stage_timeout) as scope:
                while stage() in stages:
                    await progressed.wait()
            return not scope.cancelled_caught

        async with trio.open_nursery() as work:
            work.start_soon(pump)
            emit(peer.start(words))
            while stage() in _PRE_SUM:
                if not await wait_stage_change((stage(),)):
                    emit(peer.deadline())
                retry_held()
            if stage() is Stage.MASKED_INPUT and peer.masked_vector is not None:
                summed = await summation(peer.masked_vector)
                if summed is not None:
                    with trio.move_on_after(stage_timeout):
                        while not summed[1] <= committed:
                            await progressed.wait()
                    emit(peer.receive_sum(*summed))
                    retry_held()
                    for waiting in (Stage.CONSISTENCY, Stage.UNMASK):
                        if stage() is waiting and not await wait_stage_change((waiting,)):
                            emit(peer.deadline())
                elif stage() is Stage.MASKED_INPUT:
                    peer.deadline()
            work.cancel_scope.cancel()


class RingMaskedSum:
    """The step "sum these uint vectors mod 2^k", by round agreement and ring all-reduce."""

    def __init__(self, ring_round: RingRound) -> None:
        self.ring_round = ring_round

    async def sum(
        self, vectors: Mapping[str, UIntVector], ring_bits: int, round: int
    ) -> tuple[UIntVector, frozenset[str]]:
        """The total mod 2^ring_bits over the committed cohort, and that cohort.

        ``vectors`` holds this peer's vector only (the others are on other peers). Raises
        ``DataError`` for a wrong vector and ``LocalProtocolError`` if the round could not
        be committed (this peer was left out, or every attempt failed).
        """
        me = self.ring_round.me
        if set(vectors) != {me}:
            raise DataError(f"a distributed masked sum takes exactly this peer's vector ({me})")
        vector = vectors[me]
        if vector.dtype != ring_dtype(ring_bits) or vector.ndim != 1:
            raise DataError(f"masked vector must be a flat {ring_dtype(ring_bits).__name__} vector")
        outcome = await self.ring_round.all_reduce(vector, round)
        if not outcome.committed or outcome.result is None or outcome.cohort is None:
            raise LocalProtocolError(
                f"masked sum of round {round} not committed here ({outcome.phase.value})"
            )
        return cast(UIntVector, outcome.result.vector), frozenset(outcome.cohort)


@dataclass(frozen=True, slots=True)
class SecureOutcome:
    """How a secure round ended: the unmasked sum over ``survivors`` if it succeeded."""

    round: int
    stage: Stage
    result: UIntVector | None
    survivors: frozenset[str]
    ring: RoundOutcome | None
    exclusions: list[Exclusion] = field(default_factory=list)
    abort_reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when ``result`` is the unmasked sum over ``survivors``."""
        return self.stage is Stage.DONE and self.result is not None


class SecureRingRound:
    """Secure aggregation whose masked vectors are summed by the ring, for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        roster_version: int,
        identities: Mapping[str, bytes],
        signer: Signer,
        cohort_signer: CohortSigner,
        *,
        timing: AgreementTiming | None = None,
        ring_config: RingConfig | None = None,
        stage_timeout: float = 5.0,
        fault: FaultPlan | None = None,
        random_bytes: RandomBytes = os.urandom,
        ring_round: RingRound | None = None,
        threshold: int | None = None,
        min_survivors: int | None = None,
        collusion: int = 1,
        min_contributors: int | None = None,
    ) -> None:
        """``ring_round``: the transport's existing ``RingRound`` to share (see RingRound).

        ``threshold`` (Shamir t among each peer's share holders) and ``min_survivors`` (the
        fewest vectors a completed sum may hold) go to every round's ``SecAggConfig``;
        ``None`` keeps the protocol's defaults; ``collusion`` and ``min_contributors`` are the
        threat model's floors (see ``p2pfed.secagg.params``).
        """
        if stage_timeout <= 0:
            raise LocalProtocolError(f"stage_timeout {stage_timeout} must be positive")
        self.threshold = threshold
        self.min_survivors = min_survivors
        self.collusion = collusion
        self.min_contributors = min_contributors
        self.consortium = consortium
        self.identities = dict(identities)
        self.signer = signer
        self.stage_timeout = stage_timeout
        self.random_bytes = random_bytes
        members: Sequence[str] = sorted(identities)
        if ring_round is not None and ring_round.consortium != consortium:
            raise LocalProtocolError("a shared RingRound must belong to the same consortium")
        self.ring_round = ring_round or RingRound(
            transport,
            consortium,
            roster_version,
            members,
            cohort_signer,
            timing=timing,
            ring_config=ring_config,
            fault=fault,
        )
        self.masked_sum = RingMaskedSum(self.ring_round)
        self.channel = ControlService(
            transport,
            consortium,
            timeout=stage_timeout,
            protocol=SECAGG_PROTOCOL,
            senders=self.identities.__contains__,
        )
        self.me = transport.local_peer

    async def aggregate(self, words: UIntVector, round: int, ring_bits: int = 32) -> SecureOutcome:
        """Securely sum ``words`` (already quantised to Z_2^ring_bits) with the cohort.

        Returns the outcome; a failed round (too few survivors, secrets not recoverable)
        comes back with ``stage`` ABORTED and the reason, never as a partial result.
        """
        config = SecAggConfig(
            self.consortium,
            round,
            len(words),
            ring_bits,
            threshold=self.threshold,
            min_survivors=self.min_survivors,
            collusion=self.collusion,
            min_contributors=self.min_contributors,
        )
        peer = SecAggPeer(
            config, self.me, self.signer, self.identities, random_bytes=self.random_bytes
        )
        mailbox = self.channel.open_round(round)
        ring_outcome: RoundOutcome | None = None

        async def summation(masked: UIntVector) -> tuple[UIntVector, frozenset[str]] | None:
            nonlocal ring_outcome
            ring_outcome = await self.ring_round.all_reduce(masked, round)
            if not ring_outcome.committed or ring_outcome.result is None:
                return None
            assert ring_outcome.cohort is not None
            return cast(UIntVector, ring_outcome.result.vector), frozenset(ring_outcome.cohort)

        await drive_secagg(peer, words, self.channel, mailbox, round, self.stage_timeout, summation)
        self.channel.close_round(round)
        result = peer.result() if peer.stage is Stage.DONE else None
        exclusions = list(ring_outcome.exclusions) if ring_outcome is not None else []
        exclusions += [Exclusion(round, r.peer, r.reason, r.detail) for r in peer.rejections]
        exclusions += self.channel.drain(round)
        return SecureOutcome(
            round,
            peer.stage,
            result,
            peer.survivors,
            ring_outcome,
            exclusions,
            peer.abort_reason,
        )
