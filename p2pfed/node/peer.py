"""``Peer``: one institution's participant, composed of small parts.

Theory of operation: a round is train → privatise → aggregate → apply. The peer starts from
the consortium's shared weights after round r−1, trains locally (any ``Trainer``: its
``fit`` and ``evaluate`` run in a worker thread, so the protocols keep answering), hands
its update to the ``Aggregator`` (secure ring by default) as a ``PendingRelease``, which the
aggregator calls once the round's cohort is fixed: only then does the privacy layer
(``PrivateReleaser``: clip, record the spend durably in the ledger, then noise) release it,
so a round this peer cannot join costs no ε and nothing leaves before the ledger says yes.
It applies the mean update it gets back. After each committed round the cohort signs a
commit certificate for the new model (``CertificateService``), checkpointed atomically with
it, so a restarted peer resumes where it stopped; a member whose model a quorum did not sign
(it summed onto a stale base) does not adopt it and catches up instead. A model adopted before
its quorum of votes arrived is certified later: by the late votes, or by a member's
certificate for the same model (``reconcile``, ``linger``), and ``on_certified`` hears of it.

A peer that misses a round catches up from the other members (``CatchUp``, its other half).
Round numbers only go forward: a round that failed for everyone is not re-run under the same
number (its session and privacy record are spent).
``model_round``: the round the weights are from; ``next_round``: the next to attempt.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import trio
from numpy.typing import NDArray

from p2pfed.collectives.signing import CohortSigner
from p2pfed.errors import IntegrityError
from p2pfed.node.aggregators import Aggregate, Aggregator, Missed
from p2pfed.node.catchup import CatchUp
from p2pfed.node.certificates import CertificatePolicy, CommitCertificate
from p2pfed.node.certify import CertificateService
from p2pfed.node.files import CHECKPOINT
from p2pfed.node.liveness import PendingRelease, Waiting, slot_wait
from p2pfed.node.report import RoundReport, StageTimer
from p2pfed.node.sync import ModelSync, SyncRefusal
from p2pfed.privacy.release import PrivateReleaser
from p2pfed.training.state import (
    State,
    Trainer,
    flatten,
    layout_of,
    load_checkpoint,
    loads_verbatim,
    save_checkpoint,
    unflatten,
    update_of,
)
from p2pfed.transport.base import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")


class Peer(CatchUp):
    """A federated-learning participant; see the module docstring."""

    def __init__(
        self,
        *,
        transport: Transport,
        consortium: str,
        members: Sequence[str],
        trainer: Trainer,
        aggregator: Aggregator,
        releaser: PrivateReleaser | None,
        state_dir: str | Path,
        signer: CohortSigner,
        roster_version: int,
        certificate_floor: int = 2,
        certify_timeout: float = 2.0,
        vote_send_timeout: float | None = None,
        on_refusal: Callable[[SyncRefusal], None] | None = None,
        on_certified: Callable[[CommitCertificate], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        guard: Callable[[], None] | None = None,
        on_wait: Callable[[Waiting], None] | None = None,
        rng: random.Random | None = None,
        sync_session: str = "",
        train_in_thread: bool = True,
    ) -> None:
        """``signer``/``roster_version``/``certificate_floor``: commit certificates (above).

        ``on_refusal`` hears of every member whose model sync refused (once per round);
        ``on_certified`` of a certificate that came after its round (module docstring).
        ``certify_timeout``: the wait for the votes; ``vote_send_timeout``: for sending ours.
        ``guard`` runs before each round and before each release, and raises to stop the
        rounds (the daemon's raises once the roster has expired, so no further ε is spent).
        ``on_wait`` hears why this peer cannot progress (start-up, too few members, a missed
        round); ``rng`` jitters retries. ``sync_session``: model sync's id (``consortium``).
        ``train_in_thread=False`` trains on the trio thread: only for tests on trio's virtual
        clock, which jumps ahead (firing every timeout) while a worker thread computes.
        """
        self.transport = transport
        self.consortium = consortium
        self.members = tuple(sorted(members))
        self.trainer = trainer
        # The exchanged vector: the tensors the trainer's policy shares, in a fixed order.
        self.layout = layout_of(trainer.get_state(), trainer.policy)
        # Such a trainer reads views of our weights and holds exactly what it loaded: no
        # copy of the weights for it, and no flattening its model back (40 MB each).
        self.verbatim = loads_verbatim(trainer, self.layout)
        self.aggregator = aggregator
        self.releaser = releaser
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clock, self.wall, self.guard, self.on_wait = clock, wall, guard, on_wait
        self.rng = rng if rng is not None else random.Random()
        self.train_in_thread = train_in_thread
        self.unreached: tuple[str, ...] = ()
        self.model_round = -1
        self.next_round = 0
        self.weights = self._shared()
        self.bytes_sent = 0
        self.certificate: CommitCertificate | None = None
        self.on_certified = on_certified
        self._in_round = False  # the trainer holds local steps: no checkpoint now
        self.starts_at = 0.0  # the wall-clock slot boundary it waits for (0: none)
        self.policy = CertificatePolicy(
            consortium, roster_version, frozenset(members), signer, certificate_floor
        )
        # Only exact modes end a round with one model everyone can sign.
        self.certifier = (
            CertificateService(
                transport,
                self.policy,
                signer,
                timeout=certify_timeout,
                on_certified=self.certified_late,
                send_timeout=vote_send_timeout,
            )
            if aggregator.exact
            else None
        )
        # Secure gossip: a member's model is its own group's secret sum; serving it would
        # hand others one more sum per round (enough to solve for every update).
        self.sync = ModelSync(
            transport,
            sync_session or consortium,
            self._current,
            self.weights.size,
            serve_models=aggregator.exact or not aggregator.secure,
            policy=self.policy,
            on_refusal=on_refusal,
            progress=lambda: (self.next_round, self._in_round, self.starts_at),
        )
        self._resume()

    @property
    def checkpoint_path(self) -> Path:
        """Where the model after the last completed round is kept."""
        return self.state_dir / CHECKPOINT

    def _shared(self) -> NDArray[np.float32]:
        return flatten(self.layout, self.trainer.get_state())

    def _load(self, weights: NDArray[np.float32]) -> None:
        self.trainer.set_state(self._state(weights))

    def _state(self, weights: NDArray[np.float32]) -> State:
        """``weights`` as the trainer's shared tensors (views where it copies them in)."""
        return unflatten(self.layout, weights, copy=not self.verbatim)

    async def _offload(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` in a worker thread: the peer's protocols answer while it trains."""
        if not self.train_in_thread:
            return work(*args)
        return await trio.to_thread.run_sync(work, *args)

    def _current(self) -> tuple[int, NDArray[np.float32], CommitCertificate | None]:
        return self.model_round, self.weights, self.certificate

    def _resume(self) -> None:
        if self.checkpoint_path.exists():
            self.model_round, extra = load_checkpoint(self.trainer, self.checkpoint_path)
            self.weights = self._shared()
            self.bytes_sent = int(extra.get("bytes_sent", 0))
            self.next_round = max(self.model_round + 1, int(extra.get("next_round", 0)))
            self.certificate = self._stored_certificate(extra.get("certificate"))
            log.info("resumed from checkpoint after round %d", self.model_round)

    def _stored_certificate(self, data: object) -> CommitCertificate | None:
        """The checkpoint's certificate if it still covers the weights it was saved with."""
        if not isinstance(data, dict):
            return None
        try:
            certificate = CommitCertificate.from_dict(data)
        except ValueError as exc:
            log.warning("checkpoint certificate ignored: %s", exc)
            return None
        if (certificate.round, certificate.digest) != (self.model_round, self.sync.base().digest):
            return None
        return certificate

    def _save(self) -> None:
        extra: dict[str, object] = {"bytes_sent": self.bytes_sent, "next_round": self.next_round}
        if self.certificate is not None:
            extra["certificate"] = self.certificate.to_dict()
        if self.releaser is not None:  # anchors the ledger: a cut or older copy is then seen
            extra["ledger_head"] = self.releaser.ledger.head().to_dict()
        save_checkpoint(self.trainer, self.checkpoint_path, self.model_round, extra)

    def _adopt(
        self,
        round_: int,
        weights: NDArray[np.float32],
        certificate: CommitCertificate | None = None,
    ) -> None:
        self._load(weights)
        # The weights array is ours from here and never written into (DigestCache).
        self.weights = weights if self.verbatim else self._shared()
        self.certificate = certificate
        self.model_round = round_
        self.next_round = max(self.next_round, round_ + 1)
        self._save()

    def certified_late(self, certificate: CommitCertificate) -> None:
        """Keep ``certificate`` if it covers the model we hold and we have none for it yet."""
        if self.certificate is not None or (certificate.round, certificate.digest) != (
            self.model_round,
            self.sync.base().digest,
        ):
            return
        self.certificate = certificate
        if not self._in_round:  # else the round's end checkpoints it (adopted or missed)
            self._save()
        log.info("round %d's model is certified after all", certificate.round)
        if self.on_certified is not None:
            self.on_certified(certificate)

    def abandon(self) -> None:
        """After a cancelled ``run``: undo the local steps of the round cut short.

        Nothing is saved: as after a crash, the next ``Peer`` resumes from the checkpoint
        (the same round number, under a new roster version and so a new session).
        """
        self._load(self.weights)

    def renumber(self) -> None:
        """A new cohort (a new roster version, so a new session) starts after our model's round.

        Its members may have left the old cohort at different round numbers (a member that
        missed rounds alone ran ahead); starting each at its model's next round puts them back
        in step, and ``catch_up`` then brings any member behind to the newest model.
        """
        self.next_round = self.model_round + 1

    @property
    def epsilon(self) -> float | None:
        """Privacy spent so far (None when DP is off)."""
        return None if self.releaser is None else self.releaser.ledger.spent_epsilon()

    async def run_round(self) -> RoundReport:
        """Train, privatise, aggregate and apply round ``next_round``.

        Raises whatever ``guard`` raises (asked at the start and right before the release),
        before any privacy budget is reserved.
        """
        if self.guard is not None:
            self.guard()
        await self.reconcile()
        self._in_round, self.starts_at = True, 0.0
        try:
            return await self._round()
        finally:
            self._in_round = False

    async def _round(self) -> RoundReport:
        round_ = self.next_round
        self.next_round += 1
        if self.certifier is not None:  # votes for this round may arrive before we commit
            self.certifier.low = max(self.certifier.low, round_)
        timer = StageTimer(self.clock)
        result = await self._offload(self.trainer.fit, self._state(self.weights), round_)
        trained = timer.mark("train")
        update, result = update_of(self.layout, result, self.weights)  # DataError if not finite
        # Released (ε charged) only once the aggregator has a cohort for it: a round that
        # cannot form one costs nothing, and nothing leaves before the ledger says yes.
        pending = PendingRelease(
            self.releaser, self.guard, round_, update, result.sample_rate, result.steps, trained
        )
        try:
            base = self.sync.base()  # only members on this model sum with us (stale: caught up)
            outcome = await self.aggregator.aggregate(round_, pending, self.weights, base)
        except BaseException:
            pending.raise_own_error()  # as itself, not inside the aggregator's task group
            raise
        if isinstance(outcome, Aggregate) and outcome.stages_s:
            timer.mark_parts(outcome.stages_s, "decode")
        else:
            timer.mark("aggregate")
        if isinstance(outcome, Aggregate):
            outcome = await self._commit(round_, outcome)
        if isinstance(outcome, Missed):
            self._load(self.weights)  # undo local steps: the round did not happen
            self._save()
        committed = isinstance(outcome, Aggregate)
        timer.mark("commit")
        # The trainer holds our weights already (adopted, or restored after a missed round).
        shared = {} if self.verbatim else unflatten(self.layout, self.weights)
        metrics = await self._offload(self.trainer.evaluate, shared)
        timer.mark("evaluate")
        return RoundReport(
            round=round_,
            committed=committed,
            contributors=len(outcome.contributors) if isinstance(outcome, Aggregate) else 0,
            train_loss=result.metrics.get("loss", math.nan),
            test_accuracy=metrics.get("accuracy", math.nan),
            test_loss=metrics.get("loss", math.nan),
            epsilon=self.epsilon,
            bytes_sent=outcome.bytes_sent if isinstance(outcome, Aggregate) else 0,
            duration_s=timer.total(),
            model_digest=self.sync.digest(self.model_round, self.weights).hex(),
            reason=outcome.reason if isinstance(outcome, Missed) else "",
            exclusions=tuple(outcome.exclusions),
            cohort=tuple(sorted(outcome.contributors)) if isinstance(outcome, Aggregate) else (),
            sample_rate=result.sample_rate,
            steps=result.steps,
            certificate=self.certificate if committed else None,
            stages_s=tuple(timer.stages),
        )

    async def _commit(self, round_: int, outcome: Aggregate) -> Aggregate | Missed:
        """Adopt the round's model (certified unless gossip or below quorum), or Missed."""
        self.bytes_sent += outcome.bytes_sent
        weights = self.weights + outcome.mean
        certificate = None
        if self.certifier is not None:
            # Hashed once: the report and the next round's base find it in the cache.
            digest = self.sync.digest(round_, weights)
            try:
                certificate = await self.certifier.certify_round(
                    round_, digest, outcome.contributors
                )
            except IntegrityError as exc:  # a stale base: the catch-up fetches theirs
                return Missed(round_, str(exc), outcome.exclusions)
        self._adopt(round_, weights, certificate)
        return outcome

    async def run(
        self,
        rounds: int,
        on_report: Callable[[RoundReport], None] | None = None,
        startup_timeout: float = 30.0,
        miss_timeout: float | None = None,
        min_peers: int = 2,
    ) -> list[RoundReport]:
        """Run rounds numbered below ``rounds``; a missed round triggers a catch-up.

        First waits (up to ``startup_timeout``, reported to ``on_wait``) for every member to
        answer, so a consortium started together does not spend its first round on peers
        still booting, then for as long as it takes until at least ``min_peers`` members
        (this one included) are reachable. After a missed round, waits for a member to
        complete it and adopts that model; if none does, the round failed for everyone and
        the next number starts from the same weights at the next slot boundary of a shared
        clock (``slot_wait``), so members that missed it at different times start the next
        round together. A member (re)starting while the others retry so joins them at once
        (``join_in_step``), instead of spending a round of its own to learn their number.
        """
        miss_timeout = startup_timeout if miss_timeout is None else miss_timeout
        reports = []
        up = await self.wait_for_members(len(self.members), startup_timeout, "start-up")
        while up < min_peers:
            self._waiting(f"{up} of {len(self.members)} members reachable, {min_peers} needed", 0)
            up = await self.wait_for_members(min_peers, startup_timeout)
        log.info("%d of %d members reachable; starting", up, len(self.members))
        await self.catch_up()
        await self.join_in_step(miss_timeout, rounds)
        while self.next_round < rounds:
            report = await self.run_round()
            reports.append(report)
            if on_report is not None:
                on_report(report)
            if not report.committed:
                await self._after_miss(report, miss_timeout)
        self.starts_at = 0.0  # no more rounds: nobody should wait for us at a boundary
        await self.linger(self.model_round, startup_timeout)
        return reports

    async def _after_miss(self, report: RoundReport, slot: float) -> None:
        """After a missed round: adopt its model, or take the others' number at the next slot."""
        await self.wait_for_members(len(self.members), 2.0)  # who is not answering
        wait = slot_wait(self.wall(), slot, report.duration_s)
        self.starts_at = self.wall() + wait  # told in our status (join_in_step)
        self._waiting(f"round {report.round} missed ({report.reason})", wait)
        guard = min(1.0, wait / 4)
        if await self.catch_up(report.round, wait - guard):
            return
        # Where the others are, as known a little before the boundary: a member starting
        # our next number at the boundary with us (one joining) is not ahead of us.
        seen = self.aggregator.newest_round_seen()
        await trio.sleep(guard)
        self._step_to_the_others(seen)
