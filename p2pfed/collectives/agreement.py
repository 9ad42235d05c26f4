"""Round agreement without a fixed server: a rotating coordinator fixes each attempt's cohort.

Theory of operation (sans-I/O; the phases and their legal moves are in ``agreement_state``,
drawn in ``docs/protocols.md``): for attempt a of round r, the eligible peers (the roster for
the first attempt, the previous attempt's cohort afterwards) are sorted and peer number
(r + a + k) mod n is the coordinator for takeover index k, starting at k = 0. Every peer
sends ``Ready`` (with its accusations from the previous attempt) to coordinator k. The
coordinator collects Ready messages until every eligible peer has answered or its collect
window closes (while fewer than the round's quorum have answered, until its patience runs
out, still before the others would take over), leaves out peers accused with evidence (a
malformed, misshapen, replayed or stale message: not mere silence, which any victim of a
cascade shows), signs the cohort and sends it to every peer that answered. Peers that hear
nothing within the takeover timeout move on to coordinator k + 1, so no single peer's
failure stops a round; a coordinator accused with evidence abdicates the same way, by
staying silent.

Then the driver runs the ring over the cohort. A member whose ring finishes sends ``Done``
to the coordinator; one whose ring fails sends ``Abort`` (naming whom it accuses) to the
whole cohort. The coordinator sends ``Commit`` once every member is done; anyone seeing an
``Abort``, or no ``Commit`` in time, starts attempt a + 1 with the cohort as eligible set,
and the crashed, silent peers simply never answer its ``Ready`` round. The round's result is
therefore always the sum over exactly the cohort of the committed attempt.

``Ready`` and the signed ``Cohort`` name a base model: the cohort is the members on the
majority's base (``bases``), the rest are left out (``STALE_BASE``) and catch up.

A straggler whose ``Ready`` arrives after the cohort was fixed gets that cohort back, sees
itself left out (``LEFT_OUT``) and joins the next round. The coordinator orders the round but
handles only these small control messages: it never sees a vector.

Residual risk (no consensus protocol here): a coordinator that crashes half-way through
sending ``Commit`` leaves the members it did not reach retrying while the others have
committed. Everything is driven by ``start``/``receive``/``ring_done``/``ring_failed``/
``tick`` with the current time passed in; outputs are ``Send``/``StartRing``/``CancelRing``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from p2pfed.collectives.agreement_state import (
    FINAL_PHASES,
    AgreementTiming,
    Phase,
    Trigger,
    next_phase,
)
from p2pfed.collectives.bases import majority_base
from p2pfed.collectives.faults import Exclusion
from p2pfed.collectives.messages import (
    MAX_ATTEMPTS,
    NO_BASE,
    Abort,
    Cohort,
    Commit,
    Done,
    Message,
    ModelBase,
    Ready,
)
from p2pfed.collectives.signing import CohortSigner
from p2pfed.errors import LocalProtocolError, ReasonCode

# Accusations that prove misbehaviour. Silence and broken streams do not: when one peer
# fails, its neighbours' streams break too, and they would be accused in a cascade.
_SILENCE = frozenset({ReasonCode.TIMEOUT, ReasonCode.DROPPED})


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to ``peer``."""

    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class StartRing:
    """Run the ring over ``cohort`` for ``attempt``; report with ring_done or ring_failed."""

    attempt: int
    cohort: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CancelRing:
    """Stop the ring of ``attempt``: it failed elsewhere."""

    attempt: int


Action = Send | StartRing | CancelRing


def coordinator_of(eligible: Sequence[str], round: int, attempt: int, takeover: int) -> str:
    """The coordinator for takeover index ``takeover`` of one attempt; the same everywhere."""
    members = sorted(eligible)
    return members[(round + attempt + takeover) % len(members)]


