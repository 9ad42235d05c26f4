"""The trio driver of gossip averaging: synchronous rounds and asynchronous push-pull.

Theory of operation: node k of the topology is peer ``peers[k]``. ``sync_round(t, x)`` sends
x (as ``GossipValue`` slices, one stream per out-neighbour) to every peer that mixes this
one in, collects in-neighbours' vectors from the round's mailbox until all are heard or
the deadline passes, and mixes with ``GossipRound``. Vectors for a round this peer has left
are rejected with ``WRONG_ROUND``; early ones (a quicker neighbour) wait in the mailbox.

``push_pull(t)`` exchanges with one random neighbour of the time-t graph (a neighbour over
a relayed link less often: ``gossip.partner_weights``): the served side
answers with its current vector and moves halfway; both update by deltas
(``gossip.push_pull_delta``), so concurrent exchanges conserve the sum. The value used by
the served side is ``self.value``, set with ``set_value``; a peer not in asynchronous mode
refuses exchanges. The random generator is injected.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from p2pfed.collectives.codec import MessageStream
from p2pfed.collectives.faults import Exclusion, RefusalSummary
from p2pfed.collectives.gossip import (
    GossipRound,
    MixingTopology,
    VectorAssembly,
    exchanged_vector,
    mixing_row_and_targets,
    partner_weights,
    peer_weights,
    push_pull_delta,
)
from p2pfed.collectives.messages import GossipValue, WordType
from p2pfed.collectives.robust import ROBUST_RULES
from p2pfed.errors import (
    BrokenError,
    ClosedError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire.exchange import finish_sending

log = logging.getLogger(__name__)

GOSSIP_SYNC_PROTOCOL = "/p2pfed/gossip/sync/1.0.0"
PUSH_PULL_PROTOCOL = "/p2pfed/gossip/push-pull/1.0.0"
_MAX_AHEAD = 4


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Slice size, the synchronous round deadline and the per-read timeout, in seconds.

    ``robust`` is the mixing rule of synchronous rounds: ``off`` (plain gossip) or
    ``clipped-gossip`` (``collectives.robust``: self-centred clipping, its radius allowing
    for ``byzantine_neighbours`` Byzantine in-neighbours).
    """

    chunk_bytes: int = 256 * 1024
    deadline: float = 5.0
    timeout: float = 5.0
    max_words: int = 1 << 28
    robust: str = "off"
    byzantine_neighbours: int = 1

    def __post_init__(self) -> None:
        if self.chunk_bytes < 8 or self.deadline <= 0 or self.timeout <= 0:
            raise LocalProtocolError("gossip needs chunk_bytes ≥ 8 and positive timeouts")
        if self.robust not in ROBUST_RULES:
            raise LocalProtocolError(
                f"gossip mixing must be one of {ROBUST_RULES}, not {self.robust!r}"
            )
        if self.byzantine_neighbours < 0:
            raise LocalProtocolError(
                f"gossip's Byzantine neighbours must be ≥ 0, got {self.byzantine_neighbours}"
            )


@dataclass(frozen=True, slots=True)
class GossipOutcome:
    """A synchronous round's mixed vector, whom we heard and whom we missed."""

    vector: npt.NDArray[Any]
    round: int
    heard: tuple[str, ...]
    missing: tuple[str, ...]
    exclusions: list[Exclusion] = field(default_factory=list)


