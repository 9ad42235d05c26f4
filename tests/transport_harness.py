"""Groups of connected transports for the conformance suite: in-memory and real libp2p hosts.

Each harness opens ``n`` peers whose gates read a mutable set of admitted peer IDs per peer
(``allowed[i]``), initially every peer of the group, so a test can "remove a member" by
discarding its ID. Libp2p peers listen on 127.0.0.1 with ephemeral ports and know each other's
addresses.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pfed.transport import MemoryNetwork, Transport
from p2pfed.transport.base import Stream

if TYPE_CHECKING:
    from p2pfed.transport.libp2p_relayed import RelayedTransport
    from p2pfed.transport.relay import GatedRelay


@dataclass
class Group:
    transports: list[Transport]
    allowed: list[set[str]]

    @property
    def ids(self) -> list[str]:
        return [t.local_peer for t in self.transports]


def count_tasks() -> int:
    """The trio tasks alive now (walking the task tree from the root): leaks show up here."""
    stack = [trio.lowlevel.current_root_task()]
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def echo(stream: Stream) -> None:
    """A handler that answers one message with ``echo:`` and the message."""
    data = await stream.receive_some(1024)
    await stream.send_all(b"echo:" + data)


ECHO_PROTOCOL = "/test/echo/1"


async def echoed(transport: Transport, peer: str, payload: bytes) -> bytes:
    """What ``peer``'s ``echo`` handler (on ``ECHO_PROTOCOL``) answers to ``payload``."""
    stream = await transport.open_stream(peer, ECHO_PROTOCOL)
    await stream.send_all(payload)
    got = await stream.receive_exactly(5 + len(payload))
    await stream.aclose()
    return bytes(got)


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` until it holds; ``AssertionError`` naming ``what`` after ``timeout``."""
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what} did not happen within {timeout} s")


class SlowOpens:
    """``inner`` whose streams (of ``protocol`` only, if given) take ``delay`` s to open.

    A relayed first dial under load: the transport works, only slowly.
    """

    def __init__(self, inner: Transport, delay: float, protocol: str | None = None) -> None:
        self._inner, self._delay, self._protocol = inner, delay, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def open_stream(self, peer: str, protocol: str) -> Stream:
        if self._protocol in (None, protocol):
            await trio.sleep(self._delay)
        return await self._inner.open_stream(peer, protocol)


def seed_for(name: str) -> bytes:
    return hashlib.sha256(f"p2pfed-test-peer:{name}".encode()).digest()


@asynccontextmanager
async def memory_group(n: int) -> AsyncIterator[Group]:
    net = MemoryNetwork()
    names = [f"peer{i}" for i in range(n)]
    allowed = [set(names) for _ in range(n)]
    async with AsyncExitStack() as stack:
        transports: list[Transport] = []
        for i, name in enumerate(names):
            transports.append(
                await stack.enter_async_context(
                    net.open(name, gate=lambda p, i=i: p in allowed[i])  # type: ignore[misc]
                )
            )
        yield Group(transports, allowed)


@asynccontextmanager
async def libp2p_group(n: int, tag: str = "") -> AsyncIterator[Group]:
    from p2pfed.transport.libp2p import Libp2pTransport

    allowed: list[set[str]] = [set() for _ in range(n)]
    built = [
        Libp2pTransport(seed_for(f"{tag}{i}"), lambda p, i=i: p in allowed[i])  # type: ignore[misc]
        for i in range(n)
    ]
    ids = {t.local_peer for t in built}
    for s in allowed:
        s.update(ids)
    async with AsyncExitStack() as stack:
        for t in built:
            await stack.enter_async_context(t)
        for t in built:
            for other in built:
                if other is not t:
                    t.set_peer_addrs(other.local_peer, other.listen_addrs)
        yield Group(list(built), allowed)


GROUPS = {"memory": memory_group, "libp2p": libp2p_group}


def relay_seed(name: str) -> bytes:
    return hashlib.sha256(f"relay-test/{name}".encode()).digest()


@asynccontextmanager
async def relay_consortium(
    names: list[str], roster: set[str], hole_punch: bool | None = None
) -> AsyncIterator[tuple[GatedRelay, RelayedTransport, dict[str, RelayedTransport], list[bytes]]]:
    """A relay and members ``names`` (none with a known address); ``roster`` holds names.

    On 127.0.0.1 every member is dialable, so by default (``hole_punch=None``) nobody starts
    a hole punch: the links stay relayed (tests/test_hole_punch.py punches them).
    """
    from p2pfed.transport.libp2p_relayed import RelayedTransport
    from p2pfed.transport.relay import serve_relay

    ids = {n: RelayedTransport(relay_seed(n), lambda _: True).local_peer for n in ["relay", *names]}
    admitted = {ids[n] for n in roster | {"relay"}}

    def gate(peer: str) -> bool:
        return peer in admitted

    relay_t = RelayedTransport(relay_seed("relay"), gate)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(relay_t)
        relay = await stack.enter_async_context(serve_relay(relay_t, gate))
        seen: list[bytes] = []
        tap = relay._read_stream_with_retry

        async def tapped(stream: Any, *args: Any, **kwargs: Any) -> Any:
            data = await tap(stream, *args, **kwargs)
            seen.append(bytes(data or b""))
            return data

        relay._read_stream_with_retry = tapped  # type: ignore[method-assign]
        members = {}
        for n in names:
            t = RelayedTransport(
                relay_seed(n),
                gate,
                relays={relay_t.local_peer: list(relay_t.listen_addrs)},
                hole_punch=hole_punch,
            )
            t.serve(ECHO_PROTOCOL, echo)
            members[n] = await stack.enter_async_context(t)
        yield relay, relay_t, members, seen
