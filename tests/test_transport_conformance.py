"""One conformance suite, run against every transport (in-memory and real libp2p hosts).

What a protocol driver may rely on, whichever transport it is given: round trips, large
payloads, EOF semantics, admission by the gate (at connect and per stream), closed/broken
errors, concurrent streams, and handlers that see the authenticated remote peer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio
from transport_harness import GROUPS, Group

from p2pfed.errors import BrokenError, ClosedError, ReasonCode, RemoteProtocolError
from p2pfed.transport import Stream

GroupFactory = Callable[[int], AbstractAsyncContextManager[Group]]

LIMIT = 20  # seconds: every test finishes far sooner; this only bounds a hang


@pytest.fixture(params=sorted(GROUPS))
def open_group(request: pytest.FixtureRequest) -> GroupFactory:
    return GROUPS[request.param]  # type: ignore[return-value]


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some(1 << 20):
        await stream.send_all(data)


async def read_to_eof(stream: Stream) -> bytes:
    parts = []
    while chunk := await stream.receive_some(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


async def test_round_trip_and_handler_sees_remote_peer(open_group: GroupFactory) -> None:
    seen: list[str] = []

    async def who(stream: Stream) -> None:
        seen.append(stream.remote_peer)
        request = await read_to_eof(stream)
        await stream.send_all(request.upper() + b" from " + stream.remote_peer.encode())

    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/who/1", who)
            async with await a.open_stream(b.local_peer, "/who/1") as stream:
                assert stream.remote_peer == b.local_peer
                await stream.send_all(b"hello")
                await stream.send_eof()
                reply = await read_to_eof(stream)
            assert reply == b"HELLO from " + a.local_peer.encode()
            assert seen == [a.local_peer]


async def test_large_payload_both_ways(open_group: GroupFactory) -> None:
    payload = hashlib.sha256(b"seed").digest() * (6 * 2**20 // 32)  # 6 MiB, > any window
    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/echo/1", echo)
            stream = await a.open_stream(b.local_peer, "/echo/1")

            async def send() -> None:
                await stream.send_all(payload)
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                got = await read_to_eof(stream)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            await stream.aclose()


async def test_eof_semantics(open_group: GroupFactory) -> None:
    async def reply_after_eof(stream: Stream) -> None:
        request = await read_to_eof(stream)
        assert await stream.receive_some() == b""  # EOF is sticky
        await stream.send_all(b"got %d" % len(request))

    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/eof/1", reply_after_eof)
            stream = await a.open_stream(b.local_peer, "/eof/1")
            await stream.send_all(b"12345")
            await stream.send_eof()
            with pytest.raises(ClosedError):
                await stream.send_all(b"more")
            assert await read_to_eof(stream) == b"got 5"  # receiving works after our EOF
            assert await stream.receive_some() == b""
            await stream.aclose()
            await stream.aclose()  # idempotent


async def test_gate_refuses_unknown_peer_both_ways(open_group: GroupFactory) -> None:
    ran: list[str] = []

    async def record(stream: Stream) -> None:
        ran.append(stream.remote_peer)

    with trio.fail_after(LIMIT):
        async with open_group(3) as g:
            a, _, c = g.transports
            g.allowed[0].discard(c.local_peer)  # a does not admit c
            a.serve("/rec/1", record)
            c.serve("/rec/1", record)
            with pytest.raises(RemoteProtocolError) as outbound:
                await a.open_stream(c.local_peer, "/rec/1")
            assert outbound.value.reason is ReasonCode.UNKNOWN_PEER
            with pytest.raises(RemoteProtocolError) as inbound:
                await c.open_stream(a.local_peer, "/rec/1")
            assert inbound.value.reason is ReasonCode.UNKNOWN_PEER
            assert inbound.value.peer == a.local_peer
            assert ran == []


async def test_removed_member_is_refused_for_new_streams(open_group: GroupFactory) -> None:
    ran: list[str] = []

    async def record(stream: Stream) -> None:
        ran.append(stream.remote_peer)
        await stream.send_all(b"ok")

    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/rec/1", record)
            async with await a.open_stream(b.local_peer, "/rec/1") as stream:
                assert await stream.receive_exactly(2) == b"ok"
            g.allowed[1].discard(a.local_peer)  # b's roster drops a
            with pytest.raises(RemoteProtocolError) as info:
                await a.open_stream(b.local_peer, "/rec/1")
            assert info.value.reason is ReasonCode.UNKNOWN_PEER
            assert ran == [a.local_peer]


async def test_closed_errors(open_group: GroupFactory) -> None:
    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/echo/1", echo)
            stream = await a.open_stream(b.local_peer, "/echo/1")
            await stream.aclose()
            with pytest.raises(ClosedError):
                await stream.send_all(b"x")
            with pytest.raises(ClosedError):
                await stream.receive_some()
            await a.aclose()
            with pytest.raises(ClosedError):
                await a.open_stream(b.local_peer, "/echo/1")


async def test_peer_gone_mid_message_is_broken(open_group: GroupFactory) -> None:
    async def half_then_quit(stream: Stream) -> None:
        await stream.send_all(b"x" * 10)

    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/half/1", half_then_quit)
            stream = await a.open_stream(b.local_peer, "/half/1")
            with pytest.raises(BrokenError):
                await stream.receive_exactly(100)


async def test_writing_to_a_closed_peer_breaks(open_group: GroupFactory) -> None:
    opened = trio.Event()

    async def hold(stream: Stream) -> None:
        opened.set()
        await trio.sleep_forever()

    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/hold/1", hold)
            stream = await a.open_stream(b.local_peer, "/hold/1")
            await opened.wait()
            await b.aclose()
            with pytest.raises(BrokenError):
                for _ in range(10_000):
                    await stream.send_all(b"y" * 65536)
                    await trio.sleep(0)


async def test_unserved_protocol_is_broken(open_group: GroupFactory) -> None:
    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            with pytest.raises(BrokenError):
                await a.open_stream(b.local_peer, "/nobody/1")


async def test_failing_handler_does_not_take_the_peer_down(open_group: GroupFactory) -> None:
    async def fail(stream: Stream) -> None:
        raise BrokenError("handler gave up")

    with trio.fail_after(LIMIT):
        async with open_group(2) as g:
            a, b = g.transports
            b.serve("/fail/1", fail)
            b.serve("/echo/1", echo)
            first = await a.open_stream(b.local_peer, "/fail/1")
            assert await read_to_eof(first) == b""
            async with await a.open_stream(b.local_peer, "/echo/1") as second:
                await second.send_all(b"still here")
                assert await second.receive_exactly(10) == b"still here"


async def test_concurrent_streams(open_group: GroupFactory) -> None:
    results: dict[int, bytes] = {}

    with trio.fail_after(LIMIT):
        async with open_group(3) as g:
            a, b, c = g.transports
            b.serve("/echo/1", echo)
            c.serve("/echo/1", echo)

            async def exchange(i: int) -> None:
                target = (b, c)[i % 2]
                payload = bytes([i]) * (100_000 + i)
                s = await a.open_stream(target.local_peer, "/echo/1")

                async def send() -> None:
                    await s.send_all(payload)
                    await s.send_eof()

                async with s, trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    results[i] = await read_to_eof(s)

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(exchange, i)
            assert results == {i: bytes([i]) * (100_000 + i) for i in range(8)}
