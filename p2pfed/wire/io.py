"""Trio drivers for the wire codec: frames and chunked tensors over a ``Stream``.

Theory of operation: ``read_frame`` reads a frame's 28-byte header, checks it with the same
rules as ``FrameDecoder`` (so an oversized frame is refused before its body is read or
buffered), then reads the exact body length; it never reads past the frame, so the next
frame stays in the stream for the next call. Every single ``receive_some`` is bounded by
``trio.fail_after(timeout)``: a silent peer costs at most ``timeout`` per read, not forever.

``send_tensor``/``receive_tensor`` move a tensor as a TENSOR_HEADER frame then
TENSOR_CHUNK frames. The receiver answers every ``window`` chunks (and the last) with an
ACK carrying its cumulative count; the sender never has more than ``2 * window`` chunks
unacknowledged. The final ACK is sent only once the digest (and, if asked, finiteness) has
been verified, so when ``send_tensor`` returns the receiver has accepted the tensor. The
ACK exists because py-libp2p's Yamux resets a stream whose reader stalls for 5 s: bounding
what is in flight keeps a slow receiver from tripping that reset, and it tells the sender
the bytes really arrived. The receiver allocates the tensor only
after checking the header against its ``Limits``, hashes chunks as they arrive, and on any
protocol error sends a REJECT frame (best effort) before raising.

Errors: ``RemoteProtocolError`` (reason code, peer set) for what the peer sent;
``ReadTimeout`` / ``BrokenError`` when the peer goes silent or the stream breaks;
``StreamEnded`` for a clean end of stream between frames; ``RejectedByPeer`` when the
receiver refused our tensor.
"""

from __future__ import annotations

import contextlib
import math

import numpy.typing as npt
import trio

