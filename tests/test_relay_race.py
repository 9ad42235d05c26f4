"""Circuits through one relay that overlap (issue 16), on 127.0.0.1.

Two members dialling each other through the relay at the same moment get two circuits; both
ends must keep the same one and the relay must close only the other. A member's circuit that
ends must not take its other circuits down. A dial whose caller gives up half-way through the
upgrade leaves no circuit at the other end, and a stream that gives up on a dial does not cut
the dial short. A connection on which stream opens keep timing
out is closed and redialled, and the log names the peer and why.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import pytest
import trio
from libp2p.peer.id import ID
from transport_harness import ECHO_PROTOCOL as ECHO
from transport_harness import echo, echoed, wait_for

from p2pfed.errors import BrokenError
from p2pfed.transport import libp2p_relayed
from p2pfed.transport.libp2p_relayed import RelayedTransport, _dialled_by_us, _kind, _OnConnected
from p2pfed.transport.relay import GatedRelay, serve_relay

pytestmark = [pytest.mark.network]


def _seed(name: str) -> bytes:
    return hashlib.sha256(f"relay-race/{name}".encode()).digest()


async def _round_trip(x: RelayedTransport, y: RelayedTransport, text: bytes) -> None:
    with trio.fail_after(10):
        assert await echoed(x, y.local_peer, text) == b"echo:" + text


def _circuits(x: RelayedTransport, y: RelayedTransport) -> list[Any]:
    return x._conns_of(ID.from_base58(y.local_peer))


@asynccontextmanager
async def _members(
    names: list[str], tag: str
) -> AsyncIterator[tuple[GatedRelay, dict[str, RelayedTransport]]]:
    """A relay and members ``names`` with no known address, each with its reservation."""
    seeds = {n: _seed(f"{tag}/{n}") for n in ["relay", *names]}
    admitted = {RelayedTransport(s, lambda _: True).local_peer for s in seeds.values()}
    gate = admitted.__contains__
    relay_t = RelayedTransport(seeds["relay"], gate)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(relay_t)
        relay = await stack.enter_async_context(serve_relay(relay_t, gate))
        relay_id = relay_t.local_peer
        members = {}
        for n in names:
            t = RelayedTransport(
                seeds[n], gate, relays={relay_id: list(relay_t.listen_addrs)}, hole_punch=None
            )
            t.serve(ECHO, echo)
            members[n] = await stack.enter_async_context(t)
        for n, t in members.items():
            client = t.relay_client
            assert client is not None
            await wait_for(lambda c=client: relay_id in c.reserved, f"{n}'s reservation")
        yield relay, members


async def test_members_dialling_each_other_at_once_keep_one_working_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No head start for the smaller peer ID: both dial at the same moment, every time.
    monkeypatch.setattr(libp2p_relayed, "SIMULTANEOUS_DIAL_WAIT", 0.0)
    for attempt in range(6):
        async with _members(["a", "b"], f"race{attempt}") as (_relay, m):
            await _dial_at_once(m["a"], m["b"], attempt)


async def _dial_at_once(a: RelayedTransport, b: RelayedTransport, attempt: int) -> None:
    go = trio.Event()

    async def dial(x: RelayedTransport, y: RelayedTransport) -> None:
        await go.wait()
        with trio.fail_after(20):
            assert x.relay_client is not None
            await x.relay_client.dial(y.local_peer)  # the circuit, nothing else

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial, a, b)
        nursery.start_soon(dial, b, a)
        await trio.sleep(0)
        go.set()

    def settled() -> bool:
        ab, ba = _circuits(a, b), _circuits(b, a)
        # One circuit each, the same one: dialled by exactly one of the two ends.
        return len(ab) == len(ba) == 1 and _dialled_by_us(ab[0]) != _dialled_by_us(ba[0])

    await wait_for(settled, f"attempt {attempt}: one circuit at both ends")
    kept = (_circuits(a, b)[0], _circuits(b, a)[0])
    smaller = min(a, b, key=lambda t: t.local_peer)
    assert _dialled_by_us(kept[0 if smaller is a else 1]), "the smaller ID's dial stays"
    for i in range(3):
        await _round_trip(a, b, b"a%d" % i)
        await _round_trip(b, a, b"b%d" % i)
    # The same circuit carried all of it: nothing died and was redialled.
    assert (_circuits(a, b), _circuits(b, a)) == ([kept[0]], [kept[1]]), attempt
    assert not a.stalls and not b.stalls


async def test_a_circuit_that_ends_takes_no_other_circuit_of_its_member_down() -> None:
    async with _members(["a", "b", "c"], "three") as (relay, m):
        a, b, c = m["a"], m["b"], m["c"]
        ended: list[str] = []
        pump = relay._relay_data

        async def counted(*args: Any, **kwargs: Any) -> None:
            try:
                await pump(*args, **kwargs)
            finally:
                ended.append(str(args[2]))

        relay._relay_data = counted  # type: ignore[method-assign]  # circuits from now on
        await _round_trip(a, b, b"to b")
        await _round_trip(a, c, b"to c")
        to_c, from_c = _circuits(a, c), _circuits(c, a)
        assert len(to_c) == len(from_c) == 1
        await a.disconnect(b.local_peer)  # a's circuit with b ends
        await wait_for(lambda: len(ended) == 2, "the relay ending both its directions")
        await wait_for(lambda: not _circuits(b, a), "b seeing its circuit with a end")
        # a's circuit with c is untouched, at both ends, and both directions still cross it.
        assert (_circuits(a, c), _circuits(c, a)) == (to_c, from_c)
        await _round_trip(a, c, b"still")
        await _round_trip(c, a, b"back")
        assert (_circuits(a, c), _circuits(c, a)) == (to_c, from_c)


class _LateReads:
    """A secured connection whose reads come late until ``punctual`` is set, as on a loaded
    member (any other use passes through)."""

    def __init__(self, inner: Any, punctual: trio.Event) -> None:
        self.inner = inner
        self.punctual = punctual

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read(self, n: int | None = None) -> bytes:
        if not self.punctual.is_set():
            await trio.sleep(0.3)
        return bytes(await self.inner.read(n))


def _slow_upgrade(a: Any, b: Any) -> tuple[trio.Event, trio.Event]:
    """a reads its upgrade's answers late until ``punctual`` is set; ``arrived`` is set once
    b holds the relayed circuit (its half of the upgrade done)."""
    arrived = trio.Event()

    def circuit_at_b(conn: Any) -> None:
        if _kind(conn) == "relayed":
            arrived.set()

    b.host.get_network().register_notifee(_OnConnected(circuit_at_b))
    upgrader = cast(Any, a.host.get_network()).upgrader
    upgrade = upgrader.upgrade_connection
    punctual = trio.Event()

    async def late_reads(secured: Any, peer_id: ID) -> Any:
        return await upgrade(_LateReads(secured, punctual), peer_id)

    upgrader.upgrade_connection = late_reads
    return arrived, punctual


async def test_a_dial_given_up_mid_upgrade_leaves_no_circuit_at_the_other_end() -> None:
    async with _members(["a", "b"], "abandoned") as (_relay, m):
        a, b = m["a"], m["b"]
        # a is loaded: it reads b's answer to the muxer proposal late, and the caller's
        # deadline (a 2 s probe, say) expires once b has finished its half of the upgrade.
        arrived, punctual = _slow_upgrade(a, b)
        with trio.CancelScope() as caller:
            async with trio.open_nursery() as nursery:

                async def deadline() -> None:
                    await arrived.wait()
                    caller.cancel()

                nursery.start_soon(deadline)
                assert a.relay_client is not None
                await a.relay_client.dial(b.local_peer)
        punctual.set()
        assert caller.cancelled_caught and not _circuits(a, b)
        # b's half goes as well: kept, it would swallow every stream b opens to a, and b
        # would never redial (it counts as connected).
        await wait_for(lambda: not _circuits(b, a), "b's half of the abandoned circuit", 5)
        await _round_trip(b, a, b"redialled")
        assert len(_circuits(a, b)) == len(_circuits(b, a)) == 1


async def test_a_relayed_dial_goes_on_after_the_stream_that_started_it_gave_up() -> None:
    async with _members(["a", "b"], "given-up-open") as (_relay, m):
        a, b = m["a"], m["b"]
        arrived, punctual = _slow_upgrade(a, b)
        # A probe's deadline expires while the dial it started is still upgrading.
        with trio.move_on_after(20) as caller:
            async with trio.open_nursery() as nursery:

                async def deadline() -> None:
                    await arrived.wait()
                    caller.cancel()

                nursery.start_soon(deadline)
                await a.open_stream(b.local_peer, ECHO)
        assert caller.cancelled_caught
        punctual.set()
        # The dial was not cut short: it ends with one circuit, the same at both ends, and the
        # next stream uses it without dialling again.
        await wait_for(lambda: len(_circuits(a, b)) == 1, "a's dial finishing on its own", 10)
        kept = _circuits(a, b)
        await wait_for(lambda: len(_circuits(b, a)) == 1, "one circuit at b", 10)
        await _round_trip(a, b, b"no redial")
        await _round_trip(b, a, b"both ways")
        assert (_circuits(a, b), len(_circuits(b, a))) == (kept, 1), (a.stalls, b.stalls)


async def test_a_connection_whose_stream_opens_keep_timing_out_is_closed_and_redialled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seeds = {n: _seed(f"stall/{n}") for n in ("a", "b")}
    admitted = {RelayedTransport(s, lambda _: True).local_peer for s in seeds.values()}
    b = RelayedTransport(seeds["b"], admitted.__contains__)
    b.serve(ECHO, echo)
    async with b:
        a = RelayedTransport(
            seeds["a"],
            admitted.__contains__,
            peer_addrs={b.local_peer: list(b.listen_addrs)},
            admission_timeout=0.5,
        )
        async with a:
            await _round_trip(a, b, b"fine")
            first = _circuits(a, b)
            # b's end goes silent: streams open but their admission byte never comes.
            stuck = trio.Event()
            serve_stream = b._on_stream

            async def silent(protocol: str, net_stream: Any) -> None:
                await stuck.wait()
                await serve_stream(protocol, net_stream)

            b._on_stream = silent  # type: ignore[method-assign]
            with caplog.at_level(logging.WARNING, logger="p2pfed.transport.libp2p_relayed"):
                for _ in range(1, libp2p_relayed.STALLS_BEFORE_REDIAL + 1):
                    assert _circuits(a, b) == first  # kept until the last of them
                    with pytest.raises(BrokenError, match="did not admit"):
                        await a.open_stream(b.local_peer, ECHO)
            assert not _circuits(a, b), "the stalled connection is closed"
            line = next(r.getMessage() for r in caplog.records if "timed out" in r.getMessage())
            assert b.local_peer in line and "did not admit" in line, line
            b._on_stream = serve_stream  # type: ignore[method-assign]
            stuck.set()
            await _round_trip(a, b, b"again")  # redialled
            assert _circuits(a, b) and _circuits(a, b) != first
            assert not a.stalls
