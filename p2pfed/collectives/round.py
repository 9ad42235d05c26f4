"""The trio driver of a whole round: agree on the cohort, run the ring, commit or retry.

Theory of operation: ``ControlService`` carries the small control messages of round
agreement (``Ready``, ``Cohort``, ``Done``, ``Commit``, ``Abort``), one short stream per
message, into a per-round mailbox; messages for rounds this peer has left are rejected with
``WRONG_ROUND`` and recorded (except a late ``Ready``, which is answered with the cohort so the
straggler learns it was left out). ``RingRound`` composes it with ``RingService``: it feeds
mailbox messages, ring outcomes and deadlines, as small frozen events (``MessageArrived``,
``RingFinished``, ``RingFailed``, ``DeadlinePassed``), into the sans-I/O ``RoundAgreement``
and carries out the actions it returns, starting and cancelling ring attempts. Time is
``trio.current_time()``, so tests run the whole protocol under a mock clock.

Bounds: only the peers ``senders`` admits (the round's members; never observers) may send
round control: any other peer's stream is closed before a byte of it is read. Each sender
has a budget of ``max_per_round`` messages per round; a sender over it is muted (its streams
closed unread) until this peer moves to the next round. So one peer's flood puts at most
``max_per_round`` messages in a mailbox and costs a closed stream per attempt. Refusals are
summarised: one ``Exclusion`` per (round, peer, reason) with a ``count``, not one per message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import trio

from p2pfed.collectives.agreement import (
    Action,
    CancelRing,
    RoundAgreement,
    Send,
    StartRing,
)
from p2pfed.collectives.agreement_state import AgreementTiming, Phase
from p2pfed.collectives.codec import MessageStream
from p2pfed.collectives.faults import Exclusion, FaultPlan, RefusalSummary
from p2pfed.collectives.messages import NO_BASE, Message, ModelBase, Ready
from p2pfed.collectives.ring import ring_order
from p2pfed.collectives.ring_driver import (
    READ_AHEAD_CHUNKS,
    RingConfig,
    RingResult,
    RingService,
)
from p2pfed.collectives.signing import CohortSigner
from p2pfed.errors import (
    BrokenError,
    ClosedError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire.exchange import finish_sending, open_with_backoff

log = logging.getLogger(__name__)

Vector = npt.NDArray[Any] | Callable[[], npt.NDArray[Any]]
"""A peer's vector for a round, or what makes it once the cohort is fixed."""

CONTROL_PROTOCOL = "/p2pfed/round/1.0.0"
_KEEP_FINISHED = 4  # finished rounds kept to answer stragglers' late Ready messages
_MAX_AHEAD = 4  # rounds ahead of ours we buffer messages for; further is refused
MAX_PER_ROUND = 64
"""Messages one sender may put in one round's mailbox: an honest member sends a handful per
attempt (Ready, Cohort, Done, Commit or Abort; secure aggregation's few per stage), and a
round has at most eight attempts."""


