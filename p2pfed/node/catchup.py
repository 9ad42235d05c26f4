"""``CatchUp``: how a ``Peer`` finds and follows the other members.

Theory of operation: a peer that misses a round (it crashed, came late, or was left out)
asks the other members for the newest certified model (``ModelSync``: never one without a
valid certificate) and joins the next round from there; in secure gossip, where models are
not served, it rejoins the others' round with its own model. Before each round it
reconciles with the members at its round (a divergence lasts at most one round), at
start-up it waits for them, and at the end it lingers, serving the final model to the late.
A member whose model's votes never reached a quorum in time takes another member's valid
certificate for exactly that model when it reconciles or lingers; the final linger lasts until
every member reached holds one (or the timeout), so none ends with an uncertified model that
the others could have certified.
All of it reads the peer's model state and moves it only through ``_adopt`` and ``_save``;
this half of ``Peer`` is apart from the round itself (``peer.py``) only to keep both small.
"""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import trio
from numpy.typing import NDArray

from p2pfed.node.aggregators import Aggregator
from p2pfed.node.certificates import CertificatePolicy, CommitCertificate
from p2pfed.node.liveness import Backoff, Waiting
from p2pfed.node.sync import Answers, ModelSync, weights_digest
from p2pfed.transport.base import Transport

log = logging.getLogger(__name__)


