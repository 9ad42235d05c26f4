"""Idle sockets cannot lock members out (issue 21 (d)): real libp2p on 127.0.0.1.

An attacker needs no key to open TCP connections to a member's listen port and say nothing.
py-libp2p holds each one in one of its 250 inbound slots until its own upgrade timeout
(10 s), so 250 idle sockets lock out every member meanwhile. Our transport closes a
connection that has not authenticated within ``handshake_timeout`` and lets one address have
only ``pending_per_source`` handshakes in flight (a newer evicts the oldest).
"""

from __future__ import annotations

import resource

import pytest
import trio
from transport_harness import seed_for

from p2pfed.errors import ConfigError
from p2pfed.transport import Stream
from p2pfed.transport.libp2p import DEFAULT_PENDING_PER_SOURCE, Libp2pTransport

pytestmark = pytest.mark.network

IDLE = 300
DIAL_S = 2.0  # a member's dial on loopback takes milliseconds; py-libp2p frees slots at 10 s


def port_of(transport: Libp2pTransport) -> int:
    return int(transport.listen_addrs[0].rsplit("/", 1)[1])


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def test_a_connection_that_never_handshakes_is_closed_at_the_deadline() -> None:
    with trio.fail_after(10):
        async with Libp2pTransport(
            seed_for("member"), lambda _: True, handshake_timeout=0.5
        ) as member:
            idle = await trio.open_tcp_stream("127.0.0.1", port_of(member))
            opened = trio.current_time()
            async with idle:
                try:  # says nothing (reads the member's greeting) until it is dropped
                    while await idle.receive_some():
                        pass
                except trio.BrokenResourceError:
                    pass  # closed with a reset: just as closed
            held = trio.current_time() - opened
            assert 0.4 <= held < 2.0, held
            with trio.fail_after(1):  # the member's bookkeeping finishes after the close
                while member.pending.timed_out != 1:
                    await trio.sleep(0.01)
            assert member.pending.count("127.0.0.1") == 0 and member.pending.evicted == 0


@pytest.mark.slow
async def test_300_idle_sockets_do_not_lock_a_member_out() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * IDLE  # both ends of each socket live in this process, plus libp2p's own
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    with trio.fail_after(30):
        # A long deadline: only the per-address cap can let the member in here.
        async with Libp2pTransport(
            seed_for("member"), lambda _: True, handshake_timeout=60
        ) as member:
            member.serve("/echo/1", echo)
            idle = [await trio.open_tcp_stream("127.0.0.1", port_of(member)) for _ in range(IDLE)]
            try:
                # Wait (bounded) until the member has seen every idle socket: it evicts all
                # but a few. Without the cap it evicts none, and the dial below shows why that
                # matters.
                with trio.move_on_after(3):
                    while member.pending.evicted < IDLE - DEFAULT_PENDING_PER_SOURCE:
                        await trio.sleep(0.01)
                async with Libp2pTransport(
                    seed_for("other"),
                    lambda _: True,
                    peer_addrs={member.local_peer: member.listen_addrs},
                ) as other:
                    started = trio.current_time()
                    with trio.fail_after(DIAL_S):
                        async with await other.open_stream(member.local_peer, "/echo/1") as s:
                            await s.send_all(b"ping")
                            assert await s.receive_exactly(4) == b"ping"
                    took = trio.current_time() - started
                assert member.pending.evicted >= IDLE - DEFAULT_PENDING_PER_SOURCE
            finally:
                for sock in idle:
                    await sock.aclose()
    assert took < DIAL_S


def test_bad_inbound_limits_are_named() -> None:
    with pytest.raises(ConfigError, match="handshake_timeout must be a positive number"):
        Libp2pTransport(seed_for("x"), lambda _: True, handshake_timeout=0)
    with pytest.raises(ConfigError, match="pending_per_source must be at least 1"):
        Libp2pTransport(seed_for("x"), lambda _: True, pending_per_source=0)
