"""The trio driver of ring all-reduce: one stream out to the successor, one in from the predecessor.

Theory of operation: ``RingService`` serves ``RING_PROTOCOL`` on a transport. For one
attempt of one round, ``all_reduce`` registers an inbox for the predecessor's stream, opens
a stream to the successor and runs two tasks in one nursery: the sender drains an outbox of
chunks, the receiver feeds chunks from the predecessor into the sans-I/O ``RingAllReduce``
and puts whatever it returns into the outbox. So chunk c of step s + 1 leaves while chunk
c + 1 of step s is still arriving.

Inbound streams may arrive before this peer has reached the round (its predecessor was
quicker to agree): the handler reads the first frame, waits a bounded time for the matching
inbox and hands the stream over (reading ahead at most ``max_read_ahead`` bytes meanwhile,
then no more until the attempt claims the stream: a fast sender waits, the receiver's memory
does not grow), then stays alive until the session is done with it (the
transport closes a stream when its handler returns). Whether a stream may feed an attempt
is the core's decision (``RingAttempts``): a first frame for a round or attempt this peer
has already left is rejected with ``WRONG_ROUND``, a stream from anyone but the predecessor
or a second one is refused, and each refusal is recorded.

Faults name a culprit: silence for ``timeout`` seconds or a broken stream from the
predecessor accuses the predecessor; failing to reach or send to the successor accuses the
successor; a malformed, replayed or misshapen chunk accuses its sender. ``all_reduce`` then
raises ``RemoteProtocolError`` with the reason and the accused peer, and the caller retries
the round without it (``p2pfed.collectives.round``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from p2pfed.collectives.codec import ByteCounts, Envelope, MessageStream
from p2pfed.collectives.faults import Exclusion, Fault, FaultPlan, InjectedCrash
from p2pfed.collectives.messages import RingChunk, WordType
from p2pfed.collectives.ring import RingAllReduce, RingAttempts, RingPosition, StreamRefusal
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

RING_PROTOCOL = "/p2pfed/ring/1.0.0"
DEFAULT_CHUNK_BYTES = 256 * 1024
READ_AHEAD_CHUNKS = 16
"""Chunks a ring peer reads ahead of an attempt it has not started yet (then it stops reading)."""


@dataclass(frozen=True, slots=True)
class RingConfig:
    """How one all-reduce runs; every peer of a cohort must use the same chunk size."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    timeout: float = 10.0
    modulus_bits: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_bytes < 8:
            raise LocalProtocolError(f"chunk_bytes {self.chunk_bytes} is below 8")
        if not self.timeout > 0:
            raise LocalProtocolError(f"ring timeout {self.timeout} must be positive")


@dataclass(frozen=True, slots=True)
class RingResult:
    """The sum over the cohort, the ring it ran on, and what this peer sent and received."""

    vector: npt.NDArray[Any]
    order: tuple[str, ...]
    round: int
    attempt: int
    counts: ByteCounts = field(default_factory=ByteCounts)

    @property
    def bytes_sent(self) -> int:
        """Payload plus framing bytes this peer sent."""
        return self.counts.payload_sent + self.counts.framing_sent


_Item = Envelope | RemoteProtocolError | BrokenError | ClosedError


