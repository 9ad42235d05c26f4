"""Striping one large payload across several streams to the same peer.

Theory of operation: py-libp2p spends its time per Yamux frame in Python, and a single stream
also waits on its flow-control window; several streams keep more frames in flight. The sender
cuts the payload into ``len(lanes)`` contiguous slices and sends slice ``i`` on lane ``i``,
preceded by a 24-byte header ``(total, offset, length)`` (big-endian u64 each). The receiver
writes each slice straight into one preallocated buffer at its offset, so memory stays at one
payload whatever the lane count, and knows the payload is complete when the slices it
accepted cover ``total`` bytes exactly. Slices that overlap, overrun the buffer, or disagree
on ``total`` are a remote protocol error; nothing is written past the buffer.
"""

from __future__ import annotations

import struct

import trio

from p2pfed.errors import BrokenError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Stream

HEADER = struct.Struct(">QQQ")
READ_SIZE = 1 << 20


def slices(total: int, lanes: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each lane's slice: contiguous, in order, covering ``total``."""
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, got {lanes}")
    bounds = [total * i // lanes for i in range(lanes + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(lanes)]


async def send_striped(lanes: list[Stream], payload: bytes | bytearray | memoryview) -> None:
    """Send ``payload`` across ``lanes`` concurrently (each lane gets one slice)."""
    view = memoryview(payload).cast("B")

    async def send_slice(lane: Stream, offset: int, length: int) -> None:
        await lane.send_all(HEADER.pack(len(view), offset, length))
        for start in range(offset, offset + length, READ_SIZE):
            await lane.send_all(view[start : min(start + READ_SIZE, offset + length)])

    async with trio.open_nursery() as nursery:
        for lane, (offset, length) in zip(lanes, slices(len(view), len(lanes)), strict=True):
            nursery.start_soon(send_slice, lane, offset, length)


class StripedReceiver:
    """Assembles one striped payload into ``buffer`` from lanes handled concurrently."""

    def __init__(self, buffer: memoryview) -> None:
        self._buffer = buffer.cast("B")
        self._ranges: list[tuple[int, int]] = []
        self._covered = 0
        self._complete = trio.Event()

    @property
    def complete(self) -> bool:
        """Whether accepted slices cover the whole payload."""
        return self._complete.is_set()

    async def wait_complete(self) -> None:
        """Block until the whole payload has arrived."""
        await self._complete.wait()

    async def receive_lane(self, lane: Stream) -> bool:
        """Receive one lane's slice into the buffer; True if this lane completed the payload.

        Raises ``RemoteProtocolError(MALFORMED)`` for a slice that does not fit, and
        ``BrokenError`` if the lane ends early.
        """
        peer = lane.remote_peer
        total, offset, length = HEADER.unpack(await lane.receive_exactly(HEADER.size))
        if total != len(self._buffer):
            raise RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"striped payload from {peer} announces {total} bytes, expected "
                f"{len(self._buffer)}",
                peer,
            )
        if offset + length > total or any(
            offset < end and start < offset + length for start, end in self._ranges
        ):
            raise RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"slice [{offset}, {offset + length}) from {peer} overlaps or overruns the payload",
                peer,
            )
        self._ranges.append((offset, offset + length))
        position, end = offset, offset + length
        while position < end:
            chunk = await lane.receive_some(min(READ_SIZE, end - position))
            if not chunk:
                raise BrokenError(
                    f"lane from {peer} ended after {position - offset} of {length} bytes"
                )
            self._buffer[position : position + len(chunk)] = chunk
            position += len(chunk)
        self._covered += length
        if self._covered == total and not self._complete.is_set():
            self._complete.set()
            return True
        return False