class ControlService:
    """Sends and receives round-control messages for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        *,
        timeout: float = 5.0,
        protocol: str = CONTROL_PROTOCOL,
        max_ahead: int = _MAX_AHEAD,
        senders: Callable[[str], bool] | None = None,
        max_per_round: int = MAX_PER_ROUND,
    ) -> None:
        """``senders``: who may send on this protocol (every admitted peer when None)."""
        if max_per_round < 1:
            raise LocalProtocolError(f"max_per_round must be at least 1, got {max_per_round}")
        self.max_ahead = max_ahead
        self.senders = senders
        self.max_per_round = max_per_round
        self.transport = transport
        self.protocol = protocol
        self.consortium = consortium
        self.timeout = timeout
        self.floor = 0
        self._boxes: dict[
            int, tuple[trio.MemorySendChannel[tuple[str, Message]], trio.MemoryReceiveChannel[Any]]
        ] = {}
        self._finished: dict[int, RoundAgreement] = {}
        self._queued: dict[tuple[int, str], int] = {}  # (round, sender) → messages taken
        self._muted: set[str] = set()  # over budget: streams closed unread until next round
        self.newest_seen = -1
        """The highest round a member sent us control for (within ``max_ahead`` of ours)."""
        self.refusals = RefusalSummary()
        self.refuse = self.refusals.refuse
        self.drain = self.refusals.drain
        transport.serve(protocol, self._handle)

    @property
    def exclusions(self) -> list[Exclusion]:
        """Every refusal so far, summarised per (round, peer, reason) with a count."""
        return self.refusals.exclusions

    def advance(self, floor: int) -> None:
        """Rounds below ``floor`` are over here: later messages for them are refused."""
        if floor <= self.floor:
            return
        self.floor = floor
        # A new round: budgets and mutes start afresh; old summaries are reported already.
        self._muted.clear()
        self._queued = {k: n for k, n in self._queued.items() if k[0] >= floor}
        self.refusals.forget_before(floor)

    def _box(
        self, round: int
    ) -> tuple[trio.MemorySendChannel[tuple[str, Message]], trio.MemoryReceiveChannel[Any]]:
        if round not in self._boxes:
            self._boxes[round] = trio.open_memory_channel[tuple[str, Message]](math.inf)
        return self._boxes[round]

    def open_round(
        self, round: int, *, retire_older: bool = True
    ) -> trio.MemoryReceiveChannel[tuple[str, Message]]:
        """The mailbox of ``round``: (sender, message) pairs, including any that came early.

        With ``retire_older`` the rounds below are over: their mailboxes close and their
        messages are rejected from now on.
        """
        if retire_older:
            self.advance(round)
            for old in [r for r in self._boxes if r < round]:
                self._boxes.pop(old)[0].close()
        receive: trio.MemoryReceiveChannel[tuple[str, Message]] = self._box(round)[1]
        return receive

    def close_round(self, round: int, agreement: RoundAgreement | None = None) -> None:
        """Retire a round; keep its agreement (if any) to answer stragglers."""
        box = self._boxes.pop(round, None)
        if box is not None:
            box[0].close()
        self.advance(round + 1)
        if agreement is not None:
            self._finished[round] = agreement
        for old in sorted(self._finished)[:-_KEEP_FINISHED]:
            del self._finished[old]

    async def send(self, peer: str, message: Message) -> None:
        """Deliver one message, best effort: a peer we cannot reach is the protocol's problem.

        Opening the stream is retried with backoff until the timeout (a first dial can lose a
        race with the peer dialling us); once the message may have left it is never resent,
        so a receiver sees each message at most once.
        """
        try:
            with trio.fail_after(self.timeout):
                stream = await open_with_backoff(self.transport, peer, self.protocol)
                async with stream:
                    out = MessageStream(stream, self.consortium, self.transport.local_peer)
                    await out.send(message)
                    # The handler closes once it has read everything: then the message is in.
                    await finish_sending(stream)
        except (trio.TooSlowError, BrokenError, ClosedError, RemoteProtocolError) as exc:
            log.info("control: %s to %s not delivered: %s", type(message).__name__, peer, exc)

    async def _handle(self, stream: Stream) -> None:
        peer = stream.remote_peer
        # Refused before reading: a flood from a non-sender or a muted one costs no decoding.
        if self.senders is not None and not self.senders(peer):
            self.refuse(
                self.floor,
                peer,
                ReasonCode.NOT_MEMBER,
                f"{peer} may not send on {self.protocol}: not a member of the rounds",
            )
            return
        if peer in self._muted:
            self.refuse(self.floor, peer, ReasonCode.RATE_LIMITED, self._over_budget(peer))
            return
        messages = MessageStream(stream, self.consortium, self.transport.local_peer)
        try:
            while (envelope := await messages.receive(self.timeout)) is not None:
                if not self._take(peer, envelope.message.round):
                    return
                for reply in self._deliver(peer, envelope.message):
                    await self.send(reply.peer, reply.message)
        except RemoteProtocolError as exc:
            self.refuse(-1, peer, exc.reason, str(exc))

    def _over_budget(self, peer: str) -> str:
        return f"{peer} sent more than {self.max_per_round} {self.protocol} messages in a round"

    def _take(self, peer: str, round: int) -> bool:
        """Charge one message of ``round`` to ``peer``'s budget; False (and muted) if over."""
        # Messages for rounds we hold no mailbox for are charged to the current round, so a
        # flood of them is muted too, and the table stays bounded by rounds held.
        held = self.floor <= round <= self.floor + self.max_ahead
        key = (round if held else self.floor, peer)
        taken = self._queued.get(key, 0)
        if taken >= self.max_per_round:
            self._muted.add(peer)
            self.refuse(key[0], peer, ReasonCode.RATE_LIMITED, self._over_budget(peer))
            return False
        self._queued[key] = taken + 1
        return True

    def _deliver(self, peer: str, message: Message) -> list[Send]:
        """Queue a message for its round; returns replies owed for rounds already over."""
        round = message.round
        if round in self._finished:
            agreement = self._finished[round]
            if not isinstance(message, Ready):
                self.refuse(
                    round,
                    peer,
                    ReasonCode.WRONG_ROUND,
                    f"{type(message).__name__} for round {round}, which is over here",
                )
                return []
            actions = agreement.receive(peer, message, trio.current_time())
            return [a for a in actions if isinstance(a, Send)]
        if round < self.floor or round > self.floor + self.max_ahead:
            self.refuse(
                round,
                peer,
                ReasonCode.WRONG_ROUND,
                f"{type(message).__name__} for round {round} while this peer is at "
                f"round {self.floor}",
            )
            return []
        self.newest_seen = max(self.newest_seen, round)  # where the others are
        self._box(round)[0].send_nowait((peer, message))
        return []


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """How one round ended for this peer."""

    round: int
    phase: Phase
    result: RingResult | None
    cohort: tuple[str, ...] | None
    attempts: int
    exclusions: list[Exclusion] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        """True when ``result`` is the round's agreed sum."""
        return self.phase is Phase.COMMITTED


