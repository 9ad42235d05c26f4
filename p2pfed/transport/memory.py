"""An in-process transport for tests and emulation.

Theory of operation: a ``MemoryNetwork`` knows every live ``MemoryTransport`` by peer ID.
``open_stream`` builds two one-way pipes (bounded trio memory channels of byte chunks, so a
slow reader applies back-pressure as a real socket would) and starts the server's handler in
the server transport's nursery. Admission runs the same gate on both ends as the libp2p
transport does. Faults are injectable: ``crash(peer)`` breaks every stream of that peer and
makes it unreachable, as a killed process would; ``cut(a, b)`` breaks one link.

Each transport's ``limiter`` (``ratelimit.StreamLimiter``) admits inbound streams per peer and
protocol before the handler starts, as the libp2p transport does; a stream over the limit is
refused to the dialer with ``BrokenError`` (``open_with_backoff`` then retries later).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from p2pfed.errors import BrokenError, ClosedError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Handler, PeerGate, Stream, Transport
from p2pfed.transport.ratelimit import StreamLimiter

log = logging.getLogger(__name__)

_PIPE_CHUNKS = 64  # chunks buffered per direction before send_all blocks


def _allow_all(_: str) -> bool:
    return True


class _Pipe:
    """One direction of a memory stream."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[bytes](_PIPE_CHUNKS)
        self.broken = False


