"""Circuit relay v2 over p2pfed's transport, on 127.0.0.1: members without a dialable address
reach each other through a roster-gated relay; Noise stays end to end (the relay carries
ciphertext only); non-members and removed members get neither reservations nor circuits."""

from __future__ import annotations

import gc
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from transport_harness import echo, relay_consortium, wait_for
from transport_harness import relay_seed as _seed

from p2pfed.cli import main
from p2pfed.errors import BrokenError
from p2pfed.identity import Identity, Member, Roster
from p2pfed.transport import relay as relay_module
from p2pfed.transport.libp2p_relayed import RelayedTransport
from p2pfed.transport.relay import serve_relay

pytestmark = [pytest.mark.network]
SECRET = b"patient-0042 HbA1c 7.9 -- must never be readable by the relay"


async def test_members_behind_nat_talk_through_the_relay_which_sees_only_ciphertext() -> None:
    async with relay_consortium(["a", "b"], {"a", "b"}) as (_relay, relay_t, m, seen):
        relay_id = relay_t.local_peer
        await wait_for(lambda: relay_id in m["b"].relay_client.reserved, "b's reservation")  # type: ignore[union-attr]
        stream = await m["a"].open_stream(m["b"].local_peer, "/test/echo/1")
        await stream.send_all(SECRET)
        assert await stream.receive_exactly(5 + len(SECRET)) == b"echo:" + SECRET
        await stream.aclose()
        links = m["a"].links()
        assert links[m["b"].local_peer]["via"] == "relayed"
        assert links[m["b"].local_peer]["open_s"] > 0
        assert links[relay_id]["via"] == "direct"
        # Each link's round trip is measured by its own Yamux pings (the first after 0.5 s).
        b_id = m["b"].local_peer
        await wait_for(
            lambda: m["a"].links()[b_id]["rtt_s"] is not None, "a ping through the relay"
        )
        await wait_for(lambda: m["a"].links()[relay_id]["rtt_s"] is not None, "a ping to the relay")
        assert 0 < m["a"].links()[b_id]["rtt_s"] < 5.0
        # The relay carried the exchange (Noise handshake and the echo) but never the text.
        carried = b"".join(seen)
        assert len(carried) > 2 * len(SECRET)
        assert SECRET not in carried and b"patient-0042" not in carried


async def test_a_non_member_gets_no_reservation_and_no_circuit() -> None:
    async with relay_consortium(["a", "mallory"], {"a"}) as (_relay, relay_t, m, _seen):
        relay_id = relay_t.local_peer
        await wait_for(lambda: relay_id in m["a"].relay_client.reserved, "a's reservation")  # type: ignore[union-attr]
        mallory = m["mallory"].relay_client
        assert mallory is not None
        await wait_for(lambda: relay_id in mallory.problems, "mallory's refusal")
        assert relay_id not in mallory.reserved
        with pytest.raises(BrokenError, match="unreachable"):
            await m["mallory"].open_stream(m["a"].local_peer, "/test/echo/1")
        assert relay_t.refused_inbound >= 1


async def test_a_member_removed_while_connected_loses_reservations_and_circuits() -> None:
    async with relay_consortium(["a", "x"], {"a", "x"}) as (relay, relay_t, m, _seen):
        relay_id, x_id = relay_t.local_peer, m["x"].local_peer
        for n in ("a", "x"):
            client = m[n].relay_client
            assert client is not None
            await wait_for(lambda c=client: relay_id in c.reserved, f"{n}'s reservation")
        # x leaves the roster while its connection to the relay stays open.
        relay._gate = {relay_id, m["a"].local_peer}.__contains__
        x_client = m["x"].relay_client
        assert x_client is not None
        await x_client._reserve(relay_id)  # x asks again for a slot: refused on the open connection
        assert relay_id not in x_client.reserved
        assert "refused" in x_client.problems[relay_id]
        # a member asking the relay for a circuit to x is refused too, at the relay.
        a_client = m["a"].relay_client
        assert a_client is not None
        with pytest.raises(BrokenError, match="unreachable"):
            await a_client.dial(x_id)
        assert x_id in relay.refused


async def test_a_member_unreachable_without_a_relay_is_named_with_the_reason() -> None:
    admitted = {RelayedTransport(_seed(n), lambda _: True).local_peer for n in ("a", "b")}
    a = RelayedTransport(_seed("a"), admitted.__contains__)
    b_id = RelayedTransport(_seed("b"), lambda _: True).local_peer
    async with a:
        with pytest.raises(BrokenError, match="no address is known"):
            await a.open_stream(b_id, "/test/echo/1")
    assert "no address is known" in a.unreachable[b_id]
    assert "no relay is listed in the roster" in a.unreachable[b_id]