class _ReadAhead:
    """Reads the predecessor's stream until this peer's attempt takes it over.

    Frames can arrive before this peer has started the attempt (its predecessor was quicker
    to start), and py-libp2p's Yamux resets a stream whose reader pauses for 5 s, so the
    handler keeps reading into a queue until the session claims the stream. Then the pump
    stops after the frame it is reading, the session drains the queue and from there on
    reads the stream itself (no extra hop on the hot path, and never two readers at once:
    a reader is never cancelled mid-read, which could lose bytes a transport had taken).
    What waits here is capped: at ``cap`` bytes the pump stops reading until the session
    claims the stream, so the sender is held back by the transport's flow control (over
    libp2p, a sender kept waiting more than 5 s has its stream reset and the round retries).
    ``peak`` is the most this reader ever held.
    """

    def __init__(self, messages: MessageStream, first: Envelope, cap: int) -> None:
        self.messages = messages
        self.first = first
        self.cap = cap
        self.buffered = 0
        self.peak = 0
        self.items: deque[_Item] = deque()
        self.changed = trio.Event()
        self.handover = False
        self.stopped = False
        self.ended = False

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def pump(self) -> None:
        try:
            while not self.handover:
                if self.buffered >= self.cap:
                    await self.changed.wait()  # full: read on only once the session claims
                    continue
                envelope = await self.messages.receive()
                if envelope is None:
                    self.ended = True
                    break
                self.buffered += envelope.frame_bytes
                self.peak = max(self.peak, self.buffered)
                self.items.append(envelope)
                self._notify()
        except (RemoteProtocolError, BrokenError, ClosedError) as exc:
            self.items.append(exc)
        finally:
            self.stopped = True
            self._notify()

    async def next(self, timeout: float) -> Envelope | None:
        """The next frame; None at end of stream. Raises what the reader hit, or TIMEOUT."""
        if not self.handover:
            self.handover = True
            self._notify()  # a pump waiting at the cap stops
        peer = self.messages.peer
        if not self.stopped or self.items:
            with trio.move_on_after(timeout):
                while not self.items and not self.stopped:
                    await self.changed.wait()
            if self.items:
                item = self.items.popleft()
                if isinstance(item, Envelope):
                    self.buffered -= item.frame_bytes
                    return item
                raise item
            if not self.stopped:
                raise RemoteProtocolError(
                    ReasonCode.TIMEOUT, f"peer {peer} sent nothing for {timeout:g} s", peer
                )
        if self.ended:
            return None
        return await self.messages.receive(timeout)


class _Inbox:
    """Where the handler parks the predecessor's stream for a session."""

    def __init__(self) -> None:
        self.reader: _ReadAhead | None = None
        self.arrived = trio.Event()
        self.released = trio.Event()


