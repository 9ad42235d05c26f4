"""One libp2p stream as a p2pfed ``Stream``: frame-sized writes and errors split by blame.

Theory of operation: ``Libp2pStream`` wraps a py-libp2p ``NetStream`` (a Yamux stream over a
Noise-secured connection to an admitted peer). Writes are handed to Yamux in pieces of at most
one frame (``libp2p_compat.YAMUX_MAX_FRAME_PAYLOAD``); libp2p's errors map onto ``ClosedError``
(we closed it) and ``BrokenError`` (the peer or the network broke it); end of stream is
``b""``; closing sends a FIN, so data the peer already buffered stays readable there.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import cast

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError
from libp2p.network.stream.net_stream import NetStream

from p2pfed.errors import BrokenError, ClosedError
from p2pfed.transport.base import Stream
from p2pfed.transport.libp2p_compat import YAMUX_MAX_FRAME_PAYLOAD

log = logging.getLogger(__name__)


class SendMeter:
    """Per peer, the rate of the recent large writes to it: bytes ÷ seconds they took.

    Only writes of at least ``MIN_BYTES`` count: a large write waits on the link's flow
    control (Yamux windows, socket buffers, the relay), so its pace is the link's, where a
    small one returns as soon as a buffer took it. The last ``KEEP`` per peer are kept.
    """

    MIN_BYTES = 1 << 20
    KEEP = 16

    def __init__(self) -> None:
        self._writes: dict[str, deque[tuple[int, float]]] = {}

    def record(self, peer: str, size: int, seconds: float) -> None:
        if size >= self.MIN_BYTES and seconds > 0:
            self._writes.setdefault(peer, deque(maxlen=self.KEEP)).append((size, seconds))

    def rate(self, peer: str) -> float | None:
        """Bytes per second of ``peer``'s recent large writes; None if it had none."""
        writes = self._writes.get(peer)
        if not writes:
            return None
        return sum(size for size, _ in writes) / sum(seconds for _, seconds in writes)


class Libp2pStream(Stream):
    """One Yamux stream over a Noise-secured connection to an admitted peer."""

    def __init__(self, stream: INetStream, remote: str, meter: SendMeter | None = None) -> None:
        # The host hands out NetStreams; the interface lacks close_write, which send_eof needs.
        self._stream = cast(NetStream, stream)
        self._remote = remote
        self._meter = meter
        self._closed = False
        self._eof_sent = False

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof_sent:
            raise ClosedError("stream was closed for sending by us")
        view = memoryview(data).cast("B")
        began = trio.current_time()
        try:
            for start in range(0, len(view), YAMUX_MAX_FRAME_PAYLOAD):
                # Yamux copies each frame into header + payload anyway, so a view suffices.
                piece = view[start : start + YAMUX_MAX_FRAME_PAYLOAD]
                await self._stream.write(cast(bytes, piece))
            if self._meter is not None:
                self._meter.record(self._remote, len(view), trio.current_time() - began)
        except StreamClosed as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream to {self._remote} was closed by the peer") from exc
        except (StreamError, OSError) as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream to {self._remote} was broken: {exc!r}") from exc

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise ClosedError("stream was closed by us")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        try:
            data = await self._stream.read(max_bytes)
        except StreamEOF:
            return b""
        except (StreamError, OSError) as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream from {self._remote} was broken: {exc!r}") from exc
        # A zero-length read from py-libp2p also means the stream has ended.
        return bytes(data)

    async def send_eof(self) -> None:
        if self._closed or self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        self._eof_sent = True
        try:
            await self._stream.close_write()
        except (StreamError, OSError) as exc:
            raise BrokenError(f"stream to {self._remote} was broken: {exc!r}") from exc

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        # Closing politely (FIN) keeps data the peer already buffered readable there; a reset
        # would discard it. Errors here mean the peer is gone, which closing accepts.
        with trio.CancelScope(shield=True):
            try:
                await self._stream.close()
            except Exception as exc:
                log.debug("closing stream to %s: %s", self._remote, exc)