class MemoryStream(Stream):
    """One end of an in-memory stream."""

    def __init__(self, remote: str, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._remote = remote
        self._out = outgoing
        self._in = incoming
        self._pending = b""
        self._closed = False
        self._eof_sent = False

    @property
    def remote_peer(self) -> str:
        return self._remote

    def _break(self) -> None:
        self._out.broken = self._in.broken = True
        self._out.send.close()
        self._in.send.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof_sent:
            raise ClosedError("stream was closed for sending by us")
        if self._out.broken:
            raise BrokenError(f"stream to {self._remote} was broken")
        try:
            await self._out.send.send(bytes(data))
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream to {self._remote} was broken") from exc

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise ClosedError("stream was closed by us")
        if not self._pending:
            try:
                self._pending = await self._in.recv.receive()
            except trio.EndOfChannel:
                if self._in.broken:
                    raise BrokenError(f"stream from {self._remote} was broken") from None
                return b""
            except trio.ClosedResourceError as exc:
                raise ClosedError("stream was closed by us") from exc
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    async def send_eof(self) -> None:
        self._eof_sent = True
        self._out.send.close()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.send.close()
        self._in.recv.close()
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    """A set of in-memory transports that can reach each other by peer ID."""

    def __init__(self) -> None:
        self._peers: dict[str, MemoryTransport] = {}
        self._cut: set[frozenset[str]] = set()

    @asynccontextmanager
    async def open(
        self, peer: str, gate: PeerGate = _allow_all, limiter: StreamLimiter | None = None
    ) -> AsyncIterator[MemoryTransport]:
        """Attach a transport for ``peer``; it is closed on exit.

        ``limiter`` admits inbound streams (default: ``DEFAULT_LIMITS`` on trio's clock).
        """
        if peer in self._peers:
            raise ValueError(f"peer {peer} is already attached to this network")
        try:
            async with trio.open_nursery() as nursery:
                transport = MemoryTransport(self, peer, gate, nursery, limiter)
                self._peers[peer] = transport
                try:
                    yield transport
                finally:
                    # Shielded: an error raised in the block must come out as itself, not be
                    # replaced by a Cancelled from cleanup (which the nursery would absorb).
                    with trio.CancelScope(shield=True):
                        await transport.aclose()
        except BaseExceptionGroup as group:
            # The block's own error, alone, is re-raised bare: the nursery is our detail.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def crash(self, peer: str) -> None:
        """Break every stream of ``peer`` and make it unreachable, as a killed process."""
        transport = self._peers.get(peer)
        if transport is not None:
            transport._crash()

    def cut(self, a: str, b: str) -> None:
        """Break the link between ``a`` and ``b`` (both directions) from now on."""
        self._cut.add(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            transport = self._peers.get(x)
            if transport is not None:
                transport._break_streams_to(y)

    def _detach(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def _lookup(self, dialer: str, peer: str) -> MemoryTransport:
        target = self._peers.get(peer)
        if target is None or frozenset((dialer, peer)) in self._cut:
            raise BrokenError(f"peer {peer} is unreachable")
        return target


class MemoryTransport(Transport):
    """A peer's endpoint on a ``MemoryNetwork``; create it with ``MemoryNetwork.open``."""

    def __init__(
        self,
        network: MemoryNetwork,
        peer: str,
        gate: PeerGate,
        nursery: trio.Nursery,
        limiter: StreamLimiter | None = None,
    ) -> None:
        self.limiter = StreamLimiter(clock=trio.current_time) if limiter is None else limiter
        self._network = network
        self._peer = peer
        self._gate = gate
        self._nursery = nursery
        self._handlers: dict[str, Handler] = {}
        self._streams: list[MemoryStream] = []
        self._handler_scopes: set[trio.CancelScope] = set()
        self._closed = False

    @property
    def local_peer(self) -> str:
        return self._peer

    def serve(self, protocol: str, handler: Handler) -> None:
        self._handlers[protocol] = handler

    async def open_stream(self, peer: str, protocol: str) -> Stream:
        if self._closed:
            raise ClosedError("transport was closed by us")
        if not self._gate(peer):
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_PEER, f"peer {peer} is not admitted by the roster", peer
            )
        target = self._network._lookup(self._peer, peer)
        await trio.lowlevel.checkpoint()
        return target._accept(self._peer, protocol, self)

    def _accept(self, dialer: str, protocol: str, origin: MemoryTransport) -> MemoryStream:
        if self._closed or self._network._peers.get(self._peer) is not self:
            # It closed (or crashed) while the dialer waited: as a dial to a gone process.
            raise BrokenError(f"peer {self._peer} is unreachable")
        if not self._gate(dialer):
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_PEER, f"peer {self._peer} refused us", self._peer
            )
        handler = self._handlers.get(protocol)
        if handler is None:
            raise BrokenError(f"peer {self._peer} does not serve protocol {protocol}")
        if not self.limiter.admit(dialer, protocol):
            # Refused before any pipe or task exists: a flood costs the victim a dict lookup.
            raise BrokenError(f"peer {self._peer} refused our {protocol} stream: over its rate")
        a_to_b, b_to_a = _Pipe(), _Pipe()
        client = MemoryStream(self._peer, a_to_b, b_to_a)
        server = MemoryStream(dialer, b_to_a, a_to_b)
        origin._streams.append(client)
        self._streams.append(server)
        self._nursery.start_soon(self._run_handler, handler, server)
        return client

    async def _run_handler(self, handler: Handler, stream: MemoryStream) -> None:
        # The gate is checked again per stream: the roster may have changed since.
        scope = trio.CancelScope()
        self._handler_scopes.add(scope)
        try:
            with scope:
                if self._gate(stream.remote_peer):
                    await handler(stream)
        except (BrokenError, ClosedError, RemoteProtocolError) as exc:
            # One broken or misbehaving stream must not take the peer down.
            log.info("handler for stream from %s ended: %s", stream.remote_peer, exc)
        finally:
            self._handler_scopes.discard(scope)
            await stream.aclose()

    def _break_streams_to(self, peer: str) -> None:
        for stream in self._streams:
            if stream.remote_peer == peer:
                stream._break()

    def _crash(self) -> None:
        self._network._detach(self._peer)
        for stream in self._streams:
            stream._break()
        self._nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._network._detach(self._peer)
        # Cancel our handlers only: the caller's own code in the block goes on.
        for scope in list(self._handler_scopes):
            scope.cancel()
        for stream in self._streams:
            await stream.aclose()
