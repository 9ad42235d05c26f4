"""The live roster: file watch and the roster-announcement protocol, attacked in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pfed.errors import RemoteProtocolError
from p2pfed.identity import Identity, Member, Roster, RosterGate, RosterProblem, RosterStore
from p2pfed.node.roster_sync import (
    FILE_SOURCE,
    MAX_ANNOUNCE_BYTES,
    ROSTER_PROTOCOL,
    LiveRoster,
    RosterAnnouncer,
    RosterChange,
    enforce,
    run_unless,
    session_id,
)
from p2pfed.transport.memory import MemoryNetwork, MemoryTransport
from p2pfed.wire import Frame, FrameType, read_frame, write_frame
from p2pfed.wire.frames import Limits

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
ADMIN = Identity.from_seed(b"\xaa" * 32)
OUTSIDER = Identity.from_seed(b"\xbb" * 32)
NAMES = ("alice", "bob", "carol", "xavier")
IDS = {name: Identity.from_seed(bytes([i + 1]) * 32) for i, name in enumerate(NAMES)}
PID = {name: ident.peer_id for name, ident in IDS.items()}
BIG = Limits(max_payload=4 << 20, max_frame_bytes=(4 << 20) + 1024)


def v1() -> Roster:
    return Roster(
        "hospitals",
        1,
        NOW + timedelta(days=30),
        tuple(Member.from_public_key(n, IDS[n].public_key) for n in NAMES),
        (ADMIN.public_key,),
    ).signed_by(ADMIN)


def v2() -> Roster:
    """Version 2: xavier revoked."""
    return v1().without_member("xavier").signed_by(ADMIN)


@dataclass
class Node:
    name: str
    live: LiveRoster
    transport: MemoryTransport | None = None
    announcer: RosterAnnouncer | None = None
    changes: list[RosterChange] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)


def node(tmp_path: Path, name: str, roster: Roster | None = None) -> Node:
    roster = roster or v1()
    path = tmp_path / name / "roster.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    roster.save(path)
    gate = RosterGate.open(path, state=tmp_path / name / "roster-state.json", clock=lambda: NOW)
    return Node(name, LiveRoster(gate, path))


@asynccontextmanager
async def attached(
    network: MemoryNetwork, n: Node, *, run: bool = True, exchange_interval: float = 30.0
) -> AsyncIterator[Node]:
    """``n`` on the network with its announcer (its start-up exchange and file watch running)."""

    async def on_change(change: RosterChange) -> None:
        n.changes.append(change)
        n.changed.set()

    async with network.open(PID[n.name], n.live.gate) as transport, trio.open_nursery() as bg:
        n.transport = transport
        n.announcer = RosterAnnouncer(
            transport,
            n.live,
            on_change,
            timeout=2,
            poll_interval=0.01,
            exchange_interval=exchange_interval,
        )
        if run:
            bg.start_soon(n.announcer.run)
        yield n
        bg.cancel_scope.cancel()


async def push_raw(attacker: MemoryTransport, victim: str, payload: bytes) -> Frame | None:
    """What a dishonest member can do: send any payload as its announcement; the reply."""
    stream = await attacker.open_stream(victim, ROSTER_PROTOCOL)
    async with stream:
        frame = Frame(FrameType.CONTROL, "hospitals", 0, attacker.local_peer, 0, payload)
        await write_frame(stream, frame, BIG, timeout=2)
        try:
            return await read_frame(stream, BIG, timeout=2)
        except Exception:
            return None  # the victim hung up on it


async def test_a_roster_written_on_one_member_reaches_the_others_and_cuts_the_revoked_off(
    tmp_path: Path,
) -> None:
    network = MemoryNetwork()
    nodes = {name: node(tmp_path, name) for name in NAMES}
    with trio.fail_after(10):
        async with (
            attached(network, nodes["alice"]) as alice,
            attached(network, nodes["bob"]) as bob,
            attached(network, nodes["carol"]) as carol,
            attached(network, nodes["xavier"]) as xavier,
        ):
            v2().save(alice.live.path)  # the operator puts v2 on alice only
            for n in (alice, bob, carol):
                await n.changed.wait()
            assert xavier.transport is not None
            for n in (bob, carol):
                change = n.changes[0]
                assert (change.old.version, change.new.version) == (1, 2)
                assert change.removed == (PID["xavier"],) and change.added == ()
                assert change.source == PID["alice"]  # pushed, not read from a file
                # Written atomically to the member's roster file: a restart starts from v2.
                assert Roster.load(n.live.path).digest() == v2().digest()
                assert RosterStore(n.live.path.parent / "roster-state.json").load().version == 2  # type: ignore[union-attr]
                # The revoked member's streams and announcements are refused.
                with pytest.raises(RemoteProtocolError):
                    await xavier.transport.open_stream(PID[n.name], ROSTER_PROTOCOL)
            assert alice.changes[0].source == FILE_SOURCE
            assert xavier.live.gate.roster.version == 1  # nobody pushes v2 to a non-member
            assert not xavier.changes


@pytest.mark.parametrize(
    ("payload", "problem", "says"),
    [
        (lambda: v1().to_json().encode(), None, ""),  # rollback: refused, not a fault
        (
            lambda: v2().with_expiry(NOW - timedelta(days=1)).signed_by(ADMIN).to_json().encode(),
            RosterProblem.EXPIRED,
            "expired",
        ),
        (
            lambda: v1().without_member("bob").to_json().encode(),
            RosterProblem.UNDER_SIGNED,
            "0 valid signatures",
        ),
        (
            lambda: v1().without_member("bob").signed_by(OUTSIDER).to_json().encode(),
            RosterProblem.UNDER_SIGNED,
            "valid signature",
        ),
        (
            lambda: v2().to_json().replace('"name": "alice"', '"name": "alicia"').encode(),
            RosterProblem.TAMPERED,
            "changed after it was signed",
        ),
        (lambda: b"not a roster", RosterProblem.MALFORMED, "not valid JSON"),
        (lambda: b" " * (MAX_ANNOUNCE_BYTES + 1), None, "announcement"),
    ],
    ids=[
        "rollback",
        "expired",
        "unsigned",
        "foreign-signer",
        "tampered",
        "not-a-roster",
        "oversized",
    ],
)
async def test_a_dishonest_member_cannot_push_a_roster_that_admins_did_not_sign_as_newest(
    tmp_path: Path, payload: object, problem: RosterProblem | None, says: str
) -> None:
    network = MemoryNetwork()
    carol_v2 = v2()
    nodes = {"carol": node(tmp_path, "carol", carol_v2), "bob": node(tmp_path, "bob")}
    assert callable(payload)
    with trio.fail_after(10):
        async with (
            attached(network, nodes["carol"]) as carol,
            attached(network, nodes["bob"], run=False) as bob,
        ):
            assert bob.transport is not None
            reply = await push_raw(bob.transport, PID["carol"], payload())
            # Nothing changed at the victim: not its gate, not its file, no change event.
            assert carol.live.gate.roster.digest() == carol_v2.digest()
            assert Roster.load(carol.live.path).digest() == carol_v2.digest()
            assert not carol.changes
            if says == "":  # an older version is only the sender being behind: it gets ours
                assert reply is not None and Roster.from_json(reply.payload).version == 2
                assert not carol.live.refusals
                return
            refusal = carol.live.refusals[-1]
            assert refusal.source == PID["bob"] and refusal.problem is problem
            assert PID["bob"] in refusal.message and says in refusal.message
            # The victim still serves honest exchanges afterwards.
            await bob.announcer.exchange(PID["carol"])  # type: ignore[union-attr]
            assert bob.live.gate.roster.version == 2


async def test_a_member_that_was_offline_catches_up_when_it_comes_back(tmp_path: Path) -> None:
    network = MemoryNetwork()
    nodes = {"alice": node(tmp_path, "alice", v2()), "carol": node(tmp_path, "carol")}
    with trio.fail_after(10):
        async with attached(network, nodes["alice"]) as alice:
            async with attached(network, nodes["carol"]) as carol:  # starts with v1
                await carol.changed.wait()
                assert carol.changes[0].source == PID["alice"]
                assert carol.live.gate.roster.version == 2
                assert Roster.load(carol.live.path).version == 2
            assert not alice.changes


async def test_a_refused_roster_file_is_logged_once_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = node(tmp_path, "alice", v2())
    v1().save(n.live.path)  # someone restores an old copy
    assert n.live.poll_file() is None
    assert n.live.poll_file() is None  # unchanged file: not offered, not logged again
    assert [r.problem for r in n.live.refusals] == [RosterProblem.ROLLED_BACK]
    assert "older than version 2" in n.live.refusals[0].message
    assert n.live.gate.roster.version == 2
    n.live.path.write_text("{")
    assert n.live.poll_file() is None
    assert n.live.refusals[-1].problem is RosterProblem.MALFORMED
    assert sum("refused the roster from the roster file" in r.message for r in caplog.records) == 2
    v2().without_member("bob").signed_by(ADMIN).save(n.live.path)  # v3 is taken
    change = n.live.poll_file()
    assert change is not None and change.removed == (PID["bob"],)


async def test_run_unless_cancels_the_work_when_the_roster_changes() -> None:
    event = trio.Event()

    async def forever() -> None:
        event.set()  # the roster changes while the rounds run
        await trio.sleep_forever()

    async def short() -> None:
        await trio.lowlevel.checkpoint()

    with trio.fail_after(5):
        assert await run_unless(event, forever) is False
        assert await run_unless(trio.Event(), short) is True


@pytest.mark.network
async def test_over_libp2p_the_revoked_member_is_disconnected_and_refused(tmp_path: Path) -> None:
    """Real hosts: a member connected before the change loses its connections and streams."""

    from p2pfed.transport.libp2p import Libp2pTransport

    names = ("alice", "bob", "xavier")
    nodes = {name: node(tmp_path, name) for name in names}
    with trio.fail_after(30):
        async with (
            Libp2pTransport(IDS["alice"].seed, nodes["alice"].live.gate) as a,
            Libp2pTransport(IDS["bob"].seed, nodes["bob"].live.gate) as b,
            Libp2pTransport(IDS["xavier"].seed, nodes["xavier"].live.gate) as x,
            trio.open_nursery() as bg,
        ):
            hosts = {"alice": a, "bob": b, "xavier": x}
            for name, t in hosts.items():
                for other, u in hosts.items():
                    if other != name:
                        t.set_peer_addrs(PID[other], u.listen_addrs)
                n = nodes[name]

                async def on_change(
                    change: RosterChange, n: Node = n, t: Libp2pTransport = t
                ) -> None:
                    n.changes.append(change)
                    await enforce(change, t)
                    n.changed.set()

                n.announcer = RosterAnnouncer(t, n.live, on_change, timeout=5, poll_interval=0.01)
            await nodes["xavier"].announcer.exchange_all()  # type: ignore[union-attr]
            assert PID["xavier"] in b.connected_peers() and PID["xavier"] in a.connected_peers()
            for name in ("alice", "bob"):
                bg.start_soon(nodes[name].announcer.run)  # type: ignore[union-attr]
            v2().save(nodes["alice"].live.path)
            await nodes["alice"].changed.wait()
            await nodes["bob"].changed.wait()
            for t in (a, b):
                while PID["xavier"] in t.connected_peers():
                    await trio.sleep(0.01)
                with pytest.raises(RemoteProtocolError):
                    await x.open_stream(t.local_peer, ROSTER_PROTOCOL)
            bg.cancel_scope.cancel()


async def test_a_renewal_that_adds_a_member_travels_the_same_way(tmp_path: Path) -> None:
    yves = Identity.from_seed(b"\x77" * 32)
    address = "/ip4/127.0.0.1/tcp/4999"
    renewed = (
        v1()
        .with_member(Member.from_public_key("yves", yves.public_key, [address]))
        .with_expiry(NOW + timedelta(days=90))
        .signed_by(ADMIN)
    )
    network = MemoryNetwork()
    nodes = {"alice": node(tmp_path, "alice"), "bob": node(tmp_path, "bob")}

    @dataclass
    class Recording:
        addrs: dict[str, list[str]] = field(default_factory=dict)

        def set_peer_addrs(self, peer: str, addrs: str | Iterable[str]) -> None:
            self.addrs[peer] = list(addrs)

        async def drop_refused_peers(self) -> list[str]:
            return []

    with trio.fail_after(10):
        async with (
            attached(network, nodes["alice"]) as alice,
            attached(network, nodes["bob"]) as bob,
        ):
            renewed.save(alice.live.path)
            await bob.changed.wait()
            change = bob.changes[0]
            assert change.added == (yves.peer_id,) and change.removed == ()
            assert bob.live.gate.roster.expires_at == NOW + timedelta(days=90)
            assert bob.live.gate(yves.peer_id)
            recording = Recording()
            assert await enforce(change, recording) == []
            assert recording.addrs == {yves.peer_id: [address]}
            assert alice.changes[0].new.version == 3


def test_the_session_names_the_roster_version_and_fits_the_wire() -> None:
    long = "c" * 64
    assert session_id("hospitals", 2) == "hospitals@v2"
    assert len(session_id(long, 12345)) == 64
    assert session_id(long, 1) != session_id(long, 2)


async def test_a_message_of_the_previous_rosters_cohort_is_refused_not_mixed_in() -> None:
    """A member still on version 1 sends a round-3 message; the version-2 cohort drops it."""
    from p2pfed.collectives.messages import Ready
    from p2pfed.collectives.round import ControlService

    network = MemoryNetwork()
    with trio.fail_after(5):
        async with network.open("old") as old, network.open("new") as new:
            receiving = ControlService(new, session_id("hospitals", 2), timeout=1)
            mailbox = receiving.open_round(3)
            sender = ControlService(old, session_id("hospitals", 1), timeout=1)
            await sender.send("new", Ready(3, 0, 0))
            with pytest.raises(trio.WouldBlock):
                mailbox.receive_nowait()
            assert [e.peer for e in receiving.exclusions] == ["old"]
            # The same message within the version-2 session is delivered.
            await ControlService(old, session_id("hospitals", 2), timeout=1).send(
                "new", Ready(3, 0, 0)
            )
            assert mailbox.receive_nowait() == ("old", Ready(3, 0, 0))


async def test_a_new_cohort_waits_until_its_members_hold_the_new_version(tmp_path: Path) -> None:
    network = MemoryNetwork()
    nodes = {"alice": node(tmp_path, "alice", v2()), "bob": node(tmp_path, "bob")}
    with trio.fail_after(10):
        async with (
            attached(network, nodes["alice"], run=False) as alice,
            attached(network, nodes["bob"], run=False) as bob,
        ):
            assert alice.announcer is not None
            # bob answers the first exchange with version 1 (then takes 2), the next with 2;
            # carol is down and not waited for.
            assert await alice.announcer.wait_in_step([PID["bob"], PID["carol"]], 5) == []
            assert bob.live.gate.roster.version == 2
            assert await alice.announcer.exchange(PID["bob"]) == 2


async def test_a_member_that_was_only_cut_off_catches_up_by_the_periodic_exchange(
    tmp_path: Path,
) -> None:
    network = MemoryNetwork()
    nodes = {"alice": node(tmp_path, "alice", v2()), "carol": node(tmp_path, "carol")}
    with trio.fail_after(10):
        async with attached(network, nodes["alice"], exchange_interval=0.05):
            await trio.testing.wait_all_tasks_blocked()  # alice's start-up exchange missed carol
            # carol comes back without restarting: it does not exchange itself.
            async with attached(network, nodes["carol"], run=False) as carol:
                await carol.changed.wait()
                assert carol.changes[0].source == PID["alice"]
                assert carol.live.gate.roster.version == 2
