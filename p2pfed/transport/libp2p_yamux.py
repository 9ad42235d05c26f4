"""Yamux with its receive window enforced: a member that ignores flow control is cut off.

Theory of operation: py-libp2p 0.8.1's Yamux appends every DATA frame to the stream's buffer
and, when the sender overran the window it was granted, only logs a warning: a member (or a
stolen member key) that ignores flow control could push 256 MiB into a stream nobody reads
and grow the victim's memory without bound. ``BoundedYamux`` keeps py-libp2p's Yamux and
swaps its table of stream buffers for one whose buffers refuse to grow past what an honest
sender can have in flight: one stream at most the window it was granted, one
connection at most ``CONNECTION_LIMIT`` over all its streams. The frame that would cross a
bound is dropped (py-libp2p then ends that stream for reading), the connection is closed, and
one warning names the member; it may dial again, and meets the same bound. A stream's bound
is exactly the window this side granted and the sender has not used (``_Buffers.granted``).

py-libp2p builds its Yamux by name inside ``muxer_multistream`` (whatever class the host's
``muxer_opt`` names), so ``use_bounded_yamux`` rebinds that name, process-wide, like the other
changes of ``libp2p_compat``. It also applies ``yamux-frame-reads-uncopied``: py-libp2p's
Yamux reads every frame through ``read_exactly``, which copies the bytes twice (into a
``bytearray``, then out as ``bytes``) even when one read brought them all, as the secure
sessions' reads always do; ``read_exactly_uncopied`` hands that read over as it is.

A writer facing a closed window is a receiver applying backpressure, not a failure: py-libp2p
resets the stream after 5 s of zero window, which turned a ring peer that is still training
(its read-ahead full) into a retried round. ``PatientYamuxStream`` waits for the window as
long as the caller's own stage deadline allows (``FLOW_CONTROL_WAIT_S`` is only a last resort).
"""

from __future__ import annotations

import logging
import struct
from typing import Any, cast

import trio
from libp2p.io.abc import Reader
from libp2p.io.utils import DEFAULT_RETRY_READ_COUNT
from libp2p.io.utils import read_exactly as stock_read_exactly
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_SYN,
    RTT_MEASURE_INTERVAL,
    TYPE_PING,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

from p2pfed.errors import ReasonCode, RemoteProtocolError
from p2pfed.transport.libp2p_compat import YAMUX_FRAME_BYTES

log = logging.getLogger(__name__)

STREAM_LIMIT = yamux_module.MAX_WINDOW_SIZE + YAMUX_FRAME_BYTES
"""The most one stream may hold unread: its largest granted window plus a frame in flight."""
CONNECTION_LIMIT = 8 * STREAM_LIMIT
"""The most one connection may hold unread over all its streams (striped transfers use a few
streams at once, each with its own window)."""


class _Buffer(bytearray):
    """A stream's receive buffer that asks its table before it grows."""

    table: _Buffers
    stream_id: int

    def extend(self, data: Any) -> None:
        self.table.admit(self, len(data))
        super().extend(data)


class _Buffers(dict[int, bytearray]):
    """The muxer's stream buffers, bounded per stream and per connection."""

    def __init__(self, conn: BoundedYamux) -> None:
        super().__init__()
        self.conn = conn
        self.stream_limit = STREAM_LIMIT
        self.connection_limit = CONNECTION_LIMIT

    def __setitem__(self, stream_id: int, value: bytearray) -> None:
        buffer = _Buffer(value)
        buffer.table, buffer.stream_id = self, stream_id
        super().__setitem__(stream_id, buffer)

    def granted(self, buffer: _Buffer) -> int:
        """Bytes the sender may still send on ``buffer``'s stream.

        The window this side granted and has not yet seen used: py-libp2p counts a stream's
        ``recv_window`` down right after appending a frame, and raises it before it sends the
        update, so an honest sender never exceeds it. (Its window tuning may grant a little
        more than ``MAX_WINDOW_SIZE`` beyond what is unread: a fixed bound on the unread
        bytes cut an honest 40 MB ring transfer.) A buffer whose stream is gone keeps the
        fixed bound.
        """
        stream = self.conn.streams.get(buffer.stream_id)
        if stream is None:
            return self.stream_limit - len(buffer)
        return int(stream.recv_window)

    def admit(self, buffer: _Buffer, n: int) -> None:
        """Refuse (and cut the connection) if ``n`` more bytes would cross a bound."""
        held = sum(len(b) for b in self.values())
        if n <= self.granted(buffer) and held + n <= self.connection_limit:
            return
        peer = str(self.conn.peer_id)
        self.conn.window_exceeded(
            f"member {peer} sent {n} bytes beyond its Yamux receive window "
            f"({len(buffer)} unread on the stream, {held} on the connection): "
            "it ignores flow control; connection closed"
        )
        raise RemoteProtocolError(ReasonCode.OVERSIZED, "Yamux receive window exceeded", peer)


