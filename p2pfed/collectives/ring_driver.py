"""The trio driver of ring all-reduce: one stream out to the successor, one in from the predecessor.

Theory of operation: ``RingService`` serves ``RING_PROTOCOL`` on a transport. For one
attempt of one round, ``all_reduce`` registers an inbox for the predecessor's stream, opens
a stream to the successor and runs two tasks in one nursery: the sender drains an outbox of
chunks, the receiver feeds chunks from the predecessor into the sans-I/O ``RingAllReduce``
and puts whatever it returns into the outbox. So chunk c of step s + 1 leaves while chunk
c + 1 of step s is still arriving.

Inbound streams may arrive before this peer has reached the round (its predecessor was
quicker to agree): the handler reads the first frame, waits a bounded time for the matching
inbox and hands the stream over, then stays alive until the session is done with it (the
transport closes a stream when its handler returns). A first frame for a round or attempt
this peer has already left is rejected with ``WRONG_ROUND`` and recorded.

Faults name a culprit: silence for ``timeout`` seconds or a broken stream from the
predecessor accuses the predecessor; failing to reach or send to the successor accuses the
successor; a malformed, replayed or misshapen chunk accuses its sender. ``all_reduce`` then
raises ``RemoteProtocolError`` with the reason and the accused peer, and the caller retries
the round without it (``p2pfed.collectives.round``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from p2pfed.collectives.codec import ByteCounts, Envelope, MessageStream
from p2pfed.collectives.faults import Exclusion, Fault, FaultPlan, InjectedCrash
from p2pfed.collectives.messages import RingChunk, WordType
from p2pfed.collectives.ring import RingAllReduce
from p2pfed.errors import (
    BrokenError,
    ClosedError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.transport.base import Stream, Transport

log = logging.getLogger(__name__)

RING_PROTOCOL = "/p2pfed/ring/1.0.0"


@dataclass(frozen=True, slots=True)
class RingConfig:
    """How one all-reduce runs; every peer of a cohort must use the same chunk size."""

    chunk_bytes: int = 256 * 1024
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
    """Frames read from the predecessor's stream as they come, ahead of their processing.

    The handler reads continuously (py-libp2p's Yamux resets a stream whose reader pauses
    for 5 s), also while this peer has not yet started the attempt; the session consumes
    from here. What may wait unread is capped: a predecessor cannot be more than about
    (n−1)/n·M bytes ahead of an honest successor, far below the cap.
    """

    def __init__(self, messages: MessageStream, first: Envelope, cap: int) -> None:
        self.messages = messages
        self.first = first
        self.cap = cap
        self.buffered = 0
        self.send, self.receive = trio.open_memory_channel[_Item](math.inf)

    async def pump(self) -> None:
        peer = self.messages.peer
        try:
            while (envelope := await self.messages.receive()) is not None:
                self.buffered += envelope.frame_bytes
                if self.buffered > self.cap:
                    raise RemoteProtocolError(
                        ReasonCode.OVERSIZED,
                        f"peer {peer} ran more than {self.cap} bytes ahead of this ring peer",
                        peer,
                    )
                self.send.send_nowait(envelope)
        except (RemoteProtocolError, BrokenError, ClosedError) as exc:
            self.send.send_nowait(exc)
        finally:
            self.send.close()

    async def next(self, timeout: float) -> Envelope | None:
        """The next frame; None at end of stream. Raises what the reader hit, or TIMEOUT."""
        peer = self.messages.peer
        with trio.move_on_after(timeout) as scope:
            try:
                item = await self.receive.receive()
            except trio.EndOfChannel:
                return None
        if scope.cancelled_caught:
            raise RemoteProtocolError(
                ReasonCode.TIMEOUT, f"peer {peer} sent nothing for {timeout:g} s", peer
            )
        if isinstance(item, Envelope):
            self.buffered -= item.frame_bytes
            return item
        raise item


class _Inbox:
    """Where the handler parks the predecessor's stream for a session."""

    def __init__(self, predecessor: str) -> None:
        self.predecessor = predecessor
        self.reader: _ReadAhead | None = None
        self.arrived = trio.Event()
        self.released = trio.Event()