class _Session:
    """The I/O of one attempt: a sender to the successor and a receiver from the predecessor.

    Both feed the sans-I/O core and only move bytes; a fault is recorded as an accusation
    and stops the other task. The core decides what the attempt's outcome is.
    """

    def __init__(
        self,
        service: RingService,
        core: RingAllReduce,
        position: RingPosition,
        inbox: _Inbox,
        timeout: float,
    ) -> None:
        self.service = service
        self.core = core
        self.position = position
        self.inbox = inbox
        self.timeout = timeout
        self.counts = ByteCounts()
        self.faults: list[RemoteProtocolError] = []
        self.crashed: list[InjectedCrash] = []
        self._outbox, self._queued = trio.open_memory_channel[RingChunk](math.inf)

    def _accuse(self, reason: ReasonCode, peer: str, detail: str) -> None:
        self.faults.append(RemoteProtocolError(reason, detail, peer))

    async def run(self) -> None:
        """Run both directions until the core is done or one of them fails."""
        async with trio.open_nursery() as nursery:

            async def watch(task: Callable[[], Awaitable[None]]) -> None:
                await task()
                if self.faults or self.crashed:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch, self._send_all)
            for first in self.core.start():
                self._outbox.send_nowait(first)
            nursery.start_soon(watch, self._receive_all)

    async def _send_all(self) -> None:
        successor = self.position.successor
        try:
            with trio.move_on_after(self.timeout) as scope:
                stream = await open_with_backoff(self.service.transport, successor, RING_PROTOCOL)
            if scope.cancelled_caught:
                self._accuse(ReasonCode.TIMEOUT, successor, f"could not reach {successor}")
                return
        except (BrokenError, RemoteProtocolError) as exc:
            self._accuse(ReasonCode.DROPPED, successor, f"could not reach {successor}: {exc}")
            return
        out = MessageStream(stream, self.service.consortium, self.service.local_peer)
        try:
            await self.service._send_stream(out, self._queued, self.timeout)
        except InjectedCrash as exc:
            self.crashed.append(exc)
        except (BrokenError, ClosedError) as exc:
            self._accuse(ReasonCode.DROPPED, successor, f"stream to {successor} broke: {exc}")
        finally:
            self.counts.add(out.counts)
            await stream.aclose()

    async def _receive_all(self) -> None:
        predecessor = self.position.predecessor
        try:
            with trio.move_on_after(self.timeout) as scope:
                await self.inbox.arrived.wait()
            reader = self.inbox.reader
            if scope.cancelled_caught or reader is None:
                self._accuse(
                    ReasonCode.TIMEOUT,
                    predecessor,
                    f"predecessor {predecessor} opened no stream in {self.timeout:g} s",
                )
                return
            try:
                await self._feed(reader)
            except RemoteProtocolError as exc:
                self._accuse(exc.reason, predecessor, str(exc))
            except (BrokenError, ClosedError) as exc:
                # ClosedError: our own side went away under us (this peer is crashing).
                self._accuse(ReasonCode.DROPPED, predecessor, str(exc))
            finally:
                self.counts.add(reader.messages.counts)
        finally:
            self.inbox.released.set()

    async def _feed(self, reader: _ReadAhead) -> None:
        """Feed the predecessor's frames into the core and queue what it says to send."""
        predecessor = self.position.predecessor
        envelope: Envelope | None = reader.first
        while True:
            if envelope is None:
                raise BrokenError(f"predecessor {predecessor} ended the stream early")
            for out in self.core.receive(envelope.message, predecessor):
                self._outbox.send_nowait(out)
            if self.core.done:
                break
            envelope = await reader.next(self.timeout)
        self._outbox.close()


