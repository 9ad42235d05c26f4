"""The one codec of the collectives: messages to frames to bytes, and back.

Theory of operation: ``encode`` turns a message of ``p2pfed.collectives.messages`` into one
``p2pfed.wire`` CONTROL frame (which carries consortium, round, sender and a per-stream
sequence number); the frame payload is one kind byte, a small fixed header for the message
and, for vector messages, the raw words. ``Decoder`` is sans-I/O: feed it bytes as they
arrive and pull whole ``Envelope`` objects out; the wire decoder caps every length before it
buffers, so a hostile peer cannot make it hold more than one maximal frame.

``MessageStream`` is the thin async layer over a transport ``Stream``: it numbers outgoing
frames, checks incoming ones (consortium, claimed sender = authenticated peer, strictly
increasing sequence numbers, else ``REPLAY``) and counts payload bytes (vector words) apart
from framing bytes (everything else), so drivers can report both.

Everything a peer can get wrong raises ``RemoteProtocolError`` with a reason code and the
peer; the stream broken under us raises ``BrokenError``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import trio

from p2pfed.collectives.messages import (
    MAX_CHUNK_BYTES,
    MAX_COHORT,
    Abort,
    Cohort,
    Commit,
    Contributors,
    Done,
    GossipValue,
    Message,
    ModelBase,
    Ready,
    RingChunk,
    SecAggData,
    WordType,
)
from p2pfed.errors import (
    BrokenError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.transport.base import Stream
from p2pfed.wire import Frame, FrameDecoder, FrameType, Limits, encode_frame
from p2pfed.wire.reader import BodyReader

LIMITS = Limits(
    max_payload=MAX_CHUNK_BYTES + 64 * 1024,
    max_frame_bytes=MAX_CHUNK_BYTES + 65 * 1024,
)
"""Wire limits for collectives: one maximal chunk plus room for a full cohort listing."""

_KINDS: dict[type[Message], int] = {
    RingChunk: 1,
    Ready: 2,
    Cohort: 3,
    Abort: 4,
    GossipValue: 5,
    Done: 6,
    Commit: 7,
    SecAggData: 8,
    Contributors: 9,
}
_RING = struct.Struct("<BHIB")
_GOSSIP = struct.Struct("<QQB")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded frame: who sent it, for which consortium, its sequence number and message."""

    sender: str
    consortium: str
    seq: int
    message: Message
    frame_bytes: int
    payload_bytes: int


