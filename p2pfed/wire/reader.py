"""A bounded cursor over a message body, for the message codecs above the frame layer.

Theory of operation: a frame's payload is decoded by the protocol that owns it (collective
messages, secure-aggregation messages), each with the same field shapes: fixed integers,
short strings (a u8 length, then UTF-8), lists (a count, then items) and a raw tail.
``BodyReader`` reads them and turns every way a sender can get them wrong into one
``RemoteProtocolError`` naming the sender when known: reading past the end (``MALFORMED``),
a string that is not UTF-8 (``MALFORMED``), or a list count above its cap (``OVERSIZED``),
checked before any item is read, so a hostile count costs nothing.
"""

from __future__ import annotations

import struct
from typing import Any

from p2pfed.errors import ReasonCode, RemoteProtocolError


class BodyReader:
    """Reads the fields of one message body; ``what`` names it in errors."""

    __slots__ = ("at", "data", "peer", "what")

    def __init__(self, data: bytes | memoryview, what: str, peer: str | None = None) -> None:
        self.data = data
        self.what = what
        self.peer = peer
        self.at = 0

    def malformed(self, detail: str) -> RemoteProtocolError:
        """The ``MALFORMED`` error saying that the body ``detail`` (to raise)."""
        return RemoteProtocolError(ReasonCode.MALFORMED, f"{self.what} {detail}", self.peer)

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if self.at + n > len(self.data):
            raise self.malformed("is truncated")
        out = bytes(self.data[self.at : self.at + n])
        self.at += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        """The next fixed-size fields (integers, fixed byte strings), as ``fmt`` lays them out."""
        return fmt.unpack(self.take(fmt.size))

    def short(self) -> str:
        """The next short string: a u8 length, then UTF-8."""
        (n,) = self.take(1)
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise self.malformed("has a string that is not UTF-8") from None

    def count(self, fmt: struct.Struct, cap: int, items: str) -> int:
        """The next list length, read with ``fmt``; ``OVERSIZED`` if above ``cap``."""
        n: int = self.unpack(fmt)[0]
        if n > cap:
            raise RemoteProtocolError(
                ReasonCode.OVERSIZED, f"{self.what} lists {n} {items}, over {cap}", self.peer
            )
        return n

    def rest(self) -> bytes:
        """Everything not read yet."""
        out = bytes(self.data[self.at :])
        self.at = len(self.data)
        return out
