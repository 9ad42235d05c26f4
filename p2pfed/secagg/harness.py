"""An in-process driver that runs a whole cohort of ``SecAggPeer`` objects to completion.

Theory of operation: pure and deterministic — no trio, no sockets, no clock. Messages are
encoded to bytes, queued FIFO and delivered one at a time (so every codec path and every
byte counted is real). When the queue is empty and some live peers still wait in a pre-sum
stage, the *earliest* such stage's deadline fires for the peers in it (as a synchronised
per-stage timeout would), so a fast peer never times out while a slow one is still about
to send. When every live peer waits for the sum, the vectors of those that reached
MASKED_INPUT go through the ``MaskedSum`` and each contributor gets (total, S). With
``stream_sum`` each masked vector is instead added to one running total the moment it is
made, and every contributor shares that total (``receive_sum(..., shared=True)``), so a
big cohort in one process holds a few vectors, not n.

Faults are injected with ``drops``: ``{peer: Drop(stage, partial)}`` kills a peer the moment
it reaches (or passes) ``stage``: the messages of the step that took it there are not sent (or, with
``partial=True``, sent only to the first half of their recipients, like a crash mid-
broadcast); a peer dropped at MASKED_INPUT commits but never contributes its vector, one
dropped at UNMASK contributes its vector but reveals nothing (or half).

``views`` plays a lying summation (whoever forms the sum in a deployment): it maps each
contributor and the true contributor set to the set that peer is told, and that peer gets the
total over its view; the masked vectors are then kept in ``CohortRun.masked`` (the liar sees
them). ``compute_results`` chooses which survivors run the (costly, identical) final unmasking;
by default all of them. ``probe`` names one peer whose memory is measured: around each of
its calls, the vectors it holds plus the peak of what ``tracemalloc`` sees it allocate
(plus its own input and the incoming sum, which it holds in a real deployment).
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np

from p2pfed.errors import ConfigError, ReasonCode, RemoteProtocolError
from p2pfed.identity.keys import Identity
from p2pfed.secagg.messages import encode
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import RandomBytes, UIntVector
from p2pfed.secagg.protocol import Input, Outgoing, SecAggPeer
from p2pfed.secagg.state import POST_SUM, PRE_SUM, PROGRESS, Stage
from p2pfed.secagg.summation import DirectMaskedSum, MaskedSum

T = TypeVar("T")
Views = Callable[[str, frozenset[str]], frozenset[str]]
Tamper = Callable[[str, str, bytes], bytes]


def _reached(stage: Stage, target: Stage) -> bool:
    # One step can cross several stages (buffered messages complete them at once), so a
    # drop fires on reaching *or passing* its stage; an aborted peer is already out.
    return stage in PROGRESS and PROGRESS.index(stage) >= PROGRESS.index(target)


@dataclass(frozen=True, slots=True)
class Drop:
    """Kill a peer when it enters ``stage`` (after half its messages if ``partial``)."""

    stage: Stage
    partial: bool = False


@dataclass(slots=True)
class CohortRun:
    """What happened in one harness run."""

    peers: dict[str, SecAggPeer]
    results: dict[str, UIntVector]
    survivors: frozenset[str]
    dead: set[str]
    bytes_sent: dict[str, int]
    vector_bytes: dict[str, int]
    refused: list[tuple[str, str, ReasonCode]] = field(default_factory=list)
    probe_peak_bytes: int = 0
    masked: dict[str, UIntVector] = field(default_factory=dict)

    @property
    def aborted(self) -> dict[str, tuple[ReasonCode, str]]:
        """Live peers that aborted: peer → (reason code, reason)."""
        return {
            p: (peer.abort_code, peer.abort_reason or "")
            for p, peer in self.peers.items()
            if p not in self.dead and peer.stage is Stage.ABORTED and peer.abort_code is not None
        }


def identity_seed(name: str) -> bytes:
    """The deterministic Ed25519 seed of test peer ``name`` (as ``make_identities`` uses)."""
    return hashlib.sha256(b"identity:" + name.encode()).digest()


def make_identities(names: Collection[str]) -> tuple[dict[str, Identity], dict[str, bytes]]:
    """Deterministic test identities: signer and public key per peer name."""
    signers = {n: Identity.from_seed(identity_seed(n)) for n in names}
    return signers, {n: s.public_key for n, s in signers.items()}


def seeded_random_bytes(seed: int, peer: str) -> RandomBytes:
    """A reproducible random-byte source (SHAKE-256 stream) for tests and benchmarks."""
    state = {"counter": 0}

    def draw(size: int) -> bytes:
        state["counter"] += 1
        label = f"{seed}:{peer}:{state['counter']}".encode()
        return hashlib.shake_256(label).digest(size)

    return draw


class _Cohort:
    """One harness run's peers, message queue and fault injection (see ``run_cohort``)."""

    def __init__(
        self,
        peers: dict[str, SecAggPeer],
        drops: Mapping[str, Drop],
        tamper: Tamper | None,
        probe: str | None,
        stream_sum: bool = False,
    ) -> None:
        self.peers = peers
        self.stream_sum = stream_sum
        self.streamed: list[str] = []
        self.stream_total: UIntVector | None = None
        self.names = sorted(peers)
        self.drops = drops
        self.tamper = tamper
        self.probe = probe
        self.run = CohortRun(
            peers, {}, frozenset(), set(), dict.fromkeys(peers, 0), dict.fromkeys(peers, 0)
        )
        self.queue: deque[tuple[str, str, bytes]] = deque()

    def live(self, stages: Collection[Stage]) -> list[str]:
        """The peers not dead whose stage is one of ``stages``, in name order."""
        return [n for n in self.names if n not in self.run.dead and self.peers[n].stage in stages]

    def call(self, name: str, step: Callable[[], T], external: int = 0) -> T:
        """Run one of ``name``'s steps, measuring its memory if it is the probe."""
        if name != self.probe:
            return step()
        held = self.peers[name].held_bytes()
        tracemalloc.start()
        try:
            out = step()
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        self.run.probe_peak_bytes = max(self.run.probe_peak_bytes, held + peak + external)
        return out

    def emit(self, sender: str, outgoing: list[Outgoing]) -> None:
        """Queue what ``sender`` sends, unless a drop kills it now (or killed it before)."""
        drop, run = self.drops.get(sender), self.run
        if (
            drop is not None
            and sender not in run.dead
            and _reached(self.peers[sender].stage, drop.stage)
        ):
            run.dead.add(sender)
            outgoing = outgoing[: len(outgoing) // 2] if drop.partial else []
        elif sender in run.dead:
            outgoing = []
        if self.stream_sum and sender not in run.dead:
            self.absorb(sender)
        cache: dict[int, bytes] = {}
        for item in outgoing:
            data = cache.get(id(item.message))
            if data is None:
                data = cache[id(item.message)] = encode(item.message)
            if self.tamper is not None:
                data = self.tamper(sender, item.to, data)
            run.bytes_sent[sender] += len(data)
            self.queue.append((sender, item.to, data))

    def absorb(self, name: str) -> None:
        """Add ``name``'s masked vector to the running sum as soon as it exists, and drop it.

        So a cohort in one process holds one running total, not n masked vectors.
        """
        peer = self.peers[name]
        vector = peer.masked_vector
        if peer.stage is not Stage.MASKED_INPUT or vector is None:
            return
        if self.stream_total is None:
            self.stream_total = vector  # the peer gave it up: it becomes the accumulator
        else:
            np.add(self.stream_total, vector, out=self.stream_total)
        peer.masked_vector = None
        self.streamed.append(name)
        self.run.vector_bytes[name] = vector.nbytes

    def pump(self) -> None:
        """Deliver every queued message, FIFO, including what the deliveries send."""
        while self.queue:
            sender, recipient, data = self.queue.popleft()
            peer = self.peers[recipient]
            if recipient in self.run.dead or peer.stage is Stage.ABORTED:
                continue
            try:
                out = self.call(recipient, partial(peer.receive_bytes, sender, data))
            except RemoteProtocolError as exc:
                self.run.refused.append((recipient, sender, exc.reason))
                continue
            self.emit(recipient, out)

    def run_pre_sum(self) -> None:
        """Deliver until quiet, then fire the earliest waiting stage's deadline; repeat."""
        while True:
            self.pump()
            waiting = self.live(PRE_SUM)
            if not waiting:
                return
            earliest = min(PRE_SUM.index(self.peers[n].stage) for n in waiting)
            for n in waiting:
                if PRE_SUM.index(self.peers[n].stage) == earliest and n not in self.run.dead:
                    self.emit(n, self.call(n, self.peers[n].deadline))

    def masked_vectors(self) -> dict[str, UIntVector]:
        """The masked vectors of the live peers that reached MASKED_INPUT."""
        vectors = {n: self.peers[n].masked_vector for n in self.live((Stage.MASKED_INPUT,))}
        out = {n: v for n, v in vectors.items() if v is not None}
        for n, v in out.items():
            self.run.vector_bytes[n] = v.nbytes
        return out

    def lying_sum(self, vectors: dict[str, UIntVector], views: Views, ring_bits: int) -> None:
        """Each contributor is told the set ``views`` gives it and the total over that set."""
        run = self.run
        run.masked = {n: v.copy() for n, v in vectors.items()}
        run.survivors = frozenset(vectors)
        for n in sorted(run.survivors):
            told = views(n, run.survivors)
            total, _ = DirectMaskedSum().sum(
                {p: run.masked[p] for p in told if p in run.masked}, ring_bits
            )
            self.emit(n, self.peers[n].receive_sum(total, told))
        self.pump()

    def honest_sum(
        self,
        vectors: dict[str, UIntVector],
        masked_sum: MaskedSum,
        ring_bits: int,
        late: Collection[str],
    ) -> None:
        """Every contributor gets the true (total, S); the ``late`` ones after the others."""
        total, survivors = masked_sum.sum(vectors, ring_bits)
        vectors.clear()  # no reference here to a buffer a peer reuses for the total
        self.give_sum(total, survivors, late)

    def give_sum(
        self,
        total: UIntVector,
        survivors: frozenset[str],
        late: Collection[str],
        shared: bool = False,
    ) -> None:
        """Every contributor gets (total, S); the ``late`` ones after the others."""
        self.run.survivors = survivors
        for group in (sorted(survivors - set(late)), sorted(survivors & set(late))):
            for n in group:
                if n not in self.run.dead and self.peers[n].stage is Stage.MASKED_INPUT:
                    step = partial(self.peers[n].receive_sum, total, survivors, shared=shared)
                    self.emit(n, self.call(n, step, total.nbytes))
            self.pump()

    def finish(self, compute_results: Collection[str] | None) -> None:
        """Fire the post-sum deadlines in order, then unmask where ``compute_results`` asks."""
        for lagging in POST_SUM:
            for n in self.live((lagging,)):
                self.emit(n, self.peers[n].deadline())
            self.pump()
        wanted = set(self.names) if compute_results is None else set(compute_results)
        for n in self.live((Stage.DONE,)):
            if n in wanted:
                self.run.results[n] = self.call(n, self.peers[n].result)


def run_cohort(
    config: SecAggConfig,
    inputs: Mapping[str, Input],
    *,
    drops: Mapping[str, Drop] | None = None,
    masked_sum: MaskedSum | None = None,
    random_seed: int | None = None,
    compute_results: Collection[str] | None = None,
    tamper: Tamper | None = None,
    copy_inputs: bool = True,
    probe: str | None = None,
    views: Views | None = None,
    late: Collection[str] = (),
    stream_sum: bool = False,
) -> CohortRun:
    """Run every peer of ``inputs`` to completion; see the module docstring.

    ``random_seed`` makes the run reproducible (None: ``os.urandom``); ``tamper(sender,
    recipient, data)`` may rewrite any message in flight (to test rejections);
    ``copy_inputs=False`` lets peers mask the given arrays in place (saves memory);
    ``late`` peers get the sum only after everything the others sent was delivered (so the
    others' signatures and reveals reach them early and are buffered). ``stream_sum``
    adds each masked vector to one running total the moment it is made and shares that
    total with every contributor (for big cohorts in one process: one vector held, not n);
    inputs may then be callables that make each input only when it is masked.
    """
    if stream_sum and (views is not None or masked_sum is not None):
        raise ConfigError("stream_sum forms the sum itself: it takes neither views nor masked_sum")
    names = sorted(inputs)
    if unknown := set(drops or {}) - set(names):
        raise ConfigError(f"drops name peers outside the cohort: {sorted(unknown)}")
    signers, identities = make_identities(names)
    peers = {
        n: SecAggPeer(
            config,
            n,
            signers[n],
            identities,
            random_bytes=os.urandom if random_seed is None else seeded_random_bytes(random_seed, n),
        )
        for n in names
    }
    cohort = _Cohort(peers, dict(drops or {}), tamper, probe, stream_sum)
    for n in names:
        given = inputs[n]
        own = 0 if copy_inputs or callable(given) else given.nbytes
        step = partial(peers[n].start, given, copy=copy_inputs)
        cohort.emit(n, cohort.call(n, step, own))
    cohort.run_pre_sum()
    if cohort.stream_total is not None:
        streamed = frozenset(cohort.streamed)
        cohort.give_sum(cohort.stream_total, streamed, late, shared=True)
        cohort.stream_total = None
        cohort.finish(compute_results)
        return cohort.run
    vectors = cohort.masked_vectors()
    if vectors and views is not None:
        cohort.lying_sum(vectors, views, config.ring_bits)
    elif vectors:
        cohort.honest_sum(vectors, masked_sum or DirectMaskedSum(), config.ring_bits, late)
    cohort.finish(compute_results)
    return cohort.run