def _short(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 255:
        raise LocalProtocolError(f"field of {len(raw)} bytes exceeds 255 bytes")
    return bytes([len(raw)]) + raw


def _body(message: Message) -> tuple[bytes, bytes]:
    """The message-specific header and the raw vector words (empty for control messages)."""
    if isinstance(message, RingChunk):
        head = _RING.pack(message.attempt, message.step, message.chunk, message.word)
        return head, message.data
    if isinstance(message, GossipValue):
        return _GOSSIP.pack(message.offset, message.total, message.word), message.data
    if isinstance(message, Ready):
        parts = [struct.pack("<BHH", message.attempt, message.takeover, len(message.accused))]
        for peer, reason in message.accused:
            parts += [_short(peer), _short(reason)]
        parts.append(_U64.pack(message.roster_version))
        parts.append(_BASE.pack(message.base.round, message.base.digest))
        return b"".join(parts), b""
    if isinstance(message, Cohort):
        parts = [
            struct.pack("<BH", message.attempt, message.takeover),
            _short(message.coordinator),
            struct.pack("<H", len(message.members)),
        ]
        parts += [_short(member) for member in message.members]
        parts.append(_short(message.signature))
        parts.append(_U64.pack(message.roster_version))
        parts.append(_BASE.pack(message.base.round, message.base.digest))
        return b"".join(parts), b""
    if isinstance(message, SecAggData):
        return b"", message.data
    if isinstance(message, Contributors):
        parts = [struct.pack("<H", len(message.members))]
        parts += [_short(member) for member in message.members]
        return b"".join(parts), b""
    if isinstance(message, Done | Commit):
        return struct.pack("<B", message.attempt), b""
    head = struct.pack("<B", message.attempt) + _short(message.accused) + _short(message.reason)
    return head, b""


def encode(message: Message, consortium: str, sender: str, seq: int) -> tuple[bytes, int]:
    """Encode one message as a frame; returns the bytes and how many of them are payload."""
    head, data = _body(message)
    body = b"".join((bytes([_KINDS[type(message)]]), head, data))
    frame = Frame(FrameType.CONTROL, consortium, message.round, sender, seq, body)
    payload = len(data) if isinstance(message, RingChunk | GossipValue) else 0
    return encode_frame(frame, LIMITS), payload


_U8H = struct.Struct("<BH")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_BASE = struct.Struct("<q32s")  # base model: the round that committed it (-1: initial), digest


def _word(code: int, sender: str) -> WordType:
    try:
        return WordType(code)
    except ValueError:
        raise RemoteProtocolError(
            ReasonCode.WRONG_DTYPE, f"peer {sender} sent unknown word type {code}", sender
        ) from None


def _roster_version(version: int, sender: str) -> int:
    if version >= 1 << 63:
        raise RemoteProtocolError(
            ReasonCode.MALFORMED, f"peer {sender} sent roster version {version}", sender
        )
    return version


def _decode_body(kind: int, round: int, body: BodyReader) -> Message:
    sender = body.peer or ""
    if kind == 1:
        attempt, step, chunk, word = body.unpack(_RING)
        return RingChunk(round, attempt, step, chunk, _word(word, sender), body.rest())
    if kind == 5:
        offset, total, word = body.unpack(_GOSSIP)
        return GossipValue(round, offset, total, _word(word, sender), body.rest())
    if kind == 2:
        attempt, takeover = body.unpack(_U8H)
        count = body.count(_U16, MAX_COHORT, "accused peers")
        accused = tuple((body.short(), body.short()) for _ in range(count))
        (roster_version,) = body.unpack(_U64)
        version = _roster_version(roster_version, sender)
        return Ready(round, attempt, takeover, accused, version, ModelBase(*body.unpack(_BASE)))
    if kind == 3:
        attempt, takeover = body.unpack(_U8H)
        coordinator = body.short()
        count = body.count(_U16, MAX_COHORT, "cohort members")
        members = tuple(body.short() for _ in range(count))
        (n,) = body.take(1)
        signature = body.take(n)
        (roster_version,) = body.unpack(_U64)
        return Cohort(
            round,
            attempt,
            takeover,
            coordinator,
            members,
            signature,
            _roster_version(roster_version, sender),
            ModelBase(*body.unpack(_BASE)),
        )
    if kind == 4:
        (attempt,) = body.take(1)
        return Abort(round, attempt, body.short(), body.short())
    if kind == 8:
        return SecAggData(round, body.rest())
    if kind == 9:
        count = body.count(_U16, MAX_COHORT, "contributors")
        return Contributors(round, tuple(body.short() for _ in range(count)))
    if kind in (6, 7):
        (attempt,) = body.take(1)
        return Done(round, attempt) if kind == 6 else Commit(round, attempt)
    raise RemoteProtocolError(
        ReasonCode.UNKNOWN_TYPE, f"peer {sender} sent unknown frame kind {kind}", sender
    )


class Decoder:
    """Sans-I/O frame decoder: ``feed`` bytes, then call ``next`` until it returns None."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self._frames = FrameDecoder(LIMITS)

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned."""
        return self._frames.buffered

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._frames.feed(data)

    def next(self) -> Envelope | None:
        """The next whole frame, or None if more bytes are needed."""
        peer = self._peer
        try:
            frame = self._frames.next_frame()
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(exc.reason, f"peer {peer}: {exc}", peer) from None
        if frame is None:
            return None
        if frame.type is not FrameType.CONTROL or not frame.payload:
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_TYPE,
                f"peer {peer} sent a {frame.type.name} frame where a collective message was due",
                peer,
            )
        body = memoryview(frame.payload)
        try:
            reader = BodyReader(body[1:], f"frame from {peer}", peer)
            message = _decode_body(body[0], frame.round, reader)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"peer {peer} sent an invalid message: {exc}", peer
            ) from None
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"peer {peer} sent a non-UTF-8 identifier", peer
            ) from None
        finally:
            body.release()
        payload = len(message.data) if isinstance(message, RingChunk | GossipValue) else 0
        # Secure-aggregation messages are protocol overhead, not vector payload: they count
        # as framing.
        return Envelope(
            frame.sender, frame.consortium, frame.seq, message, frame.encoded_size, payload
        )


