"""Hole punching (DCUtR) over p2pfed's transport, on 127.0.0.1: a punch turns a relayed link
into a direct one that outlives the relay; the address a peer advertises decides where we dial,
never whom we accept; a peer's loopback address is never dialled. Real NATs, where the two
dials must cross: tests/netns/test_hole_punching.py."""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2 import dcutr
from multiaddr import Multiaddr
from transport_harness import echoed, relay_consortium, wait_for

from p2pfed.transport.holepunch import _local_only

pytestmark = [pytest.mark.network]
SECRET = b"patient-0042 HbA1c 7.9"


async def test_a_hole_punch_turns_a_relayed_link_direct_and_it_outlives_the_relay() -> None:
    async with relay_consortium(["a", "b"], {"a", "b"}) as (_relay, relay_t, m, _seen):
        a, b = m["a"], m["b"]
        relay_id = relay_t.local_peer
        await wait_for(lambda: relay_id in b.relay_client.reserved, "b's reservation")  # type: ignore[union-attr]
        assert await echoed(a, b.local_peer, SECRET) == b"echo:" + SECRET
        assert a.links()[b.local_peer]["via"] == "relayed"
        assert a.links()[b.local_peer]["hole_punch"] is None  # nobody has tried yet
        puncher = a.hole_puncher
        assert puncher is not None
        # What DCUtR does once both ends traded addresses over the circuit: dial at once.
        ok = await puncher._perform_hole_punch(
            ID.from_base58(b.local_peer), [Multiaddr(b.listen_addrs[0])]
        )
        assert ok
        assert a.links()[b.local_peer]["via"] == "hole-punched"
        assert "hole_punch" not in a.links()[b.local_peer]
        assert b.links()[a.local_peer]["via"] == "direct"  # b only accepted it
        # The relay goes away; the link does not need it any more.
        await relay_t.aclose()
        with trio.fail_after(20):
            assert await echoed(a, b.local_peer, b"after the relay") == b"echo:after the relay"
        assert a.links()[b.local_peer]["via"] == "hole-punched"


async def test_an_advertised_address_decides_where_we_dial_never_whom_we_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DCUtR waits up to 5 s per dial round for a connection that will not come; 3 rounds.
    monkeypatch.setattr(dcutr, "_HOLE_PUNCH_ROUND_TIMEOUT", 0.5)
    # b, relayed to a, advertises c's address as its own (a lie, or a stale mapping now
    # handed to another member): a dials it, meets c's key, and refuses the connection as b's.
    async with relay_consortium(["a", "b", "c"], {"a", "b", "c"}) as (_r, relay_t, m, _seen):
        a, b, c = m["a"], m["b"], m["c"]
        relay_id = relay_t.local_peer
        await wait_for(lambda: relay_id in b.relay_client.reserved, "b's reservation")  # type: ignore[union-attr]
        assert await echoed(a, b.local_peer, SECRET) == b"echo:" + SECRET
        puncher = a.hole_puncher
        assert puncher is not None
        forged = c.listen_addrs[0]
        b_id = ID.from_base58(b.local_peer)
        # DCUtR also dials what identify told a of b; behind real NATs that is b's private
        # address, useless to a. On 127.0.0.1 it would reach b: forget it.
        a.host.get_peerstore().clear_addrs(b_id)
        ok = await puncher._perform_hole_punch(b_id, [Multiaddr(forged)])
        assert not ok
        link = a.links()[b.local_peer]
        assert link["via"] == "relayed"
        assert forged in link["hole_punch"]  # status names what was tried
        assert b.local_peer not in puncher.punched
        # Whatever a holds to b is still the circuit: b's streams keep working through it.
        assert await echoed(a, b.local_peer, b"still b") == b"echo:still b"


async def test_with_hole_punching_on_a_relayed_peer_that_can_be_dialled_becomes_direct() -> None:
    # The default: each member drives DCUtR towards every peer it reaches only through a
    # relay. On 127.0.0.1 the peer is dialable, so its first step (a plain dial) suffices.
    async with relay_consortium(["a", "b"], {"a", "b"}, hole_punch=True) as (_r, relay_t, m, _s):
        a, b = m["a"], m["b"]
        relay_id = relay_t.local_peer
        await wait_for(lambda: relay_id in b.relay_client.reserved, "b's reservation")  # type: ignore[union-attr]
        assert await echoed(a, b.local_peer, SECRET) == b"echo:" + SECRET
        await wait_for(
            lambda: a.links()[b.local_peer]["via"] != "relayed", "a direct link to b", timeout=30
        )
        assert a.links()[b.local_peer]["via"] in ("direct", "hole-punched")


@pytest.mark.parametrize(
    ("addr", "local"),
    [
        ("/ip4/127.0.0.1/tcp/4001", True),
        ("/ip4/127.8.0.1/tcp/4001", True),
        ("/ip4/0.0.0.0/tcp/4001", True),
        ("/ip6/::1/tcp/4001", True),
        ("/ip6/::/tcp/4001", True),
        ("/ip4/198.51.100.11/tcp/4001", False),
        ("/ip4/10.1.0.2/tcp/4001", False),
        ("/dns4/hospital.example/tcp/4001", False),
        ("/ip4/not-an-ip/tcp/1", False),
    ],
)
def test_a_peers_loopback_or_wildcard_address_is_never_dialled(addr: str, local: bool) -> None:
    # Dialled from our own listen port, 127.0.0.1 at that port would connect us to ourselves.
    assert _local_only(addr) is local