class RingRound:
    """Agreement plus ring all-reduce, with retries, for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        roster_version: int,
        members: Sequence[str],
        signer: CohortSigner,
        *,
        timing: AgreementTiming | None = None,
        ring_config: RingConfig | None = None,
        fault: FaultPlan | None = None,
        max_attempts: int = 8,
        ring: RingService | None = None,
        relayed: Collection[str] = (),
        min_cohort: int = 1,
    ) -> None:
        """``ring``: an existing ``RingService`` of this transport to share.

        ``relayed``: the members behind NAT (derived from the roster, so the same on every
        peer), which the ring order keeps apart (``ring.spread_relayed``).
        ``min_cohort``: a round with fewer members on one base fails rather than commit.

        A transport serves each protocol once (a second ``serve`` replaces the first), so
        everything that runs rings on one transport must share one ``RingService``, and one
        transport holds at most one ``RingRound``.
        """
        self.consortium = consortium
        self.roster_version = roster_version
        self.members = tuple(members)
        self.relayed = frozenset(relayed)
        self.signer = signer
        self.timing = timing or AgreementTiming()
        self.ring_config = ring_config or RingConfig()
        self.max_attempts = max_attempts
        self.min_cohort = min_cohort
        if ring is not None and (ring.transport is not transport or ring.consortium != consortium):
            raise LocalProtocolError(
                "a shared RingService must use the same transport and consortium"
            )
        self.control = ControlService(
            transport,
            consortium,
            # A relayed member's first dial can outlast the collect window; its Ready still
            # counts while a coordinator short of its quorum is waiting.
            timeout=self.timing.patience,
            senders=self._is_member,
        )
        if ring is None:
            ring = RingService(
                transport,
                consortium,
                accept_timeout=self.ring_config.timeout,
                fault=fault,
                max_read_ahead=READ_AHEAD_CHUNKS * self.ring_config.chunk_bytes,
            )
        elif fault is not None:
            ring.fault = fault
        self.ring = ring
        self.me = transport.local_peer

    def _is_member(self, peer: str) -> bool:
        # Read at each stream: ``members`` may be replaced when the roster changes.
        return peer in self.members

    async def all_reduce(
        self, vector: Vector, round: int, base: ModelBase = NO_BASE, *, quorum: int = 1
    ) -> RoundOutcome:
        """Agree on round ``round``'s cohort and sum ``vector`` over it, retrying on faults.

        ``vector`` may be a callable: it is called once, when the first cohort is fixed, so
        a round where none forms never makes it (a privacy release behind it is not charged).
        ``base``: the model the caller adds the sum to; the cohort forms on the majority's
        base, and a peer on another is left out (``LEFT_OUT``, a ``STALE_BASE`` exclusion).
        ``quorum``: the cohort a coordinator waits for past its collect window (up to the
        agreement's patience), as a secure sum needs its survivors' quorum.

        Returns the outcome: ``COMMITTED`` with the sum over the committed cohort,
        ``LEFT_OUT`` when this peer came too late, ``FAILED`` when no attempt succeeded.
        Raises ``InjectedCrash`` if this peer's fault plan kills it.
        """
        agreement = RoundAgreement(
            self.me,
            self.consortium,
            round,
            self.members,
            self.signer,
            self.timing,
            max_attempts=self.max_attempts,
            roster_version=self.roster_version,
            base=base,
            min_cohort=self.min_cohort,
            quorum=quorum,
        )
        seen = len(self.ring.exclusions)
        run = _RoundRun(self, agreement, vector)
        await run.run(self.control.open_round(round))
        committed = agreement.phase is Phase.COMMITTED
        return RoundOutcome(
            round,
            agreement.phase,
            run.results.get(agreement.attempt) if committed else None,
            agreement.cohort if committed else None,
            agreement.attempt + 1,
            agreement.exclusions + self.ring.exclusions[seen:] + self.control.drain(round),
        )


@dataclass(frozen=True, slots=True)
class MessageArrived:
    """A round-control message from ``sender`` reached this round's mailbox."""

    sender: str
    message: Message


@dataclass(frozen=True, slots=True)
class RingFinished:
    """The ring of ``attempt`` summed the cohort's vectors."""

    attempt: int
    result: RingResult


@dataclass(frozen=True, slots=True)
class RingFailed:
    """The ring of ``attempt`` failed; ``fault`` names the accused peer and why."""

    attempt: int
    fault: RemoteProtocolError


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """The agreement's deadline passed with nothing else to report."""


RoundEvent = MessageArrived | RingFinished | RingFailed | DeadlinePassed


def dispatch(agreement: RoundAgreement, event: RoundEvent, now: float) -> list[Action]:
    """Feed one driver event into the sans-I/O agreement; returns what it asks for."""
    if isinstance(event, MessageArrived):
        return agreement.receive(event.sender, event.message, now)
    if isinstance(event, RingFinished):
        return agreement.ring_done(event.attempt, now)
    if isinstance(event, RingFailed):
        return agreement.ring_failed(event.attempt, event.fault.peer, event.fault.reason, now)
    return agreement.tick(now)


class _RoundRun:
    """The I/O of one round: mailbox, ring attempts and deadlines in, agreement actions out."""

    def __init__(self, owner: RingRound, agreement: RoundAgreement, vector: Vector) -> None:
        self.owner = owner
        self.agreement = agreement
        self._vector = vector
        self.results: dict[int, RingResult] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._events_in, self._events = trio.open_memory_channel[RoundEvent](math.inf)

    async def run(self, mailbox: trio.MemoryReceiveChannel[tuple[str, Message]]) -> None:
        """Run the agreement to its end, retire the round, and finish sending its messages."""
        agreement = self.agreement
        async with trio.open_nursery() as senders:
            async with trio.open_nursery() as work:
                work.start_soon(self._forward, mailbox)
                self._execute(agreement.start(trio.current_time()), senders, work)
                while not agreement.final:
                    event: RoundEvent = DeadlinePassed()
                    with trio.move_on_at(agreement.deadline or math.inf):
                        event = await self._events.receive()
                    if isinstance(event, RingFinished):
                        self.results[event.attempt] = event.result
                    actions = dispatch(agreement, event, trio.current_time())
                    self._execute(actions, senders, work)
                work.cancel_scope.cancel()
            # Retired while the last messages are still going out: a late Ready from now on
            # is answered with the cohort, not queued in a mailbox nobody reads.
            self.owner.control.close_round(agreement.round, agreement)

    def _execute(self, actions: list[Action], senders: trio.Nursery, work: trio.Nursery) -> None:
        control = self.owner.control
        for action in actions:
            if isinstance(action, Send):
                senders.start_soon(control.send, action.peer, action.message)
            elif isinstance(action, StartRing):
                work.start_soon(self._run_ring, action.attempt, action.cohort)
            elif isinstance(action, CancelRing) and action.attempt in self._scopes:
                self._scopes[action.attempt].cancel()

    def vector(self) -> npt.NDArray[Any]:
        """This peer's vector, made on the first call if it was given as a callable."""
        if callable(self._vector):
            self._vector = self._vector()
        return self._vector

    async def _forward(self, mailbox: trio.MemoryReceiveChannel[tuple[str, Message]]) -> None:
        async for sender, message in mailbox:
            self._events_in.send_nowait(MessageArrived(sender, message))

    async def _run_ring(self, attempt: int, cohort: tuple[str, ...]) -> None:
        owner = self.owner
        round = self.agreement.round
        order = ring_order(
            owner.consortium, owner.roster_version, round, cohort, attempt, owner.relayed
        )
        with trio.CancelScope() as scope:
            self._scopes[attempt] = scope
            try:
                result = await owner.ring.all_reduce(
                    self.vector(), order, round=round, attempt=attempt, config=owner.ring_config
                )
            except RemoteProtocolError as exc:
                self._events_in.send_nowait(RingFailed(attempt, exc))
            else:
                self._events_in.send_nowait(RingFinished(attempt, result))
