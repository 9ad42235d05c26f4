"""Secure ring all-reduce: secure aggregation's masked vectors summed by the ring.

Theory of operation: ``p2pfed.secagg.SecAggPeer`` is a sans-I/O state machine whose only
step it cannot take alone is "sum these masked uint vectors mod 2^k and say whose are in the
sum". ``drive_secagg`` runs it through a ``SecAggSession`` (which decodes, holds back early
messages, keeps the stage deadlines and waits for commitments) and only moves bytes and
time: its messages (key advertisements, sealed shares, receipts, input commitments, reveals)
travel as ``SecAggData`` frames on their own control protocol. In ``SecureRingRound``, once
the peer holds its masked vector the summation step is ``RingRound.all_reduce``: round
agreement plus ring all-reduce over the uint words, retried without peers that fail. The
committed cohort of the ring is exactly the contributor set S handed to
``SecAggPeer.receive_sum``; peers that dropped before or during the ring are outside S and
their pair masks are removed by threshold recovery. No peer ever sees another's unmasked
vector: the ring and its coordinator only move masked words. With a reduced ring modulus
(``RingConfig.modulus_bits``: compressed updates) the masked words are cut to their low bits
before the ring; masks drawn mod 2^32 cancel mod 2^bits as well.

``RingMaskedSum`` is the same step as a stand-alone object: given only the local peer's
masked vector it returns the same (total, contributors) at every peer, the distributed
counterpart of ``p2pfed.secagg.DirectMaskedSum`` (asynchronous, because it talks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import trio

from p2pfed.collectives.agreement_state import AgreementTiming
from p2pfed.collectives.faults import Exclusion, FaultPlan
from p2pfed.collectives.messages import NO_BASE, Message, ModelBase, SecAggData
from p2pfed.collectives.ring_driver import RingConfig
from p2pfed.collectives.round import ControlService, RingRound, RoundOutcome
from p2pfed.collectives.signing import CohortSigner
from p2pfed.errors import DataError, LocalProtocolError
from p2pfed.identity.keys import Signer
from p2pfed.secagg import SecAggConfig, SecAggPeer, Stage
from p2pfed.secagg.primitives import RandomBytes, UIntVector, ring_dtype
from p2pfed.secagg.protocol import Input
from p2pfed.secagg.session import Action, Finished, NeedSum, SecAggSession, Send
from p2pfed.transport.base import Transport

log = logging.getLogger(__name__)

SECAGG_PROTOCOL = "/p2pfed/secagg/1.0.0"
REFERENCE_STAGE_S = 10.0
"""The stage deadline the ring's default agreement waits and silence timeout were set for."""


Summation = Callable[[UIntVector], Awaitable[tuple[UIntVector, frozenset[str]] | None]]
"""Sums this peer's masked vector with the others'; (total, contributors), or None if it failed."""


async def drive_secagg(
    peer: SecAggPeer,
    words: Input,
    channel: ControlService,
    mailbox: trio.MemoryReceiveChannel[tuple[str, Message]],
    round: int,
    stage_timeout: float,
    summation: Summation,
) -> None:
    """Run ``peer`` on ``words`` to its end: messages over ``channel``, sum by ``summation``.

    ``round`` is the frame round its messages travel under (their mailbox is ``mailbox``).
    Each stage waits for what it needs or ``stage_timeout`` (see ``SecAggSession``).
    """
    async with trio.open_nursery() as senders:
        driver = _Driver(SecAggSession(peer, stage_timeout), channel, round, senders)
        async with trio.open_nursery() as work:
            work.start_soon(driver.pump, mailbox)
            await driver.run(words, summation)
            work.cancel_scope.cancel()