async def test_relayed_members_drop_with_the_relay_and_rejoin_when_it_returns() -> None:
    names = ("relay", "a", "b")
    admitted = {RelayedTransport(_seed(n), lambda _: True).local_peer for n in names}
    gate = admitted.__contains__
    first = RelayedTransport(_seed("relay"), gate)
    async with first, serve_relay(first, gate):
        relay_id, addrs = first.local_peer, list(first.listen_addrs)
        # On 127.0.0.1 every member is dialable: no hole punching, the links stay relayed.
        a = RelayedTransport(_seed("a"), gate, relays={relay_id: addrs}, hole_punch=None)
        b = RelayedTransport(_seed("b"), gate, relays={relay_id: addrs}, hole_punch=None)
        b.serve("/test/echo/1", echo)
        async with a, b:
            assert a.relay_client is not None and b.relay_client is not None
            b_client = b.relay_client
            await wait_for(lambda: relay_id in b_client.reserved, "b's reservation")
            stream = await a.open_stream(b.local_peer, "/test/echo/1")
            await stream.send_all(b"one")
            assert await stream.receive_exactly(8) == b"echo:one"
            await first.aclose()  # the relay dies
            await wait_for(lambda: b.local_peer not in a.connected_peers(), "a losing b")
            await wait_for(lambda: relay_id not in b_client.reserved, "b losing its slot")
            with pytest.raises(BrokenError, match="unreachable"):
                await a.open_stream(b.local_peer, "/test/echo/1")
            assert "cannot reach it" in b_client.problems.get(relay_id, "cannot reach it")
            port = int(addrs[0].rsplit("/", 1)[1])
            second = RelayedTransport(_seed("relay"), gate, port=port)  # back, same address
            async with second, serve_relay(second, gate):
                await wait_for(lambda: relay_id in b_client.reserved, "b's new reservation")
                stream = await a.open_stream(b.local_peer, "/test/echo/1")
                await stream.send_all(b"two")
                assert await stream.receive_exactly(8) == b"echo:two"
                assert a.links()[b.local_peer]["via"] == "relayed"


def test_p2pfed_relay_refuses_a_key_the_roster_does_not_list_as_relay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin, site, relay = Identity.generate(), Identity.generate(), Identity.generate()
    site.save(tmp_path / "site.key")
    relay.save(tmp_path / "relay.key")
    roster = Roster(
        "eu-test",
        1,
        datetime.now(UTC) + timedelta(days=1),
        (Member.from_public_key("site", site.public_key, []),),
        (admin.public_key,),
    ).signed_by(admin)
    roster.save(tmp_path / "roster.json")
    for key in ("site.key", "relay.key"):  # a member that is no relay; a key not listed
        argv = ["relay", "--key", str(tmp_path / key), "--roster", str(tmp_path / "roster.json")]
        assert main([*argv, "--state", str(tmp_path / "state")]) == 2
        err = capsys.readouterr().err
        assert "is not listed with role relay in roster version 1" in err
        assert "Traceback" not in err


def test_status_says_how_each_member_is_reached_or_why_not() -> None:
    from p2pfed.cli.commands.status import _members

    rows = dict(
        _members(
            {
                "members": {
                    "st-olav": {
                        "connected": True, "reached": "relayed", "open_s": 0.052, "rtt_s": 0.0412,
                        "throughput_mbps": 87.314,
                    },
                    "haukeland": {"connected": True, "reached": "direct", "open_s": None},
                    "oslo": {"connected": True, "reached": "hole-punched", "open_s": 0.003},
                    "uppsala": {
                        "connected": True, "reached": "relayed", "open_s": 0.06,
                        "hole_punch": "no direct connection after dialling its addresses "
                        "(/ip4/198.51.100.14/tcp/4001) at once",
                    },
                    "karolinska": {"connected": False, "reached": None, "unreachable": "no route"},
                }
            }
        )
    )  # fmt: skip
    assert rows["st-olav"].startswith(
        "connected (relayed, stream open 52 ms, round trip 41.2 ms, receiving 87.3 Mbit/s)"
    )
    assert rows["haukeland"].startswith("connected (direct), last round")
    assert rows["oslo"].startswith("connected (hole-punched, stream open 3 ms), last round")
    assert rows["uppsala"].startswith(
        "connected (relayed, stream open 60 ms; hole punch failed: no direct connection after "
        "dialling its addresses (/ip4/198.51.100.14/tcp/4001) at once), last round"
    )
    assert rows["karolinska"].startswith("not connected (unreachable: no route)")


async def test_a_member_closing_while_it_redials_its_relay_leaves_no_socket_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A member re-reserves on a relay that dropped it; closing mid-redial, the dial must not
    # finish into a host that already closed (its socket would stay open until collected).
    monkeypatch.setattr(relay_module, "RESERVE_EVERY", 0.001)
    leaked: list[str] = []
    for attempt in range(20):
        async with relay_consortium(["a"], {"a"}) as (_relay, relay_t, m, _seen):
            a, relay_id = m["a"], relay_t.local_peer
            client = a.relay_client
            assert client is not None
            await wait_for(lambda c=client, r=relay_id: r in c.reserved, "a's reservation")
            await relay_t.disconnect(a.local_peer)
            for _ in range(attempt % 5):  # close at different points of the redial
                await trio.lowlevel.checkpoint()
            await a.aclose()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        leaked += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
