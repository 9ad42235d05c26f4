"""One libp2p stream as a p2pfed ``Stream``: frame-sized writes and errors split by blame.

Theory of operation: ``Libp2pStream`` wraps a py-libp2p ``NetStream`` (a Yamux stream over a
Noise-secured connection to an admitted peer). Writes are handed to Yamux in pieces of at most
one frame (``libp2p_compat.YAMUX_MAX_FRAME_PAYLOAD``); libp2p's errors map onto ``ClosedError``
(we closed it) and ``BrokenError`` (the peer or the network broke it); end of stream is
``b""``; closing sends a FIN, so data the peer already buffered stays readable there. Every
read is counted by the transport's ``LinkMeter`` (the link's measured throughput).
"""

from __future__ import annotations

import logging
from typing import cast

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError
from libp2p.network.stream.net_stream import NetStream

from p2pfed.errors import BrokenError, ClosedError
from p2pfed.transport.base import Stream
from p2pfed.transport.libp2p_compat import YAMUX_MAX_FRAME_PAYLOAD
from p2pfed.transport.linkrate import LinkMeter

log = logging.getLogger(__name__)


class Libp2pStream(Stream):
    """One Yamux stream over a Noise-secured connection to an admitted peer."""

    def __init__(self, stream: INetStream, remote: str, meter: LinkMeter | None = None) -> None:
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
        try:
            for start in range(0, len(view), YAMUX_MAX_FRAME_PAYLOAD):
                # Yamux copies each frame into header + payload anyway, so a view suffices.
                piece = view[start : start + YAMUX_MAX_FRAME_PAYLOAD]
                await self._stream.write(cast(bytes, piece))
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
        if self._meter is not None:
            self._meter.received(self._remote, len(data))
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