PONG_WAIT_S = 10.0
"""Seconds a ping waits for its pong before the next interval (py-libp2p's own figure)."""
FLOW_CONTROL_WAIT_S = 600.0
"""The longest a writer waits for a window update; every p2pfed stage deadline is shorter."""
WINDOW_POLL_S = 0.01
"""How often a blocked writer looks at its window (py-libp2p signals updates no other way)."""


class PatientYamuxStream(YamuxStream):
    """A Yamux stream whose writer waits out a closed window instead of failing after 5 s."""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            await self._window_open()
            # Never more than the window: the stock write then sends without waiting.
            n = min(self.send_window, len(view) - sent)
            # The stock writer only slices it and adds it to a header: a view is not copied.
            await super().write(cast(bytes, view[sent : sent + n]))
            sent += n

    async def _window_open(self) -> None:
        with trio.move_on_after(FLOW_CONTROL_WAIT_S) as scope:
            while self.send_window <= 0 and not (self.closed or self.send_closed):
                await trio.sleep(WINDOW_POLL_S)
        if scope.cancelled_caught:
            raise MuxedStreamError(
                f"the receiver granted no Yamux window for {FLOW_CONTROL_WAIT_S:.0f} s"
            )


class BoundedYamux(Yamux):
    """py-libp2p's Yamux whose receive buffers cannot outgrow the windows it grants."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_buffers = _Buffers(self)
        self.violations = 0

    async def _measure_rtt_loop(self) -> None:
        """py-libp2p's RTT pings (its interval and timeout), timed from before the write.

        py-libp2p, like go-yamux, starts the clock once the write returned. On a loaded
        machine the writer may run again only after the pong arrived, and the round trip then
        came out below the path's own (under 40 ms across a 40 ms relayed path in
        tests/netns). Timed from before the write, it can only include the wait to be sent,
        which every control message on the link has too; deadlines built on it stay safe.
        """
        await trio.sleep(0.5)  # as py-libp2p: let the connection settle first
        while not self.event_shutting_down.is_set():
            self._ping_id += 1
            self._ping_event = trio.Event()
            self._ping_sent_time = trio.current_time()
            try:
                await self._write_frame(
                    struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, self._ping_id)
                )
            except Exception:  # the connection is going away: so does its ping
                return
            with trio.move_on_after(PONG_WAIT_S):
                await self._ping_event.wait()
            with trio.move_on_after(RTT_MEASURE_INTERVAL):
                await self.event_shutting_down.wait()

    def window_exceeded(self, sentence: str) -> None:
        """Name the member once, and close its connection from the muxer's own nursery."""
        self.violations += 1
        if self.violations > 1:
            return
        log.warning("%s", sentence)
        nursery = self._nursery
        if nursery is not None:
            nursery.start_soon(self.close)


async def read_exactly_uncopied(
    reader: Reader, n: int, retry_count: int = DEFAULT_RETRY_READ_COUNT
) -> bytes:
    """``n`` bytes from ``reader``: its first read itself if complete, else py-libp2p's way."""
    first = await reader.read(n)
    if len(first) == n:
        return first
    return bytes(first) + await stock_read_exactly(reader, n - len(first), retry_count)


def use_bounded_yamux() -> None:
    """Make every Yamux connection py-libp2p opens in this process a ``BoundedYamux``."""
    setattr(muxer_multistream, "Yamux", BoundedYamux)  # noqa: B010 (a module attribute)
    setattr(yamux_module, "read_exactly", read_exactly_uncopied)  # noqa: B010
    setattr(yamux_module, "YamuxStream", PatientYamuxStream)  # noqa: B010
