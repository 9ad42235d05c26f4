"""The transport contract every protocol driver is written against.

Theory of operation: a ``Transport`` belongs to one local peer. It serves named protocols
(``serve``) and opens byte streams to other peers (``open_stream``). A ``Stream`` is a
reliable, ordered, bidirectional byte pipe to one authenticated remote peer, whose ID the
transport vouches for (``remote_peer``). Framing, limits and digests live above, in the
wire codec; admission (is this peer a roster member?) is the ``PeerGate`` given to the
transport, checked when a connection forms *and* again before every handler runs.

Transports are async context managers: leaving ``async with`` closes listeners and every
stream, and cancels running handlers (they live in the transport's own nursery).

Errors: ``ClosedError`` when using something we closed; ``BrokenError`` when the peer or the
network broke it; ``RemoteProtocolError(UNKNOWN_PEER)`` when a peer is refused.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from p2pfed.errors import BrokenError

PeerGate = Callable[[str], bool]
"""Returns True when the peer ID may connect (for example: is a current roster member)."""

Handler = Callable[["Stream"], Awaitable[None]]
"""Runs once per inbound stream of a served protocol; the transport closes the stream after."""


class Stream(abc.ABC):
    """A reliable ordered byte stream to one authenticated remote peer."""

    @property
    @abc.abstractmethod
    def remote_peer(self) -> str:
        """The authenticated peer ID at the other end."""

    @abc.abstractmethod
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte of ``data``; raises ``BrokenError`` or ``ClosedError``."""

    @abc.abstractmethod
    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Return 1..max_bytes bytes, or ``b""`` at end of stream."""

    @abc.abstractmethod
    async def send_eof(self) -> None:
        """Tell the peer we will send nothing more; receiving still works."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close both directions; idempotent."""

    async def receive_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; ``BrokenError`` on end of stream before that."""
        parts: list[bytes] = []
        left = n
        while left:
            chunk = await self.receive_some(min(left, 1 << 20))
            if not chunk:
                raise BrokenError(
                    f"stream from {self.remote_peer} ended after {n - left} of {n} bytes"
                )
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Transport(abc.ABC):
    """One local peer's endpoint: serve protocols, open streams, close."""

    @property
    @abc.abstractmethod
    def local_peer(self) -> str:
        """This peer's ID."""

    @abc.abstractmethod
    def serve(self, protocol: str, handler: Handler) -> None:
        """Run ``handler`` for each inbound stream of ``protocol`` from an admitted peer."""

    @abc.abstractmethod
    async def open_stream(self, peer: str, protocol: str) -> Stream:
        """Open a stream to ``peer`` for ``protocol``.

        Raises ``RemoteProtocolError(UNKNOWN_PEER)`` if the gate refuses ``peer``,
        ``BrokenError`` if it cannot be reached, ``ClosedError`` after ``aclose``.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop listening, close every stream and cancel running handlers; idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
