"""Versioned, length-prefixed frames and their sans-I/O decoder.

Theory of operation: every message between peers travels as one frame. A frame is a fixed
28-byte header followed by two short strings and an opaque payload (all integers big-endian):

    offset  size  field
    0       4     magic b"P2PF"
    4       1     wire version (1)
    5       1     frame type (``FrameType``)
    6       1     consortium id length C (bytes, UTF-8)
    7       1     sender peer ID length S (bytes, UTF-8)
    8       8     round (unsigned)
    16      8     sequence number (unsigned)
    24      4     payload length P
    28      C     consortium id
    28+C    S     sender peer ID
    28+C+S  P     payload

The header declares every length, so the decoder knows the size of a frame before any body
byte arrives and refuses one over its ``Limits`` *before* buffering it. Checks run field by
field in offset order and each needs only the bytes up to its field, so whatever way the
input is split (one byte at a time, or all at once) the same frames, or the same first
error, come out. A decoder that has raised stays failed: a stream that sent garbage once is
not trusted to resynchronise.

No I/O here: ``FrameDecoder.feed`` takes bytes, ``next_frame`` returns frames; the trio
driver lives in ``p2pfed.wire.io``. Errors: ``RemoteProtocolError`` (with a ``ReasonCode``)
for anything a peer sent; ``LocalProtocolError`` when our own code builds an invalid frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError

MAGIC = b"P2PF"
WIRE_VERSION = 1
SUPPORTED_VERSIONS = frozenset({WIRE_VERSION})

_HEADER = struct.Struct(">4sBBBBQQI")
HEADER_SIZE = _HEADER.size  # 28
_U64_MAX = (1 << 64) - 1

# What the encoding itself can represent; a ``Limits`` may only be tighter.
FORMAT_MAX_STRING = 255
FORMAT_MAX_PAYLOAD = (1 << 32) - 1

# Offsets of the fields checked before the body arrives, in check order.
_OFF_VERSION = 4
_OFF_TYPE = 5
_OFF_CONSORTIUM_LEN = 6
_OFF_SENDER_LEN = 7
_OFF_PAYLOAD_LEN = 24


class FrameType(enum.IntEnum):
    """What a frame carries; one byte on the wire. Values are stable: never renumber."""

    HELLO = 1
    """Opens a session: payload is protocol-defined (for example the roster version)."""
    CONTROL = 2
    """A protocol message whose payload the protocol above encodes."""
    TENSOR_HEADER = 3
    """Starts a chunked tensor: dtype, shape, digest, chunk size and ACK window."""
    TENSOR_CHUNK = 4
    """A slice of a tensor's raw little-endian bytes."""
    ACK = 5
    """Receiver's cumulative count of tensor chunks received (8-byte unsigned)."""
    REJECT = 6
    """Explicit rejection: a reason code and a one-sentence message."""
    BYE = 7
    """The sender is done with this stream."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps applied to everything received; the decoder refuses more before allocating.

    ``max_frame_bytes`` bounds a whole frame (header, strings, payload); ``max_payload``
    the payload alone. Tensor caps bound what ``receive_tensor`` will allocate.
    """

    max_frame_bytes: int = (4 << 20) + 1024
    max_payload: int = 4 << 20
    max_consortium_len: int = 64
    max_sender_len: int = 128
    max_tensor_bytes: int = 1 << 30
    max_tensor_ndim: int = 8
    max_ack_window: int = 64
    max_message_len: int = 512

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_payload",
            "max_consortium_len",
            "max_sender_len",
            "max_tensor_bytes",
            "max_tensor_ndim",
            "max_ack_window",
            "max_message_len",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(f"Limits.{name} must be a positive integer, not {value!r}")
        if self.max_consortium_len > FORMAT_MAX_STRING or self.max_sender_len > FORMAT_MAX_STRING:
            raise LocalProtocolError(
                f"Limits string caps must be at most {FORMAT_MAX_STRING} bytes (a 1-byte length)"
            )
        if self.max_payload > FORMAT_MAX_PAYLOAD:
            raise LocalProtocolError(
                f"Limits.max_payload must be at most {FORMAT_MAX_PAYLOAD} (a 4-byte length)"
            )
        if self.max_frame_bytes <= HEADER_SIZE:
            raise LocalProtocolError(
                f"Limits.max_frame_bytes must exceed the {HEADER_SIZE}-byte header"
            )
        if self.max_tensor_ndim > 255:
            raise LocalProtocolError("Limits.max_tensor_ndim must be at most 255 (a 1-byte count)")


DEFAULT_LIMITS = Limits()


def _check_text(value: object, what: str, cap: int) -> bytes:
    """UTF-8 bytes of ``value`` if it is a printable string of at most ``cap`` bytes."""
    if not isinstance(value, str):
        raise LocalProtocolError(f"frame {what} must be a str, not {type(value).__name__}")
    if not value.isprintable():
        raise LocalProtocolError(f"frame {what} {value!r} contains non-printable characters")
    raw = value.encode("utf-8")
    if len(raw) > cap:
        raise LocalProtocolError(f"frame {what} is {len(raw)} bytes; the limit is {cap}")
    return raw