async def send_vector(
    out: MessageStream, round: int, vector: npt.NDArray[Any], chunk_bytes: int
) -> None:
    """Send ``vector`` as consecutive ``GossipValue`` slices."""
    word = WordType.of(vector.dtype.newbyteorder("<"))
    step = max(1, chunk_bytes // word.dtype.itemsize)
    total = len(vector)
    offset = 0
    while True:
        part = vector[offset : offset + step]
        await out.send(GossipValue(round, offset, total, word, part.tobytes()))
        offset += len(part)
        if offset >= total:
            return


async def receive_vector(
    messages: MessageStream, timeout: float, max_words: int
) -> tuple[int, WordType, bytes] | None:
    """Read one vector's slices; (round, word type, raw bytes), or None at end of stream."""
    assembly = VectorAssembly(messages.peer, max_words)
    while True:
        envelope = await messages.receive(timeout)
        if envelope is None:
            if assembly.started:
                raise BrokenError(f"peer {messages.peer} ended a gossip vector half-way")
            return None
        whole = assembly.add(envelope.message)
        if whole is not None:
            return whole


@dataclass(frozen=True, slots=True)
class VectorArrived:
    """A node's whole vector for ``round`` reached this peer's mailbox."""

    peer: str
    round: int
    word: WordType
    data: bytes


class GossipService:
    """Gossip averaging over a topology for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        peers: Sequence[str],
        topology: MixingTopology,
        *,
        config: GossipConfig | None = None,
        rng: random.Random | None = None,
        relayed: Collection[str] = (),
    ) -> None:
        """Node k of ``topology`` is ``peers[k]``; ``relayed``: the members behind NAT."""
        if len(peers) != topology.n or len(set(peers)) != len(peers):
            raise LocalProtocolError(
                f"gossip needs {topology.n} distinct peers for the topology, got {len(peers)}"
            )
        self.transport = transport
        self.consortium = consortium
        self.peers = tuple(peers)
        self.topology = topology
        self.config = config or GossipConfig()
        self.rng = rng or random.Random(0)
        self.relayed = frozenset(relayed)
        self.me = transport.local_peer
        if self.me not in self.peers:
            raise LocalProtocolError(f"peer {self.me} is not a node of the topology")
        self.index = self.peers.index(self.me)
        self.exclusions: list[Exclusion] = []
        self.value: npt.NDArray[Any] | None = None
        self.floor = 0
        self._boxes: dict[int, Any] = {}
        self._queued: set[tuple[int, str]] = set()  # one vector per (round, sender)
        self.refusals = RefusalSummary()  # non-members' and repeated vectors, summarised
        transport.serve(GOSSIP_SYNC_PROTOCOL, self._handle_sync)
        transport.serve(PUSH_PULL_PROTOCOL, self._handle_push_pull)

    def _reject(self, round: int, peer: str, reason: ReasonCode, detail: str) -> None:
        log.info("gossip: rejected %s in round %d: %s", peer, round, detail)
        self.exclusions.append(Exclusion(round, peer, reason, detail))

    def _box(self, round: int) -> Any:
        if round not in self._boxes:
            self._boxes[round] = trio.open_memory_channel[VectorArrived](math.inf)
        return self._boxes[round]

    # -- synchronous mode ------------------------------------------------------------------

    def _refuse_unread(self, peer: str) -> bool:
        # Only the topology's nodes exchange vectors; anyone else's stream is closed unread.
        if peer in self.peers:
            return False
        self.refusals.refuse(self.floor, peer, ReasonCode.NOT_MEMBER, f"{peer} is not a node")
        return True

    async def _handle_sync(self, stream: Stream) -> None:
        messages = MessageStream(stream, self.consortium, self.me)
        peer = stream.remote_peer
        if self._refuse_unread(peer):
            return
        try:
            got = await receive_vector(messages, self.config.timeout, self.config.max_words)
        except (RemoteProtocolError, BrokenError) as exc:
            reason = exc.reason if isinstance(exc, RemoteProtocolError) else ReasonCode.DROPPED
            self._reject(-1, peer, reason, str(exc))
            return
        if got is None:
            return
        round = got[0]
        if round < self.floor or round > self.floor + _MAX_AHEAD:
            self._reject(
                round,
                peer,
                ReasonCode.WRONG_ROUND,
                f"gossip vector for round {round} while this peer is at round {self.floor}",
            )
            return
        if (round, peer) in self._queued:
            # A node sends each neighbour one vector a round: more is a flood, not mixing.
            self.refusals.refuse(round, peer, ReasonCode.DUPLICATE, f"second vector from {peer}")
            return
        self._queued.add((round, peer))
        self._box(round)[0].send_nowait(VectorArrived(peer, *got))

    async def _send_to(self, peer: str, round: int, vector: npt.NDArray[Any]) -> None:
        try:
            stream = await self.transport.open_stream(peer, GOSSIP_SYNC_PROTOCOL)
            async with stream:
                out = MessageStream(stream, self.consortium, self.me)
                await send_vector(out, round, vector, self.config.chunk_bytes)
                await finish_sending(stream)
        except (BrokenError, ClosedError, RemoteProtocolError) as exc:
            log.info("gossip: round %d vector to %s not delivered: %s", round, peer, exc)

    async def sync_round(self, t: int, vector: npt.NDArray[Any]) -> GossipOutcome:
        """Mix ``vector`` with the in-neighbours of round ``t`` heard before the deadline."""
        weights, self_weight, targets = mixing_row_and_targets(self.topology, t, self.index)
        row = peer_weights(self.peers, weights)
        mixing = GossipRound(
            vector, t, row, self_weight, self.config.robust, self.config.byzantine_neighbours
        )
        self.floor = max(self.floor, t)
        for old in [r for r in self._boxes if r < t]:
            del self._boxes[old]
        self._queued = {k for k in self._queued if k[0] >= t}
        self.refusals.forget_before(t)
        _, mailbox = self._box(t)
        deadline = trio.current_time() + self.config.deadline
        excluded_before = len(self.exclusions)
        async with trio.open_nursery() as nursery:
            for j in targets:
                nursery.start_soon(self._send_to, self.peers[j], t, vector)
            with trio.move_on_at(deadline):
                while mixing.missing:
                    got: VectorArrived = await mailbox.receive()
                    try:
                        mixing.receive(got.peer, got.round, got.word, got.data)
                    except RemoteProtocolError as exc:
                        self._reject(t, got.peer, exc.reason, str(exc))
            nursery.cancel_scope.deadline = deadline
        self._boxes.pop(t, None)
        self.floor = t + 1
        heard = tuple(sorted(mixing.heard))
        missing = mixing.missing
        exclusions = self.exclusions[excluded_before:] + self.refusals.drain(t)
        return GossipOutcome(mixing.mix(), t, heard, missing, exclusions)

    # -- asynchronous push-pull mode -------------------------------------------------------

    def set_value(self, vector: npt.NDArray[Any] | None) -> None:
        """Enter (a vector) or leave (None) asynchronous mode; served exchanges use it."""
        if vector is not None:
            WordType.of(vector.dtype.newbyteorder("<"))
            vector = np.array(vector, copy=True)
        self.value = vector

    async def _handle_push_pull(self, stream: Stream) -> None:
        messages = MessageStream(stream, self.consortium, self.me)
        peer = stream.remote_peer
        if self._refuse_unread(peer):
            return
        try:
            got = await receive_vector(messages, self.config.timeout, self.config.max_words)
            if got is None:
                return
            value = self.value
            round, word, data = got
            if value is None:
                self._reject(round, peer, ReasonCode.UNEXPECTED_STAGE, "not in push-pull mode")
                return
            what = f"push-pull vector from {peer}"
            try:
                theirs = exchanged_vector(value, word, data, peer, what)
            except RemoteProtocolError as exc:
                self._reject(round, peer, exc.reason, str(exc))
                return
            # Answer with the value before the update, then move halfway: both are one
            # synchronous step, so no other exchange can interleave.
            mine = value.copy()
            value += push_pull_delta(mine, theirs).astype(value.dtype)
            await send_vector(messages, round, mine, self.config.chunk_bytes)
            await stream.send_eof()
        except (RemoteProtocolError, BrokenError) as exc:
            reason = exc.reason if isinstance(exc, RemoteProtocolError) else ReasonCode.DROPPED
            self._reject(-1, peer, reason, str(exc))

    async def push_pull(self, t: int) -> str | None:
        """One exchange with a random neighbour of the time-t graph; the partner, or None."""
        if self.value is None:
            raise LocalProtocolError("push_pull needs set_value(vector) first")
        weights, _, targets = mixing_row_and_targets(self.topology, t, self.index)
        candidates = sorted(set(weights) | set(targets))
        if not candidates:
            return None
        names = [self.peers[j] for j in candidates]
        partner = self.rng.choices(names, partner_weights(self.me, names, self.relayed))[0]
        sent = self.value.copy()
        try:
            with trio.fail_after(self.config.timeout):
                stream = await self.transport.open_stream(partner, PUSH_PULL_PROTOCOL)
                async with stream:
                    messages = MessageStream(stream, self.consortium, self.me)
                    await send_vector(messages, t, sent, self.config.chunk_bytes)
                    got = await receive_vector(messages, self.config.timeout, self.config.max_words)
        except (trio.TooSlowError, BrokenError, ClosedError, RemoteProtocolError) as exc:
            log.info("gossip: push-pull with %s failed: %s", partner, exc)
            return None
        if got is None:
            return None
        _, word, data = got
        try:
            theirs = exchanged_vector(sent, word, data, partner, "push-pull answer")
        except RemoteProtocolError as exc:
            self._reject(t, partner, exc.reason, str(exc))
            return None
        self.value += push_pull_delta(sent, theirs).astype(self.value.dtype)
        return partner
