"""Dial-back on 127.0.0.1: a member learns whether others can dial its roster addresses.

Real libp2p hosts in process. The helper dials the roster's addresses for the asker on a
fresh connection whose handshake must authenticate the asker: a closed port and an address
that reaches another member both come back "not dialable" with the reason; the asker cannot
name other addresses to dial (a forged request's extra field is ignored); the dial-back
never joins the asker's connection table and logs no error; a member with roster addresses
checks itself once connected, and again sooner when nobody answered than when it failed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing
from libp2p.peer.id import ID
from transport_harness import wait_for

from p2pfed.transport.dialback import (
    DIALBACK_PROTOCOL,
    OK,
    RECHECK_S,
    RETRY_S,
    UNKNOWN_RETRY_S,
    DialBack,
    Reachability,
    decode_answer,
    summarize,
)
from p2pfed.transport.libp2p_relayed import RelayedTransport

pytestmark = [pytest.mark.network]


def _seed(name: str) -> bytes:
    return hashlib.sha256(f"dialback-test/{name}".encode()).digest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def members(*names: str, own: str = "") -> AsyncIterator[dict[str, RelayedTransport]]:
    """Members ``names``, all admitted; ``own`` (a name) checks its own addresses."""
    ids = {n: RelayedTransport(_seed(n), lambda _: True).local_peer for n in names}
    admitted = set(ids.values()).__contains__
    async with AsyncExitStack() as stack:
        out = {}
        for n in names:
            # A member's own roster address is where it listens: known once it listens, so
            # ``own`` gets a placeholder that only switches its checking on.
            t = RelayedTransport(
                _seed(n), admitted, own_addrs=["/ip4/127.0.0.1/tcp/1"] if n == own else ()
            )
            out[n] = await stack.enter_async_context(t)
        for n, t in out.items():
            for m, other in out.items():
                if m != n:
                    t.set_peer_addrs(other.local_peer, other.listen_addrs)
        yield out


async def test_a_member_the_others_can_dial_is_told_so() -> None:
    async with members("a", "b", "c") as m:
        a, b, c = m["a"], m["b"], m["c"]
        await a.connect(b.local_peer)
        await a.connect(c.local_peer)
        before = {p: len(a._conns_of(ID.from_base58(p))) for p in (b.local_peer, c.local_peer)}
        r = await a.dialback.check()
        assert r.state == "dialable"
        (addr,) = a.listen_addrs
        assert r.addresses == {addr: {b.local_peer: OK, c.local_peer: OK}}
        # The fresh connections closed after the handshake: none joined a's table.
        assert {p: len(a._conns_of(ID.from_base58(p))) for p in before} == before


async def test_a_closed_port_and_an_address_of_another_member_are_not_dialable() -> None:
    async with members("a", "b", "c") as m:
        a, b, c = m["a"], m["b"], m["c"]
        closed = f"/ip4/127.0.0.1/tcp/{closed_port()}"
        # b's roster: a at a closed port; c's roster: a at b's address (a mistake, or a lie).
        b.set_peer_addrs(a.local_peer, [closed])
        c.set_peer_addrs(a.local_peer, list(b.listen_addrs))
        await a.connect(b.local_peer)
        await a.connect(c.local_peer)
        r = await a.dialback.check()
        assert r.state == "not dialable"
        assert r.addresses[closed] == {b.local_peer: "connection refused"}
        (wrong,) = r.addresses[b.listen_addrs[0]].values()
        # The handshake met b's key, not a's: never "ok" for an address reaching someone else.
        assert wrong != OK and "does not correspond" in wrong, wrong


async def test_the_asker_cannot_make_a_helper_dial_an_address_of_its_choosing() -> None:
    async with members("a", "b") as m:
        a, b = m["a"], m["b"]
        dialled: list[str] = []
        real = b.dial_and_authenticate

        async def recording(addr: object, peer: str) -> None:
            dialled.append(str(addr))
            await real(addr, peer)

        b.dial_and_authenticate = recording  # type: ignore[method-assign]
        nonce = bytes(16)
        forged = {"nonce": nonce.hex(), "addrs": ["/ip4/10.9.9.9/tcp/22"], "results": []}
        stream = await a.open_stream(b.local_peer, DIALBACK_PROTOCOL)
        await stream.send_all(json.dumps(forged).encode())
        await stream.send_eof()
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
        await stream.aclose()
        rows = decode_answer(answer, nonce)
        assert dialled == [str(x) for x in a.listen_addrs] == [addr for addr, _ in rows]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_dial_back_logs_no_error_and_a_member_checks_itself_once_connected() -> None:
    # What the daemon's log gets: p2pfed's loggers, libp2p's records routed through them.
    seen, logger = _Records(), logging.getLogger("p2pfed")
    raw, libp2p = _Records(), logging.getLogger("libp2p")  # before the routing's filter
    logger.addHandler(seen)
    level, logger.level = logger.level, logging.INFO
    try:
        async with members("a", "b", own="a") as m:
            libp2p.addHandler(raw)
            a, b = m["a"], m["b"]
            await a.connect(b.local_peer)
            await wait_for(lambda: a.dialback.reachability.state == "dialable", "a's own check")
            # a's swarm notices the closed dial-back (libp2p logs it) after the answer came.
            await wait_for(
                lambda: any("fail to upgrade mux" in r.getMessage() for r in raw.records),
                "a's swarm noticing the dial-back close",
            )
    finally:
        libp2p.removeHandler(raw)
        logger.removeHandler(seen)
        logger.setLevel(level)
    errors = [(r.name, r.getMessage()) for r in seen.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    assert any("other members can dial this member at" in r.getMessage() for r in seen.records)


def test_summary_of_answers() -> None:
    assert summarize({}).state == "unknown"
    nobody = summarize({"b": [("/x", "connection refused")], "c": [("/x", "timed out")]}, 1.0)
    assert nobody.state == "not dialable"
    assert nobody.addresses == {"/x": {"b": "connection refused", "c": "timed out"}}
    one = summarize({"b": [("/x", "connection refused")], "c": [("/x", OK)]}, 1.0)
    assert one.state == "dialable"  # one helper outside a's network may fail; another reached it
    assert summarize({"b": []}).state == "unknown"  # the helper knew no address for us


def test_status_says_whether_others_can_dial_this_node() -> None:
    from p2pfed.cli.commands.status import _reachability

    ok = {"state": "dialable", "addresses": {"/ip4/192.0.2.7/tcp/4001": {"haukeland": OK}}}
    assert _reachability(ok) == "yes, at /ip4/192.0.2.7/tcp/4001 (dialled back by haukeland)"
    refused = {
        "state": "not dialable",
        "addresses": {"/ip4/192.0.2.7/tcp/4001": {"haukeland": "connection refused"}},
    }
    assert _reachability(refused).startswith(
        "NO (/ip4/192.0.2.7/tcp/4001: haukeland: connection refused): check the port forwarding"
    )
    assert _reachability({"state": "unknown"}).startswith("not checked yet")


async def test_a_check_nobody_answered_is_repeated_sooner_than_a_failed_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Connected:
        """Just enough transport for ``keep_checking``: one peer connected, nothing served."""

        def serve(self, protocol: str, handler: object) -> None:
            pass

        def connected_peers(self) -> list[str]:
            return ["helper"]

    verdicts = iter(["unknown", "unknown", "not dialable", "dialable", "dialable"])
    at: list[tuple[float, str]] = []
    db = DialBack(Connected(), ["/ip4/192.0.2.7/tcp/4001"])  # type: ignore[arg-type]

    async def check() -> Reachability:
        state = next(verdicts)
        at.append((trio.current_time(), state))
        return Reachability(state)

    db.check = check  # type: ignore[method-assign]
    with trio.move_on_after(UNKNOWN_RETRY_S * 2 + RETRY_S + RECHECK_S + 1):
        await db.keep_checking()
    gaps = [round(b[0] - a[0], 6) for a, b in itertools.pairwise(at)]
    assert gaps == [UNKNOWN_RETRY_S, UNKNOWN_RETRY_S, RETRY_S, RECHECK_S]
    assert UNKNOWN_RETRY_S < RETRY_S < RECHECK_S