def _check_u64(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise LocalProtocolError(f"frame {what} must be an integer in 0..2**64-1, not {value!r}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One wire message; validated on construction against the format's own caps."""

    type: FrameType
    consortium: str
    round: int
    sender: str
    seq: int
    payload: bytes = b""
    version: int = field(default=WIRE_VERSION, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.type, FrameType):
            raise LocalProtocolError(f"frame type must be a FrameType, not {self.type!r}")
        if self.version not in SUPPORTED_VERSIONS:
            raise LocalProtocolError(f"wire version {self.version!r} is not supported")
        _check_text(self.consortium, "consortium id", FORMAT_MAX_STRING)
        _check_text(self.sender, "sender", FORMAT_MAX_STRING)
        _check_u64(self.round, "round")
        _check_u64(self.seq, "sequence number")
        if not isinstance(self.payload, bytes):
            raise LocalProtocolError(
                f"frame payload must be bytes, not {type(self.payload).__name__}"
            )
        if len(self.payload) > FORMAT_MAX_PAYLOAD:
            raise LocalProtocolError(f"frame payload of {len(self.payload)} bytes is too large")

    @property
    def encoded_size(self) -> int:
        """Bytes this frame takes on the wire."""
        return (
            HEADER_SIZE
            + len(self.consortium.encode("utf-8"))
            + len(self.sender.encode("utf-8"))
            + len(self.payload)
        )


def encode_frame(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The wire bytes of ``frame``.

    Raises ``LocalProtocolError`` if the frame exceeds ``limits``: a peer with the same
    limits would refuse it, so it is our mistake to send it.
    """
    consortium = frame.consortium.encode("utf-8")
    sender = frame.sender.encode("utf-8")
    if len(consortium) > limits.max_consortium_len:
        raise LocalProtocolError(
            f"consortium id is {len(consortium)} bytes; the limit is {limits.max_consortium_len}"
        )
    if len(sender) > limits.max_sender_len:
        raise LocalProtocolError(
            f"sender is {len(sender)} bytes; the limit is {limits.max_sender_len}"
        )
    if len(frame.payload) > limits.max_payload:
        raise LocalProtocolError(
            f"payload is {len(frame.payload)} bytes; the limit is {limits.max_payload}"
        )
    total = HEADER_SIZE + len(consortium) + len(sender) + len(frame.payload)
    if total > limits.max_frame_bytes:
        raise LocalProtocolError(f"frame is {total} bytes; the limit is {limits.max_frame_bytes}")
    header = _HEADER.pack(
        MAGIC,
        frame.version,
        int(frame.type),
        len(consortium),
        len(sender),
        frame.round,
        frame.seq,
        len(frame.payload),
    )
    return b"".join((header, consortium, sender, frame.payload))


def _check_prefix(buf: bytes | bytearray, limits: Limits) -> int | None:
    """Check the header fields present in ``buf``; the frame size once the header is whole.

    Raises ``RemoteProtocolError`` for the first bad field in offset order.
    """
    have = len(buf)
    n = min(have, len(MAGIC))
    if bytes(buf[:n]) != MAGIC[:n]:
        raise RemoteProtocolError(
            ReasonCode.MALFORMED, "stream does not start a p2pfed frame (bad magic bytes)"
        )
    if have > _OFF_VERSION and buf[_OFF_VERSION] not in SUPPORTED_VERSIONS:
        raise RemoteProtocolError(
            ReasonCode.UNKNOWN_VERSION,
            f"frame has wire version {buf[_OFF_VERSION]}; this peer speaks version {WIRE_VERSION}",
        )
    if have > _OFF_TYPE and buf[_OFF_TYPE] not in _KNOWN_TYPES:
        raise RemoteProtocolError(
            ReasonCode.UNKNOWN_TYPE, f"frame has unknown type {buf[_OFF_TYPE]}"
        )
    if have > _OFF_CONSORTIUM_LEN and buf[_OFF_CONSORTIUM_LEN] > limits.max_consortium_len:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED,
            f"frame consortium id of {buf[_OFF_CONSORTIUM_LEN]} bytes exceeds the limit of "
            f"{limits.max_consortium_len}",
        )
    if have > _OFF_SENDER_LEN and buf[_OFF_SENDER_LEN] > limits.max_sender_len:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED,
            f"frame sender of {buf[_OFF_SENDER_LEN]} bytes exceeds the limit of "
            f"{limits.max_sender_len}",
        )
    if have < HEADER_SIZE:
        return None
    payload_len = int.from_bytes(buf[_OFF_PAYLOAD_LEN:HEADER_SIZE], "big")
    if payload_len > limits.max_payload:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED,
            f"frame declares a payload of {payload_len} bytes; the limit is {limits.max_payload}",
        )
    total = HEADER_SIZE + buf[_OFF_CONSORTIUM_LEN] + buf[_OFF_SENDER_LEN] + payload_len
    if total > limits.max_frame_bytes:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED,
            f"frame declares {total} bytes; the limit is {limits.max_frame_bytes}",
        )
    return total


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


def _decode_text(raw: bytes | memoryview, what: str) -> str:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(
            ReasonCode.MALFORMED, f"frame {what} is not valid UTF-8"
        ) from None
    if not text.isprintable():
        raise RemoteProtocolError(
            ReasonCode.MALFORMED, f"frame {what} contains non-printable characters"
        )
    return text


def _frame_from_parts(
    header: bytes | bytearray | memoryview, strings: bytes | memoryview, payload: bytes
) -> Frame:
    """Build a frame from its checked header, its two strings and its payload."""
    _, version, ftype, c_len, _, rnd, seq, _ = _HEADER.unpack_from(header)
    strings = memoryview(strings)
    consortium = _decode_text(strings[:c_len], "consortium id")
    sender = _decode_text(strings[c_len:], "sender")
    return Frame(FrameType(ftype), consortium, rnd, sender, seq, payload, version=version)


def _parse_frame(data: memoryview, size: int) -> Frame:
    """Build the frame at the start of ``data`` (its header checked, ``size`` bytes long)."""
    c_len, s_len = data[_OFF_CONSORTIUM_LEN], data[_OFF_SENDER_LEN]
    body = HEADER_SIZE + c_len + s_len
    # One copy of the payload, straight out of the receive buffer.
    return _frame_from_parts(
        bytes(data[:HEADER_SIZE]), bytes(data[HEADER_SIZE:body]), bytes(data[body:size])
    )


class FrameDecoder:
    """Turns a byte stream into frames, without I/O and without over-allocating.

    ``feed`` bytes as they arrive, then call ``next_frame`` until it returns ``None``.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        # Frames are consumed by advancing _pos; the consumed prefix is dropped only when it
        # is at least half the buffer, so many frames fed at once cost linear time.
        self._buf = bytearray()
        self._pos = 0
        self._frame_size: int | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def limits(self) -> Limits:
        """The caps this decoder enforces."""
        return self._limits

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; raises the decoder's earlier error if it has failed."""
        if self._error is not None:
            raise self._error
        if self._pos and 2 * self._pos >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _current_size(self) -> int | None:
        if self._error is not None:
            raise self._error
        if self._frame_size is None:
            head = bytes(self._buf[self._pos : self._pos + HEADER_SIZE])
            try:
                self._frame_size = _check_prefix(head, self._limits)
            except RemoteProtocolError as exc:
                self._error = exc
                raise
        return self._frame_size

    def next_frame(self) -> Frame | None:
        """The next whole frame, or ``None`` until more bytes are fed.

        Raises ``RemoteProtocolError`` on anything malformed, unknown or oversized; after
        that the decoder stays failed.
        """
        size = self._current_size()
        if size is None or self.buffered < size:
            return None
        try:
            with memoryview(self._buf) as view:
                frame = _parse_frame(view[self._pos :], size)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        self._pos += size
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._frame_size = None
        return frame

    def close(self) -> None:
        """Declare end of input; raises ``RemoteProtocolError`` if a frame was cut short."""
        if self._error is not None:
            raise self._error
        if self.buffered:
            self._error = RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"stream ended inside a frame ({self.buffered} bytes of an incomplete frame)",
            )
            raise self._error


_ACK = struct.Struct(">Q")


def encode_ack(count: int) -> bytes:
    """ACK payload: how many tensor chunks have been received so far."""
    return _ACK.pack(count)


def decode_ack(payload: bytes) -> int:
    """The chunk count in an ACK payload; ``RemoteProtocolError(MALFORMED)`` if ill-formed."""
    if len(payload) != _ACK.size:
        raise RemoteProtocolError(
            ReasonCode.MALFORMED, f"ACK payload is {len(payload)} bytes; expected {_ACK.size}"
        )
    count: int = _ACK.unpack(payload)[0]
    return count


def encode_reject(reason: ReasonCode, message: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """REJECT payload: the reason code, a newline, and the message (cut to the limit)."""
    text = f"{reason.value}\n{message}".encode()
    return text[: limits.max_message_len]


def decode_reject(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str]:
    """The (reason, message) of a REJECT payload.

    The reason is returned as text: a newer peer may send a code this one does not know,
    and a rejection must still be reported rather than turned into a second error.
    """
    if len(payload) > limits.max_message_len:
        raise RemoteProtocolError(
            ReasonCode.OVERSIZED,
            f"REJECT payload is {len(payload)} bytes; the limit is {limits.max_message_len}",
        )
    text = payload.decode("utf-8", errors="replace")
    reason, _, message = text.partition("\n")
    return reason, message