class RoundAgreement:
    """One peer's side of agreeing on, running and committing one round."""

    def __init__(
        self,
        me: str,
        consortium: str,
        round: int,
        members: Sequence[str],
        signer: CohortSigner,
        timing: AgreementTiming | None = None,
        *,
        max_attempts: int = 8,
        roster_version: int = 0,
        base: ModelBase = NO_BASE,
        min_cohort: int = 1,
        quorum: int = 1,
    ) -> None:
        """``roster_version``, ``base`` (the model we add the sum to): a cohort shares both.

        ``min_cohort``: no smaller cohort is fixed (the round fails instead). ``quorum``:
        while fewer (or fewer than ``min_cohort``) answered, a coordinator collects past its
        window, up to ``timing.patience``: a cohort short of it could not complete.
        """
        if me not in members:
            raise LocalProtocolError(f"peer {me} is not a member of the roster it was given")
        if not 1 <= max_attempts <= MAX_ATTEMPTS + 1:
            raise LocalProtocolError(f"max_attempts {max_attempts} is outside 1..256")
        self.me = me
        self.consortium = consortium
        self.round = round
        self.roster_version = roster_version
        self.base, self.min_cohort = base, min_cohort
        self.quorum = max(quorum, min_cohort)
        self.timing = timing or AgreementTiming()
        self.max_attempts = max_attempts
        self._signer = signer
        self.phase = Phase.IDLE
        self.attempt = 0
        self.takeover = 0
        self.eligible: tuple[str, ...] = tuple(sorted(set(members)))
        self.cohort: tuple[str, ...] | None = None
        self.cohort_message: Cohort | None = None
        self.deadline: float | None = None
        self.patient_until = 0.0  # the latest a coordinator short of its quorum collects
        self.exclusions: list[Exclusion] = []
        self.accusations: dict[str, ReasonCode] = {}
        self._ready: dict[str, Ready] = {}
        self._done: set[str] = set()
        self._future: list[tuple[str, Message]] = []

    # -- helpers ---------------------------------------------------------------------------

    def _fire(self, trigger: Trigger) -> None:
        self.phase = next_phase(self.phase, trigger)

    @property
    def final(self) -> bool:
        """True once the round is committed, left out or failed."""
        return self.phase in FINAL_PHASES

    @property
    def coordinator(self) -> str:
        """The coordinator this peer currently follows."""
        return coordinator_of(self.eligible, self.round, self.attempt, self.takeover)

    def _exclude(self, peer: str, reason: ReasonCode, detail: str) -> None:
        self.exclusions.append(Exclusion(self.round, peer, reason, detail))

    def _other_roster(self, sender: str, message: Ready | Cohort) -> bool:
        """Ring order and membership depend on the roster: mixing versions corrupts sums."""
        theirs = message.roster_version
        if theirs != self.roster_version:
            why = f"roster version {theirs} in a {type(message).__name__}, ours is "
            self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, why + str(self.roster_version))
        return theirs != self.roster_version

    def _evidence_against(self, peer: str) -> bool:
        if peer in self.accusations and self.accusations[peer] not in _SILENCE:
            return True
        return any(
            accused == peer and ReasonCode(reason) not in _SILENCE
            for ready in self._ready.values()
            for accused, reason in ready.accused
            if reason in ReasonCode._value2member_map_
        )

    def _announce(self, now: float) -> list[Action]:
        """Send Ready to the current coordinator, or start collecting if that is us."""
        if self.takeover >= len(self.eligible):
            self._fire(Trigger.EXHAUSTED)
            self.deadline = None
            return []
        if self.coordinator == self.me:
            self._fire(Trigger.COORDINATE)
            self._ready = {self.me: self._own_ready()}
            self.deadline = now + self.timing.collect_window
            self.patient_until = now + self.timing.patience
            return self._maybe_fix(now)
        self._fire(Trigger.TAKEOVER if self.phase is Phase.ANNOUNCED else Trigger.ANNOUNCE)
        self.deadline = now + self.timing.takeover_timeout
        return [Send(self.coordinator, self._own_ready())]

    def _own_ready(self) -> Ready:
        accused = tuple(sorted((peer, reason.value) for peer, reason in self.accusations.items()))
        return Ready(
            self.round, self.attempt, self.takeover, accused, self.roster_version, self.base
        )

    def _maybe_fix(self, now: float) -> list[Action]:
        wanted = {p for p in self.eligible if not self._evidence_against(p)}
        candidates = [p for p in self._ready if p in wanted]
        if not wanted <= set(self._ready):
            if now < (self.deadline or now):
                return []
            if len(candidates) < self.quorum and now < self.patient_until:
                # Fixing now would leave out a merely slower member and fail the round.
                self.deadline = self.patient_until
                return []
        base = majority_base(self._ready[p].base for p in candidates or [self.me])
        members = tuple(sorted(p for p in candidates if self._ready[p].base == base))
        # Accused with evidence, on a stale base (a cohort without its coordinator cannot
        # commit) or too few on ours: step aside, the next coordinator decides without us.
        if self._evidence_against(self.me) or base != self.base or len(members) < self.min_cohort:
            self.takeover += 1
            self._fire(Trigger.ABDICATE)
            return self._announce(now)  # to the next coordinator, or exhausted
        for peer in self.eligible:
            if self._evidence_against(peer):
                self._exclude(peer, ReasonCode.PROTOCOL_VIOLATION, "accused with evidence")
        for peer in sorted(set(candidates) - set(members)):
            theirs = self._ready[peer].base
            self._exclude(peer, ReasonCode.STALE_BASE, f"on {theirs}, the cohort on {base}")
        for peer in sorted(wanted - set(self._ready)):  # silent: down, cut off or too late
            self._exclude(peer, ReasonCode.TIMEOUT, f"no Ready for attempt {self.attempt} in time")
        fixed = (self.round, self.attempt, self.takeover, self.me, members)
        unsigned = Cohort(*fixed, b"", self.roster_version, base)
        signature = self._signer.sign(unsigned.signed_bytes(self.consortium))
        cohort = dataclasses.replace(unsigned, signature=signature)
        actions: list[Action] = [Send(p, cohort) for p in self._ready if p != self.me]
        return actions + self._adopt(cohort)

    def _adopt(self, cohort: Cohort) -> list[Action]:
        self.cohort_message = cohort
        if cohort.coordinator != self.me:  # it recorded why; we record that they are out
            for peer in sorted(set(self.eligible) - set(cohort.members) - {self.me}):
                why = f"left out of attempt {cohort.attempt}'s cohort by its coordinator"
                self._exclude(peer, ReasonCode.DROPPED, why)
        if self.me not in cohort.members:
            self._fire(Trigger.LEFT_OUT)
            self.deadline = None
            return []
        self._fire(Trigger.COHORT)
        self.cohort = cohort.members
        self.takeover = cohort.takeover
        self._done = set()
        self.deadline = None
        return [StartRing(self.attempt, cohort.members)]

    def _next_attempt(self, now: float, accused: str | None, reason: ReasonCode) -> list[Action]:
        if self.phase in (Phase.RUNNING, Phase.REPORTED):
            self._fire(Trigger.ABORT)
        assert self.cohort is not None
        actions: list[Action] = []
        previous = self.attempt
        self.eligible = self.cohort
        self.accusations = {}
        if accused is not None and accused != self.me:
            self.accusations[accused] = reason
        self.attempt += 1
        self.takeover = 0
        self.cohort = None
        self._ready = {}
        if self.attempt >= self.max_attempts:
            self._fire(Trigger.EXHAUSTED)
            self.deadline = None
            return [CancelRing(previous)]
        actions.append(CancelRing(previous))
        actions += self._announce(now)
        return actions + self._replay_future(now)

    def _replay_future(self, now: float) -> list[Action]:
        pending, self._future = self._future, []
        actions: list[Action] = []
        for sender, message in pending:
            actions += self.receive(sender, message, now)
        return actions

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin the round: announce readiness (or start collecting, as coordinator)."""
        return self._announce(now) + self._replay_future(now)

    def receive(self, sender: str, message: Message, now: float) -> list[Action]:
        """Handle a control message from ``sender`` (authenticated by the transport).

        Misbehaviour is recorded in ``exclusions`` and the message ignored; nothing a peer
        sends can raise here.
        """
        if message.round != self.round:
            if message.round < self.round:
                self._exclude(
                    sender, ReasonCode.WRONG_ROUND, f"{type(message).__name__} for an old round"
                )
            return []
        attempt = getattr(message, "attempt", self.attempt)
        if isinstance(message, Ready) and (self.final or attempt < self.attempt):
            return self._show_cohort(sender)
        if self.final:
            return []
        if (
            isinstance(message, Cohort)
            and attempt > self.attempt
            and self.phase is Phase.ANNOUNCED
            and self.me not in message.members
        ):
            # A straggler hears of a later attempt it was not part of: it sits this round out.
            return self._on_cohort(sender, message, future=True)
        if attempt > self.attempt or (self.phase is Phase.IDLE and attempt == self.attempt):
            self._future.append((sender, message))
            return []
        if attempt < self.attempt:
            return []
        if sender not in self.eligible and not isinstance(message, Ready):
            self._exclude(sender, ReasonCode.UNKNOWN_PEER, "not eligible for this attempt")
            return []
        if isinstance(message, Ready):
            return self._on_ready(sender, message, now)
        if isinstance(message, Cohort):
            return self._on_cohort(sender, message)
        if isinstance(message, Done):
            return self._on_done(sender, now)
        if isinstance(message, Commit):
            return self._on_commit(sender)
        if isinstance(message, Abort):
            return self._on_abort(sender, message, now)
        self._exclude(sender, ReasonCode.UNEXPECTED_STAGE, f"{type(message).__name__} in control")
        return []

    def _on_ready(self, sender: str, message: Ready, now: float) -> list[Action]:
        if self._other_roster(sender, message):
            return []
        if sender not in self.eligible:
            # Not eligible (joined late, or left out of the previous attempt): if a cohort
            # exists, show it so the peer knows it sits this round out.
            if self.cohort_message is not None and self.cohort_message.coordinator == self.me:
                return self._show_cohort(sender)
            self._exclude(sender, ReasonCode.UNKNOWN_PEER, "Ready from a peer not eligible")
            return []
        target = coordinator_of(self.eligible, self.round, self.attempt, message.takeover)
        if target != self.me:
            self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, "Ready sent to a non-coordinator")
            return []
        if self.phase is Phase.ANNOUNCED and message.takeover > self.takeover:
            # Our turn: the others give up on the earlier coordinator when we would (one that
            # abdicated, a stale one, says so at once), so collect until then and a window more.
            self.takeover = message.takeover
            self._fire(Trigger.COORDINATE)
            self._ready = {self.me: self._own_ready()}
            began = max(now, self.deadline or now)
            self.deadline = began + self.timing.collect_window
            self.patient_until = began + self.timing.patience
        if self.phase is Phase.COLLECTING and message.takeover == self.takeover:
            self._ready[sender] = message
            return self._maybe_fix(now)
        return self._show_cohort(sender)

    def _show_cohort(self, sender: str) -> list[Action]:
        """Answer a late Ready with the cohort we fixed, so the sender knows it is out."""
        cohort = self.cohort_message
        if cohort is not None and cohort.coordinator == self.me and sender not in cohort.members:
            return [Send(sender, cohort)]
        return []

    def _on_cohort(self, sender: str, message: Cohort, *, future: bool = False) -> list[Action]:
        if self.phase not in (Phase.ANNOUNCED, Phase.COLLECTING):
            return []
        if self._other_roster(sender, message):
            return []
        expected = (
            sender
            if future
            else coordinator_of(self.eligible, self.round, self.attempt, message.takeover)
        )
        if message.coordinator != sender or sender != expected:
            self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, "cohort from a non-coordinator")
            return []
        if not future and not set(message.members) <= set(self.eligible):
            self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, "cohort lists ineligible peers")
            return []
        if not self._signer.verify(
            sender, message.signed_bytes(self.consortium), message.signature
        ):
            self._exclude(sender, ReasonCode.BAD_SIGNATURE, "cohort signature does not verify")
            return []
        if message.base != self.base:
            why = f"cohort on {message.base} while this peer is on {self.base}"
            if self.me in message.members:  # never summed onto a model this peer does not hold
                self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, why)
                return []
            self._exclude(self.me, ReasonCode.STALE_BASE, why)
        return self._adopt(message)

    def _on_done(self, sender: str, now: float) -> list[Action]:
        if self.cohort is None or sender not in self.cohort or self.cohort_message is None:
            return []
        if self.cohort_message.coordinator != self.me:
            self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, "Done sent to a non-coordinator")
            return []
        self._done.add(sender)
        return self._maybe_commit()

    def _maybe_commit(self) -> list[Action]:
        assert self.cohort is not None
        if self.phase is not Phase.REPORTED or set(self.cohort) != self._done:
            return []
        commit = Commit(self.round, self.attempt)
        self._fire(Trigger.COMMIT)
        self.deadline = None
        return [Send(p, commit) for p in self.cohort if p != self.me]

    def _on_commit(self, sender: str) -> list[Action]:
        if self.cohort_message is None or sender != self.cohort_message.coordinator:
            self._exclude(sender, ReasonCode.PROTOCOL_VIOLATION, "Commit from a non-coordinator")
            return []
        if self.phase is not Phase.REPORTED:
            self._exclude(sender, ReasonCode.UNEXPECTED_STAGE, "Commit before this peer was done")
            return []
        self._fire(Trigger.COMMIT)
        self.deadline = None
        return []

    def _on_abort(self, sender: str, message: Abort, now: float) -> list[Action]:
        if self.phase not in (Phase.RUNNING, Phase.REPORTED) or self.cohort is None:
            return []
        if sender not in self.cohort:
            return []
        return self._next_attempt(now, None, ReasonCode.DROPPED)

    def _ring_running(self, attempt: int) -> bool:
        # A ring outcome reported after its attempt was aborted or cancelled is stale.
        return attempt == self.attempt and self.phase is Phase.RUNNING

    def ring_done(self, attempt: int, now: float) -> list[Action]:
        """Our ring of ``attempt`` finished: report Done to the coordinator.

        The coordinator counts itself in; nothing happens if ``attempt`` is no longer the
        one running (its outcome came after an abort).
        """
        if not self._ring_running(attempt):
            return []
        self._fire(Trigger.RING_DONE)
        assert self.cohort_message is not None
        self.deadline = now + self.timing.commit_timeout
        coordinator = self.cohort_message.coordinator
        if coordinator == self.me:
            self._done.add(self.me)
            return self._maybe_commit()
        return [Send(coordinator, Done(self.round, self.attempt))]

    def ring_failed(
        self, attempt: int, accused: str | None, reason: ReasonCode, now: float
    ) -> list[Action]:
        """Our ring of ``attempt`` failed: tell the cohort, accuse ``accused``, start anew.

        Nothing happens if ``attempt`` is no longer the one running.
        """
        if not self._ring_running(attempt) or self.cohort is None:
            return []
        if accused is not None:
            self._exclude(accused, reason, f"accused after attempt {self.attempt}")
        abort = Abort(self.round, self.attempt, accused or self.me, reason.value)
        notices: list[Action] = [Send(p, abort) for p in self.cohort if p != self.me]
        return notices + self._next_attempt(now, accused, reason)

    def tick(self, now: float) -> list[Action]:
        """Act on a passed deadline: take over, fix the cohort, or give up on a commit."""
        if self.deadline is None or now < self.deadline:
            return []
        if self.phase is Phase.ANNOUNCED:
            self.takeover += 1
            return self._announce(now)
        if self.phase is Phase.COLLECTING:
            return self._maybe_fix(now)
        if self.phase is Phase.REPORTED:
            assert self.cohort is not None
            abort = Abort(self.round, self.attempt, self.me, ReasonCode.TIMEOUT.value)
            notices: list[Action] = [Send(p, abort) for p in self.cohort if p != self.me]
            return notices + self._next_attempt(now, None, ReasonCode.TIMEOUT)
        return []
