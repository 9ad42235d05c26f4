"""One chunked tensor transfer as sans-I/O state: what the receiver accepts, what an ACK says.

Theory of operation: ``TensorReceipt`` is the receiver's side of ``send_tensor`` /
``receive_tensor`` (``p2pfed.wire.io`` moves the bytes). ``start`` takes the first frame,
which must be a TENSOR_HEADER for the expected consortium and round, checks the header
against the ``Limits`` and the expected shape and dtype, and allocates the buffer (only
then, so a hostile header costs nothing). ``take`` checks each TENSOR_CHUNK frame (type,
the header's consortium and round, the next sequence number, the exact size), copies and
hashes it, and returns the ACK frame due after it, if any: every ``window`` chunks but the
last. ``finish`` checks the digest (and, if asked, finiteness) and only then returns the
final ACK, so a sender whose ``send_tensor`` returns knows the tensor was accepted.
``reject`` builds the REJECT frame that answers a refused transfer.

``check_ack`` is the sender's side: an answer must be an ACK for the transfer's consortium
and round whose cumulative count moves forward and does not exceed what was sent.

Every check raises ``RemoteProtocolError`` with its reason code and no peer; the driver
names the peer at the other end.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from p2pfed.errors import ReasonCode, RemoteProtocolError
from p2pfed.wire.frames import (
    DEFAULT_LIMITS,
    Frame,
    FrameType,
    Limits,
    decode_ack,
    encode_ack,
    encode_reject,
)
from p2pfed.wire.tensor import ChunkedTensorHeader, Tensor, array_from_raw, check_finite


class TensorReceipt:
    """The receiver's state of one tensor transfer; see the module docstring."""

    def __init__(
        self,
        local_peer: str,
        *,
        consortium: str | None = None,
        round: int | None = None,
        expected_shape: tuple[int, ...] | None = None,
        expected_dtype: npt.DTypeLike | None = None,
        finite: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.local_peer = local_peer
        self.consortium = consortium
        self.round = round
        self.expected_shape = expected_shape
        self.expected_dtype = expected_dtype
        self.finite = finite
        self.limits = limits
        self.first: Frame | None = None
        self.taken = 0
        self._plan: ChunkedTensorHeader | None = None
        self._buf: npt.NDArray[np.uint8] = np.empty(0, dtype=np.uint8)
        self._offset = 0
        self._hasher = hashlib.sha256()

    @property
    def plan(self) -> ChunkedTensorHeader:
        """The transfer's header; only after ``start``."""
        assert self._plan is not None, "start() first"
        return self._plan

    @property
    def complete(self) -> bool:
        """True once every chunk was taken."""
        return self.taken == self.plan.n_chunks

    def start(self, first: Frame) -> None:
        """Check the first frame (the header) and allocate the buffer."""
        self.first = first
        if first.type is not FrameType.TENSOR_HEADER:
            raise RemoteProtocolError(
                ReasonCode.PROTOCOL_VIOLATION,
                f"expected a TENSOR_HEADER frame, got {first.type.name}",
            )
        if self.consortium is not None and first.consortium != self.consortium:
            raise RemoteProtocolError(
                ReasonCode.WRONG_CONSORTIUM,
                f"tensor is for consortium {first.consortium!r}, not {self.consortium!r}",
            )
        if self.round is not None and first.round != self.round:
            raise RemoteProtocolError(
                ReasonCode.WRONG_ROUND, f"tensor is for round {first.round}, not {self.round}"
            )
        plan = ChunkedTensorHeader.decode(first.payload, self.limits)
        plan.header.check_expected(self.expected_shape, self.expected_dtype)
        self._plan = plan
        # np.empty leaves pages untouched until the chunks are copied in: no memset.
        self._buf = np.empty(plan.header.nbytes, dtype=np.uint8)

    def take(self, chunk: Frame) -> Frame | None:
        """Check and keep the next chunk; the ACK frame due after it, if any."""
        first, plan = self.first, self.plan
        assert first is not None
        i, n = self.taken, plan.n_chunks
        if chunk.type is not FrameType.TENSOR_CHUNK:
            raise RemoteProtocolError(
                ReasonCode.PROTOCOL_VIOLATION,
                f"expected tensor chunk {i + 1} of {n}, got a {chunk.type.name} frame",
            )
        if (chunk.consortium, chunk.round) != (first.consortium, first.round):
            raise RemoteProtocolError(
                ReasonCode.PROTOCOL_VIOLATION,
                "tensor chunk changed consortium or round mid-transfer",
            )
        if chunk.seq != first.seq + 1 + i:
            raise RemoteProtocolError(
                ReasonCode.OUT_OF_ORDER,
                f"tensor chunk has sequence number {chunk.seq}; expected {first.seq + 1 + i}",
            )
        size = plan.chunk_size(i)
        if len(chunk.payload) != size:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"tensor chunk {i + 1} of {n} is {len(chunk.payload)} bytes; expected {size}",
            )
        self._buf.data[self._offset : self._offset + size] = chunk.payload
        self._hasher.update(chunk.payload)
        self._offset += size
        self.taken += 1
        # The last ACK waits for ``finish``: the tensor must be verified first.
        if self.taken % plan.window == 0 and self.taken < n:
            return self._ack(self.taken)
        return None

    def finish(self) -> tuple[Tensor, Frame | None]:
        """The verified tensor and the final ACK to send (None for a tensor of no chunks)."""
        plan = self.plan
        if self._hasher.digest() != plan.header.digest:
            raise RemoteProtocolError(
                ReasonCode.DIGEST_MISMATCH, "tensor bytes do not match their SHA-256 digest"
            )
        array = array_from_raw(plan.header, self._buf)
        if self.finite:
            check_finite(array)
        return array, (self._ack(plan.n_chunks) if plan.n_chunks else None)

    def _ack(self, count: int) -> Frame:
        first = self.first
        assert first is not None
        return Frame(
            FrameType.ACK,
            first.consortium,
            first.round,
            self.local_peer,
            first.seq,
            encode_ack(count),
        )

    def reject(self, exc: RemoteProtocolError) -> Frame:
        """The REJECT frame answering a transfer refused with ``exc``."""
        first = self.first
        return Frame(
            FrameType.REJECT,
            first.consortium if first is not None else (self.consortium or ""),
            first.round if first is not None else (self.round or 0),
            self.local_peer,
            first.seq if first is not None else 0,
            encode_reject(exc.reason, str(exc), self.limits),
        )


def check_ack(reply: Frame, consortium: str, round: int, acked: int, sent: int) -> int:
    """The cumulative chunk count of ``reply``, which must be an ACK of this transfer."""
    if reply.type is not FrameType.ACK or (reply.consortium, reply.round) != (consortium, round):
        raise RemoteProtocolError(
            ReasonCode.PROTOCOL_VIOLATION,
            f"expected an ACK for round {round} of {consortium}, got a "
            f"{reply.type.name} frame for round {reply.round} of {reply.consortium}",
        )
    count = decode_ack(reply.payload)
    if not acked < count <= sent:
        raise RemoteProtocolError(
            ReasonCode.PROTOCOL_VIOLATION,
            f"ACK for {count} chunks after {acked} acknowledged and {sent} sent",
        )
    return count