class _Driver:
    """Moves one session's bytes over the control channel and feeds it the clock."""

    def __init__(
        self, session: SecAggSession, channel: ControlService, round: int, senders: trio.Nursery
    ) -> None:
        self.session = session
        self.channel = channel
        self.round = round
        self.senders = senders
        self.changed = trio.Event()

    def act(self, actions: list[Action]) -> None:
        """Send what the session says to send (each in its own task); log its refusals."""
        for action in actions:
            if isinstance(action, Send):
                frame = SecAggData(self.round, action.data)
                self.senders.start_soon(self.channel.send, action.to, frame)
            else:
                log.info("secagg: refused a message from %s: %s", action.sender, action.error)

    async def pump(self, mailbox: trio.MemoryReceiveChannel[tuple[str, Message]]) -> None:
        """Hand every secure-aggregation frame of this round to the session; wake ``run``."""
        async for sender, message in mailbox:
            if isinstance(message, SecAggData):
                self.act(self.session.receive(sender, message.data, trio.current_time()))
                self.changed.set()
                self.changed = trio.Event()

    async def run(self, words: Input, summation: Summation) -> None:
        """Start the round and give the session the sum and the clock until it finishes."""
        session = self.session
        self.act(session.start(words, trio.current_time()))
        while not isinstance(need := session.next(), Finished):
            if isinstance(need, NeedSum):
                self.act(session.summed(await summation(need.vector), trio.current_time()))
                continue
            with trio.move_on_at(need.deadline):
                await self.changed.wait()
            self.act(session.tick(trio.current_time()))


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
    stages_s: tuple[tuple[str, float], ...] = ()
    """Seconds in mask (keys, shares, encoding, masking), all-reduce and unmask, when summed."""

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
        self._base_timing = self.ring_round.timing
        self._base_ring = self.ring_round.ring_config
        self._base_control = self.ring_round.control.timeout
        self.masked_sum = RingMaskedSum(self.ring_round)
        self.channel = ControlService(
            transport,
            consortium,
            timeout=stage_timeout,
            protocol=SECAGG_PROTOCOL,
            senders=self.identities.__contains__,
        )
        self.me = transport.local_peer

    def pace(self, stage_timeout: float) -> None:
        """Run the next rounds under ``stage_timeout``, the ring's own waits stretched to match.

        A big model's members finish masking seconds apart on a loaded machine, and a
        coordinator's 2 s collect window then fixes a cohort without the late ones. Beyond
        ``REFERENCE_STAGE_S`` the agreement's waits, its control messages' send timeout and
        the ring's silence timeout grow in proportion to the stage deadline, never below what
        was configured; a collect window ends as soon as every member is ready, so a longer
        one costs nothing when all are.
        """
        if stage_timeout <= 0:
            raise LocalProtocolError(f"stage_timeout {stage_timeout} must be positive")
        self.stage_timeout = stage_timeout
        factor = max(1.0, stage_timeout / REFERENCE_STAGE_S)
        base = self._base_timing
        self.ring_round.timing = AgreementTiming(
            base.collect_window * factor,
            base.takeover_timeout * factor,
            base.commit_timeout * factor,
        )
        self.ring_round.ring_config = replace(
            self._base_ring, timeout=self._base_ring.timeout * factor
        )
        # Sending one control message may take seconds on a loaded machine: the agreement's
        # (its patience, 3.75 s by default) and ours (the stage) are paced as well.
        self.ring_round.control.timeout = self._base_control * factor
        self.channel.timeout = stage_timeout

    async def aggregate(
        self,
        words: Input,
        round: int,
        ring_bits: int = 32,
        *,
        dimension: int | None = None,
        base: ModelBase = NO_BASE,
    ) -> SecureOutcome:
        """Securely sum ``words`` (already quantised to Z_2^ring_bits) with the cohort.

        ``base``: the model the sum goes onto; the ring's cohort forms on one base.

        ``words`` may be a callable: it is called only once the share holders are fixed
        (``SecAggPeer.start``), so a round that never gathers them never draws the input;
        ``dimension`` (its length) is then required.

        Returns the outcome; a failed round (too few survivors, secrets not recoverable)
        comes back with ``stage`` ABORTED and the reason, never as a partial result.
        """
        if dimension is None:
            if callable(words):
                raise LocalProtocolError("an input made on demand needs its dimension")
            dimension = len(words)
        config = SecAggConfig(
            self.consortium,
            round,
            dimension,
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
        marks = [trio.current_time()]  # start, masked vector ready, ring sum back

        bits = self.ring_round.ring_config.modulus_bits

        async def summation(masked: UIntVector) -> tuple[UIntVector, frozenset[str]] | None:
            nonlocal ring_outcome
            if bits is not None and bits < ring_bits:  # compressed: masks cancel mod 2^bits too
                masked = masked & masked.dtype.type((1 << bits) - 1)
            marks.append(trio.current_time())
            quorum = peer.plan.min_survivors  # a cohort short of it could only abort: wait
            ring_outcome = await self.ring_round.all_reduce(masked, round, base, quorum=quorum)
            marks.append(trio.current_time())
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
        stages: tuple[tuple[str, float], ...] = ()
        if len(marks) == 3:
            start, masked, summed = marks
            stages = (
                ("mask", masked - start),
                ("all-reduce", summed - masked),
                ("unmask", trio.current_time() - summed),
            )
        return SecureOutcome(
            round,
            peer.stage,
            result,
            peer.survivors,
            ring_outcome,
            exclusions,
            peer.abort_reason,
            stages,
        )
