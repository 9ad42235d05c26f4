"""An in-process driver that runs a whole cohort of ``SecAggPeer`` objects to completion.

Theory of operation: pure and deterministic — no trio, no sockets, no clock. Messages are
encoded to bytes, queued FIFO and delivered one at a time (so every codec path and every
byte counted is real). When the queue is empty and some live peers still wait in a pre-sum
stage, the *earliest* such stage's deadline fires for the peers in it (as a synchronised
per-stage timeout would), so a fast peer never times out while a slow one is still about
to send. When every live peer waits for the sum, the vectors of those that reached
MASKED_INPUT go through the ``MaskedSum`` and each contributor gets (total, S).

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

import os
import tracemalloc
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from p2pfed.errors import ConfigError, ReasonCode, RemoteProtocolError
from p2pfed.secagg.messages import encode
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import Ed25519Signer, RandomBytes, UIntVector
from p2pfed.secagg.protocol import Outgoing, SecAggPeer
from p2pfed.secagg.state import PROGRESS, Stage
from p2pfed.secagg.summation import DirectMaskedSum, MaskedSum

T = TypeVar("T")


_ORDER = {stage: i for i, stage in enumerate(PROGRESS)}


def _reached(stage: Stage, target: Stage) -> bool:
    # One step can cross several stages (buffered messages complete them at once), so a
    # drop fires on reaching *or passing* its stage; an aborted peer is already out.
    return stage in _ORDER and _ORDER[stage] >= _ORDER[target]


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
    import hashlib

    return hashlib.sha256(b"identity:" + name.encode()).digest()


def make_identities(names: Collection[str]) -> tuple[dict[str, Ed25519Signer], dict[str, bytes]]:
    """Deterministic test identities: signer and public key per peer name."""
    signers = {n: Ed25519Signer(identity_seed(n)) for n in names}
    return signers, {n: s.public_key for n, s in signers.items()}


def seeded_random_bytes(seed: int, peer: str) -> RandomBytes:
    """A reproducible random-byte source (SHAKE-256 stream) for tests and benchmarks."""
    import hashlib

    state = {"counter": 0}

    def draw(size: int) -> bytes:
        state["counter"] += 1
        label = f"{seed}:{peer}:{state['counter']}".encode()
        return hashlib.shake_256(label).digest(size)

    return draw


def run_cohort(
    config: SecAggConfig,
    inputs: Mapping[str, UIntVector],
    *,
    drops: Mapping[str, Drop] | None = None,
    masked_sum: MaskedSum | None = None,
    random_seed: int | None = None,
    compute_results: Collection[str] | None = None,
    tamper: Callable[[str, str, bytes], bytes] | None = None,
    copy_inputs: bool = True,
    probe: str | None = None,
    views: Callable[[str, frozenset[str]], frozenset[str]] | None = None,
    late: Collection[str] = (),
) -> CohortRun:
    """Run every peer of ``inputs`` to completion; see the module docstring.

    ``random_seed`` makes the run reproducible (None: ``os.urandom``); ``tamper(sender,
    recipient, data)`` may rewrite any message in flight (to test rejections);
    ``copy_inputs=False`` lets peers mask the given arrays in place (saves memory);
    ``late`` peers get the sum only after everything the others sent was delivered (so the
    others' signatures and reveals reach them early and are buffered).
    """
    drops = dict(drops or {})
    names = sorted(inputs)
    if unknown := set(drops) - set(names):
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
    run = CohortRun(peers, {}, frozenset(), set(), dict.fromkeys(names, 0), dict.fromkeys(names, 0))
    queue: deque[tuple[str, str, bytes]] = deque()

    def call(name: str, step: Callable[[], T], external: int = 0) -> T:
        if name != probe:
            return step()
        held = peers[name].held_bytes()
        tracemalloc.start()
        try:
            out = step()
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        run.probe_peak_bytes = max(run.probe_peak_bytes, held + peak + external)
        return out

    def emit(sender: str, outgoing: list[Outgoing]) -> None:
        drop = drops.get(sender)
        if (
            drop is not None
            and sender not in run.dead
            and _reached(peers[sender].stage, drop.stage)
        ):
            run.dead.add(sender)
            outgoing = outgoing[: len(outgoing) // 2] if drop.partial else []
        elif sender in run.dead:
            outgoing = []
        cache: dict[int, bytes] = {}
        for item in outgoing:
            data = cache.setdefault(id(item.message), encode(item.message))
            if tamper is not None:
                data = tamper(sender, item.to, data)
            run.bytes_sent[sender] += len(data)
            queue.append((sender, item.to, data))

    def pump() -> None:
        while queue:
            sender, recipient, data = queue.popleft()
            if recipient in run.dead or peers[recipient].stage is Stage.ABORTED:
                continue
            try:
                out = call(recipient, partial(peers[recipient].receive_bytes, sender, data))
            except RemoteProtocolError as exc:
                run.refused.append((recipient, sender, exc.reason))
                continue
            emit(recipient, out)

    for n in names:
        own = 0 if copy_inputs else inputs[n].nbytes
        emit(n, call(n, partial(peers[n].start, inputs[n], copy=copy_inputs), own))
    pre_sum = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.RECEIPTS)
    order = {stage: i for i, stage in enumerate(pre_sum)}
    while True:
        pump()
        waiting = [n for n in names if n not in run.dead and peers[n].stage in pre_sum]
        if not waiting:
            break
        earliest = min(order[peers[n].stage] for n in waiting)
        for n in waiting:
            if order[peers[n].stage] == earliest and n not in run.dead:
                emit(n, call(n, peers[n].deadline))
    contributions = {
        n: peers[n].masked_vector
        for n in names
        if n not in run.dead and peers[n].stage is Stage.MASKED_INPUT
    }
    vectors = {n: v for n, v in contributions.items() if v is not None}
    for n, v in vectors.items():
        run.vector_bytes[n] = v.nbytes
    if vectors and views is not None:
        run.masked = {n: v.copy() for n, v in vectors.items()}
        run.survivors = frozenset(vectors)
        for n in sorted(run.survivors):
            told = views(n, run.survivors)
            total, _ = DirectMaskedSum().sum(
                {p: run.masked[p] for p in told if p in run.masked}, config.ring_bits
            )
            emit(n, peers[n].receive_sum(total, told))
        pump()
    elif vectors:
        total, survivors = (masked_sum or DirectMaskedSum()).sum(vectors, config.ring_bits)
        run.survivors = survivors
        del vectors, contributions
        for group in (sorted(survivors - set(late)), sorted(survivors & set(late))):
            for n in group:
                if n not in run.dead:
                    emit(
                        n,
                        call(n, partial(peers[n].receive_sum, total, survivors), total.nbytes),
                    )
            pump()
        del total
    for lagging in (Stage.CONSISTENCY, Stage.UNMASK):
        for n in names:
            if n not in run.dead and peers[n].stage is lagging:
                emit(n, peers[n].deadline())
        pump()
    wanted = set(names) if compute_results is None else set(compute_results)
    for n in names:
        if n in wanted and n not in run.dead and peers[n].stage is Stage.DONE:
            run.results[n] = call(n, peers[n].result)
    return run