from p2pfed.errors import (
    BrokenError,
    ClosedError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.transport.base import Stream
from p2pfed.wire.frames import (
    _OFF_CONSORTIUM_LEN,
    _OFF_SENDER_LEN,
    DEFAULT_LIMITS,
    HEADER_SIZE,
    Frame,
    FrameType,
    Limits,
    _check_prefix,
    _frame_from_parts,
    decode_reject,
    encode_frame,
)
from p2pfed.wire.tensor import ChunkedTensorHeader, Tensor, tensor_view
from p2pfed.wire.transfer import TensorReceipt, check_ack

DEFAULT_TIMEOUT = 30.0
DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_WINDOW = 8
_REJECT_TIMEOUT = 1.0
_MAX_READ = 1 << 20


class ReadTimeout(BrokenError):
    """A single read from the peer took longer than the per-read timeout."""


class StreamEnded(BrokenError):
    """The peer ended the stream cleanly between frames where a frame was expected."""


class RejectedByPeer(BrokenError):
    """The peer answered with a REJECT frame; ``reason`` is its reason code as text."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _receive_some(stream: Stream, max_bytes: int, timeout: float) -> bytes:
    try:
        with trio.fail_after(timeout):
            return await stream.receive_some(max_bytes)
    except trio.TooSlowError:
        raise ReadTimeout(
            f"peer {stream.remote_peer} sent nothing for {timeout:g} s while a frame was due"
        ) from None


async def _receive_exactly(stream: Stream, n: int, timeout: float) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        chunk = await _receive_some(stream, min(left, _MAX_READ), timeout)
        if not chunk:
            raise BrokenError(
                f"stream from {stream.remote_peer} ended inside a frame "
                f"({n - left} of {n} body bytes)"
            )
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _blame(exc: RemoteProtocolError, stream: Stream) -> RemoteProtocolError:
    if exc.peer is None:
        exc.peer = stream.remote_peer
    return exc


async def write_frame(
    stream: Stream,
    frame: Frame,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float | None = None,
) -> None:
    """Send ``frame``; with ``timeout``, raise ``BrokenError`` if the peer will not take it.

    Raises ``LocalProtocolError`` if the frame exceeds ``limits``.
    """
    data = encode_frame(frame, limits)
    try:
        with trio.fail_after(math.inf if timeout is None else timeout):
            await stream.send_all(data)
    except trio.TooSlowError:
        raise BrokenError(
            f"peer {stream.remote_peer} did not accept a {len(data)}-byte frame within "
            f"{timeout:g} s"
        ) from None


async def read_frame(
    stream: Stream,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    check_sender: bool = True,
) -> Frame:
    """Read exactly one frame from ``stream``.

    With ``check_sender`` (the default) the frame's sender must be the authenticated peer
    at the other end, so no peer can speak in another's name.

    Raises ``RemoteProtocolError`` (MALFORMED, UNKNOWN_VERSION, UNKNOWN_TYPE, OVERSIZED,
    PROTOCOL_VIOLATION), ``ReadTimeout``, ``StreamEnded`` (clean end before a frame),
    ``BrokenError`` (end or break inside a frame).
    """
    header = bytearray()
    try:
        while len(header) < HEADER_SIZE:
            data = await _receive_some(stream, HEADER_SIZE - len(header), timeout)
            if not data:
                if header:
                    raise BrokenError(
                        f"stream from {stream.remote_peer} ended inside a frame header"
                    )
                raise StreamEnded(f"peer {stream.remote_peer} ended the stream")
            header += data
            total = _check_prefix(header, limits)
        assert total is not None  # a whole header always yields the frame size
        string_len = header[_OFF_CONSORTIUM_LEN] + header[_OFF_SENDER_LEN]
        strings = await _receive_exactly(stream, string_len, timeout)
        # Read apart from the strings so a one-part payload is used without a copy.
        payload = await _receive_exactly(stream, total - HEADER_SIZE - string_len, timeout)
        frame = _frame_from_parts(header, strings, payload)
    except RemoteProtocolError as exc:
        raise _blame(exc, stream) from None
    if check_sender and frame.sender != stream.remote_peer:
        raise RemoteProtocolError(
            ReasonCode.PROTOCOL_VIOLATION,
            f"frame claims sender {frame.sender!r} but the stream is from {stream.remote_peer}",
            stream.remote_peer,
        )
    return frame


def _rejection(frame: Frame, stream: Stream, limits: Limits) -> RejectedByPeer:
    reason, message = decode_reject(frame.payload, limits)
    return RejectedByPeer(f"peer {stream.remote_peer} rejected the transfer: {message}", reason)


async def send_tensor(
    stream: Stream,
    array: Tensor,
    *,
    consortium: str,
    round: int,
    sender: str,
    seq: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    window: int = DEFAULT_WINDOW,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Send ``array`` in chunks and wait until the receiver has acknowledged every chunk.

    Frames use sequence numbers ``seq`` (the header), ``seq + 1``, ... (the chunks);
    returns the next unused sequence number. A contiguous little-endian array is sent from
    its own memory without a full copy, so do not modify it until this returns.

    Raises ``DataError`` (unsupported array), ``LocalProtocolError`` (chunk size or window
    beyond ``limits``), ``RejectedByPeer``, ``RemoteProtocolError`` (a bad ACK),
    ``ReadTimeout`` / ``BrokenError``.
    """
    header, raw = tensor_view(array)
    if chunk_bytes > limits.max_payload or window > limits.max_ack_window:
        raise LocalProtocolError(
            f"chunk size {chunk_bytes} and window {window} must be at most "
            f"{limits.max_payload} and {limits.max_ack_window}"
        )
    plan = ChunkedTensorHeader(header, chunk_bytes, window)
    n = plan.n_chunks

    def frame(ftype: FrameType, index: int, payload: bytes) -> Frame:
        return Frame(ftype, consortium, round, sender, seq + index, payload)

    async def wait_ack(acked: int, sent: int) -> int:
        return await _wait_ack(stream, (consortium, round), acked, sent, limits, timeout)

    acked = 0
    try:
        await write_frame(stream, frame(FrameType.TENSOR_HEADER, 0, plan.encode()), limits, timeout)
        for i in range(n):
            while i - acked >= 2 * window:
                acked = await wait_ack(acked, i)
            start = i * chunk_bytes
            chunk = bytes(raw[start : start + chunk_bytes])
            await write_frame(stream, frame(FrameType.TENSOR_CHUNK, 1 + i, chunk), limits, timeout)
    except (RejectedByPeer, ReadTimeout):
        raise
    except BrokenError as exc:
        # A receiver that refuses the tensor sends REJECT and closes: our next write breaks,
        # but the REJECT (the real reason) may be waiting to be read.
        rejection = await _pending_rejection(stream, limits)
        if rejection is None:
            raise
        raise rejection from exc
    while acked < n:
        acked = await wait_ack(acked, n)
    return seq + 1 + n


async def _wait_ack(
    stream: Stream,
    transfer: tuple[str, int],
    acked: int,
    sent: int,
    limits: Limits,
    timeout: float,
) -> int:
    """The count of the next ACK of ``transfer`` (consortium, round); raises a REJECT."""
    reply = await read_frame(stream, limits, timeout)
    if reply.type is FrameType.REJECT:
        raise _rejection(reply, stream, limits)
    try:
        return check_ack(reply, *transfer, acked, sent)
    except RemoteProtocolError as exc:
        raise _blame(exc, stream) from None


async def _pending_rejection(stream: Stream, limits: Limits) -> RejectedByPeer | None:
    try:
        while True:
            reply = await read_frame(stream, limits, _REJECT_TIMEOUT)
            if reply.type is FrameType.REJECT:
                return _rejection(reply, stream, limits)
    except (BrokenError, ClosedError, RemoteProtocolError):
        return None


async def _send_reject(stream: Stream, frame: Frame, limits: Limits) -> None:
    # Best effort: the stream may already be broken, and the rejection must not mask the
    # error that caused it.
    with contextlib.suppress(BrokenError, ClosedError):
        await write_frame(stream, frame, limits, _REJECT_TIMEOUT)


async def receive_tensor(
    stream: Stream,
    *,
    local_peer: str,
    consortium: str | None = None,
    round: int | None = None,
    expected_shape: tuple[int, ...] | None = None,
    expected_dtype: npt.DTypeLike | None = None,
    finite: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
) -> Tensor:
    """Receive one tensor sent by ``send_tensor``; returns it as a writable array.

    ``local_peer`` is our own peer ID (the sender of the ACKs). With ``consortium`` or
    ``round`` given, frames for another consortium or round are refused. On a protocol
    error a REJECT frame with the reason is sent back before raising.

    Raises ``RemoteProtocolError`` with MALFORMED, OVERSIZED, UNKNOWN_*, WRONG_CONSORTIUM,
    WRONG_ROUND, WRONG_SHAPE, WRONG_DTYPE, OUT_OF_ORDER, DIGEST_MISMATCH, NON_FINITE or
    PROTOCOL_VIOLATION; ``ReadTimeout`` / ``BrokenError`` / ``StreamEnded``.
    """
    receipt = TensorReceipt(
        local_peer,
        consortium=consortium,
        round=round,
        expected_shape=expected_shape,
        expected_dtype=expected_dtype,
        finite=finite,
        limits=limits,
    )
    try:
        receipt.start(await read_frame(stream, limits, timeout))
        while not receipt.complete:
            ack = receipt.take(await read_frame(stream, limits, timeout))
            if ack is not None:
                await write_frame(stream, ack, limits, timeout)
        array, last_ack = receipt.finish()
        if last_ack is not None:
            await write_frame(stream, last_ack, limits, timeout)
        return array
    except RemoteProtocolError as exc:
        _blame(exc, stream)
        await _send_reject(stream, receipt.reject(exc), limits)
        raise
