"""Ring all-reduce as a sans-I/O state machine: reduce-scatter, then all-gather.

Theory of operation: the n peers of a cohort sit on a ring in an order every peer computes
alone (``ring_order``: sort by SHA-256 of consortium, roster version, round, attempt and
peer ID, then spread the members behind NAT between the others, ``spread_relayed``). The
flat vector is cut into n segments and every segment into the same number of pipeline
chunks. Over 2(n−1) steps, peer r sends segment (r − s) mod n to its successor and
receives segment (r − s − 1) mod n from its predecessor: in the first n − 1 steps it adds
what it receives into its own copy (reduce-scatter; afterwards peer r holds the complete sum
of segment r + 1), in the last n − 1 it overwrites (all-gather). The segment sent at step
s + 1 is the one received at step s, so chunk c of step s + 1 leaves as soon as chunk c of
step s has arrived: sends and receives overlap chunk by chunk instead of step by step.

Each peer sends 2(n−1) segments of ≈ M/n bytes: 2(n−1)/n·M payload bytes, the bandwidth
optimum. Integer words (masked vectors) are summed modulo 2^k; floats in their own precision.
With a reduced modulus 2^w (``modulus_bits`` below the word width: compressed updates) the
words travel bit-packed, w bits each (``WordType.PACKED``), so the payload falls to w/32.

The core is strict, so every deviation has a culprit: chunks from the predecessor must come
in exactly the order it must send them, for this round and attempt, with the expected word
type and length. Anything else raises ``RemoteProtocolError`` naming the predecessor with
``WRONG_ROUND``, ``REPLAY``, ``OUT_OF_ORDER``, ``WRONG_DTYPE`` or ``WRONG_SHAPE``.

``RingAttempts`` keeps which attempts run at a peer and decides which inbound stream may
feed one (its predecessor's, once, and never for an attempt that is over);
``RingAllReduce.outcome`` decides which fault an attempt ends with. The trio driver
(``ring_driver``) only moves bytes and time between them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pfed.collectives.messages import MAX_COHORT, Message, RingChunk, WordType
from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError
from p2pfed.secagg.compression import pack_words, packed_size, unpack_words


def ring_order(
    consortium: str,
    roster_version: int,
    round: int,
    cohort: Iterable[str],
    attempt: int = 0,
    relayed: Collection[str] = (),
) -> tuple[str, ...]:
    """The ring order of ``cohort`` for one attempt of one round; the same on every peer.

    A hash order (rather than, say, sorted IDs) moves every peer's neighbours from round to
    round and attempt to attempt, so one bad link does not fail every retry. ``relayed``
    (members every peer knows to be behind NAT: the roster lists no address for them) are
    then spread between the others (``spread_relayed``).
    """
    members = sorted(set(cohort))
    if not members:
        raise LocalProtocolError("a ring needs at least one peer")

    def key(peer: str) -> bytes:
        text = f"{consortium}\x00{roster_version}\x00{round}\x00{attempt}\x00{peer}"
        return hashlib.sha256(text.encode()).digest()

    return spread_relayed(sorted(members, key=key), relayed)


def spread_relayed(order: Sequence[str], relayed: Collection[str]) -> tuple[str, ...]:
    """``order`` with its ``relayed`` members spread evenly between the direct ones.

    Two members behind NAT reach each other only through a relay (one more hop, and the
    relay's bandwidth shared); a member behind NAT reaches a direct one by dialling it. So
    a ring link is relayed exactly when both its ends are. The r relayed members go into
    the gaps after the d direct ones, ⌈r/d⌉ or ⌊r/d⌋ per gap (the first r mod d gaps take
    one more), keeping both groups' relative order: at most ⌈r/d⌉ relayed members sit in a
    row, so no two relayed links follow each other whenever r ≤ 2d (exactly when some order
    achieves it), and the r − min(r, d) relayed links are the fewest any order has.
    """
    direct = [p for p in order if p not in relayed]
    behind = iter([p for p in order if p in relayed])
    d, r = len(direct), len(order) - len(direct)
    if d == 0 or r == 0:
        return tuple(order)
    out: list[str] = []
    for i, peer in enumerate(direct):
        out.append(peer)
        out.extend(next(behind) for _ in range(r // d + (i < r % d)))
    return tuple(out)


class RingState(enum.Enum):
    """Where one peer's all-reduce stands."""

    READY = "ready"
    REDUCE_SCATTER = "reduce-scatter"
    ALL_GATHER = "all-gather"
    DONE = "done"
    FAILED = "failed"


class RingEvent(enum.Enum):
    """What moves the ring state machine."""

    START = "start"
    SCATTERED = "scattered"
    GATHERED = "gathered"
    FAULT = "fault"


_FORWARD = (
    (RingState.READY, RingEvent.START, RingState.REDUCE_SCATTER),
    (RingState.REDUCE_SCATTER, RingEvent.SCATTERED, RingState.ALL_GATHER),
    (RingState.ALL_GATHER, RingEvent.GATHERED, RingState.DONE),
)
RING_TRANSITIONS: dict[tuple[RingState, RingEvent], RingState] = {
    **{(state, event): target for state, event, target in _FORWARD},
    # A fault fails the attempt from any state that is not over yet.
    **{(state, RingEvent.FAULT): RingState.FAILED for state, _, _ in _FORWARD},
}
"""Every legal transition; anything else is a local protocol error."""


def chunk_bounds(length: int, peers: int, chunk_words: int) -> list[list[tuple[int, int]]]:
    """``[segment][chunk] -> (start, stop)`` word ranges, the same on every peer.

    Every segment gets the same number of chunks (the pipeline pairs chunk c of one step
    with chunk c of the next), so chunks of shorter segments are at most one word shorter.
    """
    if peers < 1 or chunk_words < 1 or length < 0:
        raise LocalProtocolError("chunk_bounds needs peers ≥ 1, chunk_words ≥ 1, length ≥ 0")
    seg_edges = np.linspace(0, length, peers + 1).round().astype(np.int64)
    longest = int(np.max(np.diff(seg_edges))) if peers else 0
    chunks = max(1, -(-longest // chunk_words))
    out: list[list[tuple[int, int]]] = []
    for s in range(peers):
        lo, hi = int(seg_edges[s]), int(seg_edges[s + 1])
        edges = np.linspace(lo, hi, chunks + 1).round().astype(np.int64)
        out.append([(int(edges[c]), int(edges[c + 1])) for c in range(chunks)])
    return out


class RingAllReduce:
    """One peer's side of one ring all-reduce attempt.

    Call ``start`` for the first chunks to send, then ``receive`` each chunk from the
    predecessor; both return the chunks to send to the successor next. ``done`` turns true
    once the last chunk has arrived; ``result`` is then the sum over the cohort.
    """

    def __init__(
        self,
        vector: npt.NDArray[Any],
        rank: int,
        size: int,
        *,
        round: int,
        attempt: int = 0,
        chunk_bytes: int = 256 * 1024,
        modulus_bits: int | None = None,
    ) -> None:
        if vector.ndim != 1:
            raise LocalProtocolError(f"ring all-reduce needs a flat vector, got {vector.ndim}-D")
        self.word = WordType.of(vector.dtype.newbyteorder("<"))
        if not 1 <= size <= MAX_COHORT:
            raise LocalProtocolError(f"ring size {size} is outside 1..{MAX_COHORT}")
        if not 0 <= rank < size:
            raise LocalProtocolError(f"rank {rank} is outside 0..{size - 1}")
        itemsize = self.word.dtype.itemsize
        if chunk_bytes < itemsize:
            raise LocalProtocolError(f"chunk_bytes {chunk_bytes} is smaller than one word")
        self._mask: int | None = None
        self._bits = 0
        if self.word.is_integer:
            width = itemsize * 8
            bits = width if modulus_bits is None else modulus_bits
            if not 1 <= bits <= width:
                raise LocalProtocolError(
                    f"modulus 2^{bits} does not fit {self.word.name.lower()} words"
                )
            if bits < width:
                self._mask, self._bits = (1 << bits) - 1, bits
                if vector.size and int(vector.max()) > self._mask:
                    raise LocalProtocolError(f"vector has words ≥ 2^{bits}, the modulus")
        elif modulus_bits is not None:
            raise LocalProtocolError("a modulus applies to uint32/uint64 vectors only")
        self.wire_word = WordType.PACKED if self._bits else self.word
        self.rank = rank
        self.size = size
        self.round = round
        self.attempt = attempt
        self.state = RingState.READY
        self._buf: npt.NDArray[Any] = np.array(vector, dtype=self.word.dtype, copy=True)
        self._bounds = chunk_bounds(len(vector), size, max(1, chunk_bytes // itemsize))
        self.chunks_per_segment = len(self._bounds[0])
        self.total_steps = 2 * (size - 1)
        self._expect = (0, 0)
        self.payload_bytes_sent = 0
        self.payload_bytes_received = 0

    def _fire(self, event: RingEvent) -> None:
        try:
            self.state = RING_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"ring all-reduce cannot take event {event.value} in state {self.state.value}"
            ) from None

    @property
    def done(self) -> bool:
        """True once the sum is complete on this peer."""
        return self.state is RingState.DONE

    @property
    def result(self) -> npt.NDArray[Any]:
        """The element-wise sum over the cohort; only once ``done``."""
        if not self.done:
            raise LocalProtocolError(f"ring all-reduce result read in state {self.state.value}")
        return self._buf

    def _chunk(self, step: int, chunk: int) -> RingChunk:
        segment = (self.rank - step) % self.size
        lo, hi = self._bounds[segment][chunk]
        part = self._buf[lo:hi]
        data = pack_words(part, self._bits) if self._bits else part.tobytes()
        self.payload_bytes_sent += len(data)
        return RingChunk(self.round, self.attempt, step, chunk, self.wire_word, data)

    def start(self) -> list[RingChunk]:
        """Begin; returns every chunk of step 0 (empty for a ring of one)."""
        self._fire(RingEvent.START)
        if self.size == 1:
            self._fire(RingEvent.SCATTERED)
            self._fire(RingEvent.GATHERED)
            return []
        return [self._chunk(0, c) for c in range(self.chunks_per_segment)]

    def fail(self) -> None:
        """Record that this attempt failed (the driver saw a fault)."""
        if self.state is not RingState.FAILED:
            self._fire(RingEvent.FAULT)

    def outcome(
        self, faults: Sequence[RemoteProtocolError], predecessor: str
    ) -> RemoteProtocolError | None:
        """None once the sum is complete and no fault was seen; else the fault to report.

        The first of ``faults`` (the driver's accusations, in the order seen), or, when the
        attempt stopped short without one, a ``PROTOCOL_VIOLATION`` naming ``predecessor``;
        the state machine is then ``FAILED``.
        """
        if not faults and self.done:
            return None
        self.fail()
        if faults:
            return faults[0]
        return RemoteProtocolError(
            ReasonCode.PROTOCOL_VIOLATION, "ring attempt ended unfinished", predecessor
        )

    def receive(self, message: Message, sender: str) -> list[RingChunk]:
        """Take one message from the predecessor ``sender``; returns the chunks to send next.

        Raises ``RemoteProtocolError`` naming ``sender`` for anything but a ring chunk
        (``UNEXPECTED_STAGE``), a chunk of another round or attempt (``WRONG_ROUND``), one
        already received (``REPLAY``) or skipped ahead (``OUT_OF_ORDER``), of the wrong word
        type (``WRONG_DTYPE``) or length (``WRONG_SHAPE``); the state machine is then
        ``FAILED``.
        """
        if self.state not in (RingState.REDUCE_SCATTER, RingState.ALL_GATHER):
            raise LocalProtocolError(f"ring chunk received in state {self.state.value}")
        try:
            if not isinstance(message, RingChunk):
                raise RemoteProtocolError(
                    ReasonCode.UNEXPECTED_STAGE,
                    f"peer {sender} sent a {type(message).__name__} inside a ring stream",
                    sender,
                )
            view = self._check(message, sender)
        except RemoteProtocolError:
            self._fire(RingEvent.FAULT)
            raise
        step, chunk = self._expect
        if self._bits:
            incoming = unpack_words(message.data, self._bits, view.shape[0], self.word.dtype.type)
        else:
            incoming = np.frombuffer(message.data, dtype=self.word.dtype)
        if step < self.size - 1:
            np.add(view, incoming, out=view)
            if self._mask is not None:
                np.bitwise_and(view, self._mask, out=view)
        else:
            view[...] = incoming
        self.payload_bytes_received += len(message.data)
        chunk += 1
        if chunk == self.chunks_per_segment:
            step, chunk = step + 1, 0
        self._expect = (step, chunk)
        if step == self.size - 1 and chunk == 0:
            self._fire(RingEvent.SCATTERED)
        if step == self.total_steps:
            self._fire(RingEvent.GATHERED)
        if message.step + 1 < self.total_steps:
            return [self._chunk(message.step + 1, message.chunk)]
        return []

    def _check(self, message: RingChunk, sender: str) -> npt.NDArray[Any]:
        if message.round != self.round or message.attempt != self.attempt:
            raise RemoteProtocolError(
                ReasonCode.WRONG_ROUND,
                f"peer {sender} sent a chunk of round {message.round} attempt "
                f"{message.attempt} into round {self.round} attempt {self.attempt}",
                sender,
            )
        got, want = (message.step, message.chunk), self._expect
        if got != want:
            reason = ReasonCode.REPLAY if got < want else ReasonCode.OUT_OF_ORDER
            raise RemoteProtocolError(
                reason,
                f"peer {sender} sent ring chunk {got} when {want} was due",
                sender,
            )
        if message.word is not self.wire_word:
            raise RemoteProtocolError(
                ReasonCode.WRONG_DTYPE,
                f"peer {sender} sent {message.word.name.lower()} words into a "
                f"{self.wire_word.name.lower()} all-reduce",
                sender,
            )
        segment = (self.rank - message.step - 1) % self.size
        lo, hi = self._bounds[segment][message.chunk]
        if self._bits and len(message.data) != packed_size(hi - lo, self._bits):
            raise RemoteProtocolError(
                ReasonCode.WRONG_SHAPE,
                f"peer {sender} sent {len(message.data)} bytes where ring chunk {got} has "
                f"{hi - lo} words of {self._bits} bits",
                sender,
            )
        if not self._bits and message.count != hi - lo:
            raise RemoteProtocolError(
                ReasonCode.WRONG_SHAPE,
                f"peer {sender} sent {message.count} words where ring chunk {got} has {hi - lo}",
                sender,
            )
        view: npt.NDArray[Any] = self._buf[lo:hi]
        return view


@dataclass(frozen=True, slots=True)
class RingPosition:
    """Where one peer sits on a ring: its rank and its two neighbours."""

    order: tuple[str, ...]
    me: str

    def __post_init__(self) -> None:
        if self.me not in self.order:
            raise LocalProtocolError(f"peer {self.me} is not in the ring {self.order}")

    @property
    def rank(self) -> int:
        """This peer's index in the ring order."""
        return self.order.index(self.me)

    @property
    def size(self) -> int:
        """The number of peers on the ring."""
        return len(self.order)

    @property
    def successor(self) -> str:
        """The peer this one sends to."""
        return self.order[(self.rank + 1) % self.size]

    @property
    def predecessor(self) -> str:
        """The peer this one receives from."""
        return self.order[(self.rank - 1) % self.size]


@dataclass(frozen=True, slots=True)
class StreamRefusal:
    """Why an inbound ring stream was refused, for the record of ``round``."""

    round: int
    reason: ReasonCode
    detail: str


class RingAttempts:
    """Which ring attempts run at this peer, and which inbound stream may feed each.

    An attempt is keyed by (round, attempt). Everything below ``floor`` is over: a stream
    for it is refused as late, and it cannot be run again. Each open attempt takes exactly
    one stream, from its predecessor.
    """

    def __init__(self) -> None:
        self.floor = (-1, -1)
        self._predecessor: dict[tuple[int, int], str] = {}
        self._fed: set[tuple[int, int]] = set()

    def begin(self, key: tuple[int, int], predecessor: str | None) -> None:
        """Open attempt ``key`` fed by ``predecessor`` (None: a ring of one, nothing to feed).

        Raises ``LocalProtocolError`` if the attempt was already run here.
        """
        if predecessor is None:
            self.floor = max(self.floor, key)
            return
        if key in self._predecessor or key < self.floor:
            raise LocalProtocolError(f"round {key[0]} attempt {key[1]} was already run here")
        self.floor = max(self.floor, key)
        self._predecessor[key] = predecessor

    def end(self, key: tuple[int, int]) -> None:
        """Close attempt ``key``: streams for it arriving from now on are late."""
        self._predecessor.pop(key, None)
        self._fed.discard(key)
        self.floor = max(self.floor, (key[0], key[1] + 1))

    def awaited(self, key: tuple[int, int]) -> bool:
        """True while a stream for ``key`` should wait for this peer to open that attempt."""
        return key not in self._predecessor and key >= self.floor

    def opening(self, message: Message) -> tuple[int, int] | StreamRefusal:
        """The attempt a stream's first message is for, or why the stream is refused."""
        if isinstance(message, RingChunk):
            return (message.round, message.attempt)
        return StreamRefusal(
            message.round,
            ReasonCode.UNEXPECTED_STAGE,
            f"a ring stream opened with a {type(message).__name__} frame",
        )

    def admit(self, key: tuple[int, int], peer: str) -> StreamRefusal | None:
        """Let ``peer``'s stream feed attempt ``key``; None if admitted, else why not."""
        predecessor = self._predecessor.get(key)
        if predecessor is None:
            stale = key < self.floor
            return StreamRefusal(
                key[0],
                ReasonCode.WRONG_ROUND if stale else ReasonCode.TIMEOUT,
                f"ring stream for round {key[0]} attempt {key[1]} "
                + ("arrived after that attempt was over" if stale else "matched no attempt"),
            )
        if peer != predecessor or key in self._fed:
            return StreamRefusal(
                key[0],
                ReasonCode.DUPLICATE if key in self._fed else ReasonCode.UNEXPECTED_STAGE,
                f"peer {peer} is not this peer's ring predecessor "
                f"{predecessor} or opened a second stream",
            )
        self._fed.add(key)
        return None