class RingService:
    """Ring all-reduce over a transport for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        *,
        accept_timeout: float = 10.0,
        fault: FaultPlan | None = None,
        max_read_ahead: int = READ_AHEAD_CHUNKS * DEFAULT_CHUNK_BYTES,
    ) -> None:
        if max_read_ahead < 1:
            raise LocalProtocolError(f"max_read_ahead {max_read_ahead} must be positive")
        self.transport = transport
        self.max_read_ahead = max_read_ahead
        self.read_ahead_peak = 0
        """The most bytes any inbound stream had waiting before its attempt claimed it."""
        self.consortium = consortium
        self.accept_timeout = accept_timeout
        self.fault = fault
        self.exclusions: list[Exclusion] = []
        self.attempts = RingAttempts()
        self._inboxes: dict[tuple[int, int], _Inbox] = {}
        self._changed = trio.Event()
        self._sent_vectors = 0
        transport.serve(RING_PROTOCOL, self._handle)

    @property
    def local_peer(self) -> str:
        """This peer's ID."""
        return self.transport.local_peer

    def _reject(self, round: int, peer: str, reason: ReasonCode, detail: str) -> None:
        log.info("ring: rejected %s in round %d: %s (%s)", peer, round, detail, reason)
        self.exclusions.append(Exclusion(round, peer, reason, detail))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, stream: Stream) -> None:
        peer = stream.remote_peer
        messages = MessageStream(stream, self.consortium, self.local_peer)
        try:
            first = await messages.receive(self.accept_timeout)
        except RemoteProtocolError as exc:
            self._reject(-1, peer, exc.reason, str(exc))
            return
        if first is None:
            return
        key = self.attempts.opening(first.message)
        if isinstance(key, StreamRefusal):
            self._reject(key.round, peer, key.reason, key.detail)
            return
        reader = _ReadAhead(messages, first, self.max_read_ahead)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.pump)
            with trio.move_on_after(self.accept_timeout):
                while self.attempts.awaited(key):
                    await self._changed.wait()
            refusal = self.attempts.admit(key, peer)
            if refusal is not None:
                self._reject(refusal.round, peer, refusal.reason, refusal.detail)
            else:
                inbox = self._inboxes[key]
                inbox.reader = reader
                inbox.arrived.set()
                await inbox.released.wait()
            nursery.cancel_scope.cancel()
        self.read_ahead_peak = max(self.read_ahead_peak, reader.peak)

    async def all_reduce(
        self,
        vector: npt.NDArray[Any],
        order: tuple[str, ...],
        *,
        round: int,
        attempt: int = 0,
        config: RingConfig | None = None,
    ) -> RingResult:
        """Sum ``vector`` over the peers of ``order`` (the ring, this peer included).

        Raises ``RemoteProtocolError`` naming the accused peer when the attempt fails,
        ``LocalProtocolError`` for a bad vector or a ring without this peer, and
        ``InjectedCrash`` when this peer's fault plan crashes it.
        """
        config = config or RingConfig()
        position = RingPosition(order, self.local_peer)
        core = RingAllReduce(
            vector,
            position.rank,
            position.size,
            round=round,
            attempt=attempt,
            chunk_bytes=config.chunk_bytes,
            modulus_bits=config.modulus_bits,
        )
        key = (round, attempt)
        if position.size == 1:
            core.start()
            self.attempts.begin(key, None)
            return RingResult(core.result, order, round, attempt)
        self.attempts.begin(key, position.predecessor)
        inbox = self._inboxes[key] = _Inbox()
        self._notify()
        session = _Session(self, core, position, inbox, config.timeout)
        try:
            await session.run()
        finally:
            inbox.released.set()
            del self._inboxes[key]
            # Streams for this attempt arriving from now on are late: reject, don't wait.
            self.attempts.end(key)
            self._notify()
        if session.crashed:
            raise session.crashed[0]
        fault = core.outcome(session.faults, position.predecessor)
        if fault is not None:
            self._reject(round, fault.peer or position.predecessor, fault.reason, str(fault))
            raise fault
        return RingResult(core.result, order, round, attempt, session.counts)

    async def _send_stream(
        self,
        out: MessageStream,
        outbox: trio.MemoryReceiveChannel[RingChunk],
        timeout: float,
    ) -> None:
        async for chunk in outbox:
            await self._send_chunk(out, chunk)
        # Linger until the successor has read everything and closed its side; a failure
        # past this point belongs to the successor's own successor to detect.
        with contextlib.suppress(BrokenError):
            await finish_sending(out.stream, timeout)

    async def _send_chunk(self, out: MessageStream, chunk: RingChunk) -> None:
        index, self._sent_vectors = self._sent_vectors, self._sent_vectors + 1
        plan = self.fault
        if plan is None or plan.at != index:
            await out.send(chunk)
            return
        if plan.fault is Fault.CRASH:
            plan.on_crash()
            raise InjectedCrash(f"peer {self.local_peer} crashed at chunk {index} as planned")
        if plan.fault is Fault.DELAY:
            await trio.sleep(plan.delay)
            await out.send(chunk)
        elif plan.fault is Fault.WRONG_SHAPE:
            size = chunk.word.dtype.itemsize
            data = chunk.data[:-size] if chunk.data else bytes(size)
            await out.send(replace(chunk, data=data))
        elif plan.fault is Fault.WRONG_DTYPE:
            other = WordType.FLOAT64 if chunk.word is not WordType.FLOAT64 else WordType.UINT64
            words = np.frombuffer(chunk.data, dtype=chunk.word.dtype)
            await out.send(replace(chunk, word=other, data=words.astype(other.dtype).tobytes()))
        elif plan.fault is Fault.REPLAY:
            await out.send(chunk)
            await out.send(chunk)
        elif plan.fault is Fault.STALE_ROUND:
            await out.send(replace(chunk, round=max(0, chunk.round - 1)))