@dataclass(slots=True)
class ByteCounts:
    """Bytes sent and received on one or more streams, payload apart from framing."""

    payload_sent: int = 0
    framing_sent: int = 0
    payload_received: int = 0
    framing_received: int = 0

    def add(self, other: ByteCounts) -> None:
        """Add another counter into this one."""
        self.payload_sent += other.payload_sent
        self.framing_sent += other.framing_sent
        self.payload_received += other.payload_received
        self.framing_received += other.framing_received


class MessageStream:
    """Checked, counted message exchange over one transport stream."""

    def __init__(self, stream: Stream, consortium: str, local_peer: str) -> None:
        self.stream = stream
        self.peer = stream.remote_peer
        self._consortium = consortium
        self._local = local_peer
        self._decoder = Decoder(self.peer)
        self._next_seq = 0
        self._last_seq = -1
        self.counts = ByteCounts()

    async def send(self, message: Message) -> None:
        """Frame and send one message; ``BrokenError`` if the stream breaks."""
        frame, payload = encode(message, self._consortium, self._local, self._next_seq)
        self._next_seq += 1
        await self.stream.send_all(frame)
        self.counts.payload_sent += payload
        self.counts.framing_sent += len(frame) - payload

    async def receive(self, timeout: float = math.inf) -> Envelope | None:
        """The next checked envelope, or None at a clean end of stream.

        Raises ``RemoteProtocolError`` (``TIMEOUT`` after ``timeout`` seconds of silence,
        ``WRONG_CONSORTIUM``, ``UNKNOWN_PEER`` for a forged sender, ``REPLAY`` for a repeated
        sequence number, or a decoding reason) and ``BrokenError`` for a broken stream.
        """
        while True:
            envelope = self._decoder.next()
            if envelope is not None:
                self._check(envelope)
                self.counts.payload_received += envelope.payload_bytes
                self.counts.framing_received += envelope.frame_bytes - envelope.payload_bytes
                return envelope
            with trio.move_on_after(timeout) as scope:
                data = await self.stream.receive_some(1 << 20)
            if scope.cancelled_caught:
                raise RemoteProtocolError(
                    ReasonCode.TIMEOUT,
                    f"peer {self.peer} sent nothing for {timeout:g} s",
                    self.peer,
                )
            if not data:
                if self._decoder.next() is None and self._decoder.buffered:
                    raise BrokenError(f"stream from {self.peer} ended inside a frame")
                return None
            self._decoder.feed(data)

    def _check(self, envelope: Envelope) -> None:
        peer = self.peer
        if envelope.consortium != self._consortium:
            raise RemoteProtocolError(
                ReasonCode.WRONG_CONSORTIUM,
                f"peer {peer} sent a frame for consortium {envelope.consortium!r}",
                peer,
            )
        if envelope.sender != peer:
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_PEER,
                f"peer {peer} sent a frame claiming to be {envelope.sender}",
                peer,
            )
        if envelope.seq <= self._last_seq:
            raise RemoteProtocolError(
                ReasonCode.REPLAY,
                f"peer {peer} repeated frame number {envelope.seq} (last {self._last_seq})",
                peer,
            )
        self._last_seq = envelope.seq