class CatchUp(ABC):
    """The member-following half of ``Peer``: waiting, catching up, reconciling, lingering."""

    # Set by ``Peer.__init__``.
    transport: Transport
    members: tuple[str, ...]
    aggregator: Aggregator
    sync: ModelSync
    policy: CertificatePolicy
    rng: random.Random
    on_wait: Callable[[Waiting], None] | None
    unreached: tuple[str, ...]
    model_round: int
    next_round: int
    wall: Callable[[], float]
    weights: NDArray[np.float32]
    certificate: CommitCertificate | None

    @abstractmethod
    def certified_late(self, certificate: CommitCertificate) -> None:
        """Keep ``certificate`` if it covers the model held and none is held yet."""

    @abstractmethod
    def _save(self) -> None:
        """Checkpoint the model and the round numbers."""

    @abstractmethod
    def _adopt(
        self,
        round_: int,
        weights: NDArray[np.float32],
        certificate: CommitCertificate | None = None,
    ) -> None:
        """Make ``weights`` this peer's model of round ``round_`` and checkpoint it."""

    @property
    def me(self) -> str:
        """This peer's ID."""
        return self.transport.local_peer

    async def catch_up(self, round_: int | None = None, timeout: float = 0.0) -> bool:
        """Adopt a newer model from the other members; True if one was adopted.

        In secure gossip, where models are not served, True once the others' round is joined
        with this peer's own model (``_rejoin``).

        With ``round_``, wait up to ``timeout`` for some member to complete that round first:
        a peer that missed a round must not race ahead of the others into the next one
        (it would wait there for messages they have not sent yet, and miss again).
        """
        deadline = trio.current_time() + timeout
        target = self.model_round if round_ is None else round_ - 1
        if not self.aggregator.exact:
            # Gossip members hold different models: none carries a certificate to adopt.
            return await self._rejoin(target, deadline)
        backoff = self._backoff()
        while True:
            fetched = await self.sync.best_model(self.others, newer_than=self.model_round)
            if fetched is not None and fetched.round > target:
                self._adopt(fetched.round, fetched.weights, fetched.certificate)
                log.info("caught up to round %d from %s", fetched.round, fetched.peer)
                return True
            if fetched is not None:  # newer than ours, not yet enough
                self._adopt(fetched.round, fetched.weights, fetched.certificate)
            if trio.current_time() >= deadline:
                return False
            await self._retry(backoff, deadline)

    async def _rejoin(self, target: int, deadline: float) -> bool:
        """Secure gossip: keep our model (all weight on ourselves) and join the others' round.

        Models are not served there, so a peer that missed rounds learns from the members'
        statuses only how far they got, and continues from its own model at the next round.
        """
        backoff = self._backoff()
        while True:
            statuses = await self.sync.probe_all(self.others, self.sync.timeout)
            # Nothing is certified here, so no single claim is believed: the floor-th highest
            # round claimed, so one member (a stolen key) cannot push everyone's round ahead.
            claims = sorted((s.round for s in statuses.values()), reverse=True)
            newest = claims[min(self.policy.floor, len(claims)) - 1] if claims else -1
            if newest > target:
                self.next_round = max(self.next_round, newest + 1)
                self._save()
                log.info("rejoining at round %d with our own model", self.next_round)
                return True
            if trio.current_time() >= deadline:
                return False
            await self._retry(backoff, deadline)

    @property
    def others(self) -> list[str]:
        """The other members."""
        return [m for m in self.members if m != self.me]

    def _backoff(self) -> Backoff:
        return Backoff(0.2, 5.0, self.rng)

    async def _retry(self, backoff: Backoff, deadline: float, why: str = "") -> None:
        """Sleep the backoff's next delay, but not past ``deadline`` (``why``: to on_wait)."""
        delay = max(0.0, min(backoff.next(), deadline - trio.current_time()))
        if why:
            self._waiting(why, delay)
        await trio.sleep(delay)

    async def wait_for_members(self, needed: int, timeout: float, report: str = "") -> int:
        """Wait until ``needed`` members (this one included) answer, or ``timeout``; count.

        The members that did not answer are left in ``unreached`` (and, with ``report``,
        told to ``on_wait`` after each probe, so a long wait is visible while it lasts).
        """
        reachable: set[str] = set()
        backoff = self._backoff()
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            while len(reachable) + 1 < needed:
                pending = [m for m in self.others if m not in reachable]
                reachable |= set(await self.sync.probe_all(pending, 2.0))
                self.unreached = tuple(m for m in self.others if m not in reachable)
                if len(reachable) + 1 < needed:
                    why = f"{report}: {len(reachable) + 1} of {needed} answer" if report else ""
                    await self._retry(backoff, deadline, why)
        self.unreached = tuple(m for m in self.others if m not in reachable)
        return len(reachable) + 1

    async def join_in_step(self, slot: float, rounds: int) -> None:
        """At start-up, join the others' round if they are retrying missed rounds.

        Members that missed rounds since their last model start each attempt at a boundary
        of ``slot`` (``slot_wait``) with a new number; a member starting then takes that
        number and boundary from their status, where a lone round of its own would miss and
        cost a slot. While they are inside an attempt it asks again until they wait for the
        next (at most two slots). It follows the lower median of the answers, so members
        fewer than half of those answering cannot send it past every honest one's number (a
        stolen key claiming round 10^9 would otherwise end this member's run), nor past the
        last of ``rounds``, nor hold it more than two slots of polling and two of waiting.
        """
        deadline = trio.current_time() + 2 * slot
        while True:
            answers = sorted(
                (await self.sync.probe_all(self.others, 2.0)).values(),
                key=lambda s: s.starts_next,
            )
            median = answers[(len(answers) - 1) // 2] if answers else None
            if median is None or not median.retrying:
                return
            if not median.running:
                if median.starts_at > 0:
                    break
                return  # starting a round at no boundary (its own start-up): nothing to join
            if trio.current_time() >= deadline:
                return
            await trio.sleep(min(1.0, slot / 10))
        target = min(median.starts_next, rounds - 1)
        if target <= self.next_round:
            return
        wait = min(max(0.0, median.starts_at - self.wall()), 2 * slot)
        log.info(
            "round %d: the others retry round %d in %.1f s; joining them",
            self.next_round,
            target,
            wait,
        )
        self.next_round = target
        self._save()
        self._waiting(f"joining the others' round {target} at their next slot", wait)
        await trio.sleep(wait)

    def _step_to_the_others(self, seen: int) -> None:
        """After a round nobody completed, take the round after the newest the others tried.

        Members that missed at different times can each stay one number apart forever (a
        secure round needs one number); messages from members for rounds ahead of ours
        (at most ``max_ahead``, members only) show where they are.
        """
        ahead = seen + 1
        if ahead > self.next_round:
            log.info("round %d: the others are at round %d; joining", self.next_round, ahead - 1)
            self.next_round = ahead
            self._save()

    def _waiting(self, reason: str, retry_in: float) -> None:
        log.debug("round %d: waiting (%s)", self.next_round, reason)
        if self.on_wait is not None:
            self.on_wait(Waiting(self.next_round, reason, self.unreached, retry_in))

    async def linger(self, final_round: int, timeout: float) -> None:
        """Keep serving the final model until every reachable member has it, or ``timeout``.

        A member that is restarting or came late fetches the final model from us; members
        that cannot be reached are not waited for.
        """
        with trio.move_on_after(timeout):
            while True:
                answers = await self.sync.probe(self.others, 2.0)
                self._certificate_from(answers)
                if all(s.round >= final_round for s, _ in answers.values()) and self._certified(
                    answers, final_round
                ):
                    await self.reconcile()  # the last round gets the same check as any other
                    return
                await trio.sleep(0.5)

    def _certified(self, answers: Answers, final_round: int) -> bool:
        """Exact modes: we and every member at the final round hold its certificate."""
        if not self.aggregator.exact or final_round < 0:
            return True  # gossip certifies nothing
        held = [c for s, c in answers.values() if s.round == final_round]
        return self.certificate is not None and None not in held

    def _certificate_from(self, answers: Answers) -> None:
        """Take a member's valid certificate for the model we hold if we have none."""
        if self.certificate is None and self.model_round >= 0 and self.aggregator.exact:
            digest = self.sync.digest(self.model_round, self.weights)
            found = self.sync.certificate_of(answers, self.model_round, digest)
            if found is not None:
                self.certified_late(found)

    async def reconcile(self) -> bool:
        """Adopt the majority's model if the members at our round hold a different one.

        Round agreement has no consensus under timeouts: a member that missed the final
        ``Commit`` may retry and commit a different cohort's sum for the same round. The
        members at our round vote with their weights digest; if most of them (counting us)
        hold another model, we fetch it, so a divergence lasts at most one round.
        """
        if self.model_round < 0 or not self.aggregator.exact:
            return False  # gossip: members hold different models by design
        mine = self.sync.digest(self.model_round, self.weights)  # hashed once per version
        votes: dict[bytes, list[str]] = {mine: [self.me]}
        answers = await self.sync.probe(self.others, 2.0)
        self._certificate_from(answers)
        for peer, (status, _) in answers.items():
            if status.round == self.model_round:
                votes.setdefault(status.digest, []).append(peer)
        best = max(votes, key=lambda d: (len(votes[d]), d == mine))
        if best == mine:
            return False
        for peer in votes[best]:
            fetched = await self.sync.fetch(peer, self.model_round)
            if (
                fetched is not None
                and fetched.round == self.model_round
                and weights_digest(fetched.weights) == best
            ):
                log.warning(
                    "round %d: our model differs from %d of %d members; adopting theirs",
                    self.model_round,
                    len(votes[best]),
                    sum(map(len, votes.values())),
                )
                self._adopt(fetched.round, fetched.weights, fetched.certificate)
                return True
        return False
