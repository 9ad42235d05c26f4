"""Short stream exchanges: dial with backoff, read one bounded frame by a deadline, end a send.

Theory of operation: the protocols above the wire open a fresh stream per message or per
small request, so three steps recur in every driver and are written once here.
``open_with_backoff`` retries ``Transport.open_stream`` while the dial is refused with
``BrokenError`` (a first dial can lose a race with the peer dialling us), doubling the pause
from 50 ms up to 1 s; the caller bounds it with its own timeout, and any other error (a
refusal by the roster gate) is final. ``read_one_frame`` reads exactly one frame under a
size ``Limits`` and one deadline for the whole frame, not one per read, so a peer trickling
bytes cannot hold a handler longer than the deadline, and checks its type.
``finish_sending`` ends our side and waits until the receiver has read everything and
closed its own, so that no transport drops bytes still buffered when we close.
"""

from __future__ import annotations

import math

import trio

from p2pfed.errors import BrokenError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire.frames import DEFAULT_LIMITS, Frame, FrameType, Limits
from p2pfed.wire.io import ReadTimeout, read_frame

FIRST_PAUSE = 0.05
MAX_PAUSE = 1.0


async def open_with_backoff(transport: Transport, peer: str, protocol: str) -> Stream:
    """Open a ``protocol`` stream to ``peer``, retrying refused dials until cancelled."""
    pause = FIRST_PAUSE
    while True:
        try:
            return await transport.open_stream(peer, protocol)
        except BrokenError:
            await trio.sleep(pause)
            pause = min(2 * pause, MAX_PAUSE)


async def read_one_frame(
    stream: Stream,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float = 10.0,
    *,
    expect: FrameType | None = FrameType.CONTROL,
) -> Frame:
    """Exactly one frame from ``stream`` within ``timeout`` seconds in all.

    Raises what ``read_frame`` raises, ``ReadTimeout`` when the whole frame is not in by the
    deadline, and ``RemoteProtocolError`` (``PROTOCOL_VIOLATION``) for a frame of another
    type than ``expect`` (any type when None).
    """
    peer = stream.remote_peer
    with trio.move_on_after(timeout) as scope:
        frame = await read_frame(stream, limits, timeout)
    if scope.cancelled_caught:
        raise ReadTimeout(f"peer {peer} did not send a whole frame within {timeout:g} s")
    if expect is not None and frame.type is not expect:
        raise RemoteProtocolError(
            ReasonCode.PROTOCOL_VIOLATION,
            f"peer {peer} sent a {frame.type.name} frame where a {expect.name} frame was due",
            peer,
        )
    return frame


async def finish_sending(stream: Stream, timeout: float = math.inf) -> None:
    """End our side and wait (at most ``timeout``) until the receiver closes its own.

    Raises ``BrokenError`` if the stream breaks meanwhile.
    """
    await stream.send_eof()
    with trio.move_on_after(timeout):
        while await stream.receive_some():
            pass