class RingService:
    """Ring all-reduce over a transport for one local peer."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        *,
        accept_timeout: float = 10.0,
        fault: FaultPlan | None = None,
        max_read_ahead: int = 1 << 30,
    ) -> None:
        self.transport = transport
        self.max_read_ahead = max_read_ahead
        self.consortium = consortium
        self.accept_timeout = accept_timeout
        self.fault = fault
        self.exclusions: list[Exclusion] = []
        self._inboxes: dict[tuple[int, int], _Inbox] = {}
        self._changed = trio.Event()
        self._floor = (-1, -1)
        self._sent_vectors = 0
        transport.serve(RING_PROTOCOL, self._handle)

    @property
    def local_peer(self) -> str:
        """This peer's ID."""
        return self.transport.local_peer

    def _reject(self, round: int, peer: str, reason: ReasonCode, detail: str) -> None:
        log.info("ring: rejected %s in round %d: %s (%s)", peer, round, detail, reason)
        self.exclusions.append(Exclusion(round, peer, reason, detail))

    async def _handle(self, stream: Stream) -> None:
        me = self.local_peer
        messages = MessageStream(stream, self.consortium, me)
        try:
            first = await messages.receive(self.accept_timeout)
        except RemoteProtocolError as exc:
            self._reject(-1, stream.remote_peer, exc.reason, str(exc))
            return
        if first is None:
            return
        message = first.message
        if not isinstance(message, RingChunk):
            self._reject(
                message.round,
                stream.remote_peer,
                ReasonCode.UNEXPECTED_STAGE,
                f"a ring stream opened with a {type(message).__name__} frame",
            )
            return
        key = (message.round, message.attempt)
        reader = _ReadAhead(messages, first, self.max_read_ahead)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.pump)
            inbox = await self._wait_inbox(key)
            if inbox is None:
                stale = key < self._floor
                self._reject(
                    message.round,
                    stream.remote_peer,
                    ReasonCode.WRONG_ROUND if stale else ReasonCode.TIMEOUT,
                    f"ring stream for round {key[0]} attempt {key[1]} "
                    + ("arrived after that attempt was over" if stale else "matched no attempt"),
                )
            elif stream.remote_peer != inbox.predecessor or inbox.reader is not None:
                self._reject(
                    message.round,
                    stream.remote_peer,
                    ReasonCode.UNEXPECTED_STAGE if inbox.reader is None else ReasonCode.DUPLICATE,
                    f"peer {stream.remote_peer} is not this peer's ring predecessor "
                    f"{inbox.predecessor} or opened a second stream",
                )
            else:
                inbox.reader = reader
                inbox.arrived.set()
                await inbox.released.wait()
            nursery.cancel_scope.cancel()

    async def _wait_inbox(self, key: tuple[int, int]) -> _Inbox | None:
        found: _Inbox | None = None
        with trio.move_on_after(self.accept_timeout):
            while key not in self._inboxes and key >= self._floor:
                await self._changed.wait()
            found = self._inboxes.get(key)
        return found

    def _register(self, key: tuple[int, int], inbox: _Inbox) -> None:
        self._floor = max(self._floor, key)
        self._inboxes[key] = inbox
        self._changed.set()
        self._changed = trio.Event()

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
        me = self.local_peer
        if me not in order:
            raise LocalProtocolError(f"peer {me} is not in the ring {order}")
        rank, size = order.index(me), len(order)
        core = RingAllReduce(
            vector,
            rank,
            size,
            round=round,
            attempt=attempt,
            chunk_bytes=config.chunk_bytes,
            modulus_bits=config.modulus_bits,
        )
        counts = ByteCounts()
        key = (round, attempt)
        if size == 1:
            core.start()
            self._floor = max(self._floor, key)
            return RingResult(core.result, order, round, attempt, counts)
        if key in self._inboxes or key < self._floor:
            raise LocalProtocolError(f"round {round} attempt {attempt} was already run here")
        successor, predecessor = order[(rank + 1) % size], order[(rank - 1) % size]
        inbox = _Inbox(predecessor)
        self._register(key, inbox)
        outbox_send, outbox_recv = trio.open_memory_channel[RingChunk](math.inf)
        faults: list[RemoteProtocolError] = []
        crashed: list[InjectedCrash] = []

        def accuse(reason: ReasonCode, peer: str, detail: str) -> None:
            faults.append(RemoteProtocolError(reason, detail, peer))

        async def send_all() -> None:
            try:
                with trio.move_on_after(config.timeout) as scope:
                    stream = await self._open(successor)
                if scope.cancelled_caught:
                    accuse(ReasonCode.TIMEOUT, successor, f"could not reach {successor}")
                    return
            except (BrokenError, RemoteProtocolError) as exc:
                accuse(ReasonCode.DROPPED, successor, f"could not reach {successor}: {exc}")
                return
            out = MessageStream(stream, self.consortium, me)
            try:
                await self._send_stream(out, outbox_recv, config.timeout)
            except InjectedCrash as exc:
                crashed.append(exc)
            except (BrokenError, ClosedError) as exc:
                accuse(ReasonCode.DROPPED, successor, f"stream to {successor} broke: {exc}")
            finally:
                counts.add(out.counts)
                await stream.aclose()

        async def receive_all() -> None:
            try:
                with trio.move_on_after(config.timeout) as scope:
                    await inbox.arrived.wait()
                if scope.cancelled_caught or inbox.reader is None:
                    accuse(
                        ReasonCode.TIMEOUT,
                        predecessor,
                        f"predecessor {predecessor} opened no stream in {config.timeout:g} s",
                    )
                    return
                reader = inbox.reader
                envelope: Envelope | None = reader.first
                try:
                    while True:
                        if envelope is None:
                            raise BrokenError(f"predecessor {predecessor} ended the stream early")
                        message = envelope.message
                        if not isinstance(message, RingChunk):
                            raise RemoteProtocolError(
                                ReasonCode.UNEXPECTED_STAGE,
                                f"peer {predecessor} sent a {type(message).__name__} "
                                "inside a ring stream",
                                predecessor,
                            )
                        for out in core.receive(message, predecessor):
                            outbox_send.send_nowait(out)
                        if core.done:
                            break
                        envelope = await reader.next(config.timeout)
                    outbox_send.close()
                except RemoteProtocolError as exc:
                    accuse(exc.reason, predecessor, str(exc))
                except (BrokenError, ClosedError) as exc:
                    # ClosedError: our own side went away under us (this peer is crashing).
                    accuse(ReasonCode.DROPPED, predecessor, str(exc))
                finally:
                    counts.add(reader.messages.counts)
            finally:
                inbox.released.set()

        try:
            async with trio.open_nursery() as nursery:

                async def watch(task: Any) -> None:
                    await task()
                    if faults or crashed:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(watch, send_all)
                for first in core.start():
                    outbox_send.send_nowait(first)
                nursery.start_soon(watch, receive_all)
        finally:
            inbox.released.set()
            self._inboxes.pop(key, None)
            # Streams for this attempt arriving from now on are late: reject, don't wait.
            self._floor = max(self._floor, (round, attempt + 1))
            self._changed.set()
            self._changed = trio.Event()
        if crashed:
            raise crashed[0]
        if faults or not core.done:
            core.fail()
            fault = (
                faults[0]
                if faults
                else RemoteProtocolError(
                    ReasonCode.PROTOCOL_VIOLATION, "ring attempt ended unfinished", predecessor
                )
            )
            self._reject(round, fault.peer or predecessor, fault.reason, str(fault))
            raise fault
        return RingResult(core.result, order, round, attempt, counts)

    async def _open(self, successor: str) -> Stream:
        # Retried until the caller's timeout: a first dial can lose a race with the peer
        # dialling us. A refusal by the roster gate is final.
        delay = 0.05
        while True:
            try:
                return await self.transport.open_stream(successor, RING_PROTOCOL)
            except BrokenError:
                await trio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def _send_stream(
        self,
        out: MessageStream,
        outbox: trio.MemoryReceiveChannel[RingChunk],
        timeout: float,
    ) -> None:
        async for chunk in outbox:
            await self._send_chunk(out, chunk)
        await out.stream.send_eof()
        # Linger until the successor has read everything and closed its side, so that no
        # transport drops buffered chunks when we close; a failure past this point belongs
        # to the successor's own successor to detect.
        with trio.move_on_after(timeout):
            try:
                while await out.stream.receive_some():
                    pass
            except BrokenError:
                pass

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
