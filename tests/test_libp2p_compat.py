"""Each change p2pfed makes to py-libp2p (``libp2p_compat``) holds, on real hosts on 127.0.0.1.

One test per change, written so that it fails if py-libp2p's own behaviour came back (the
change stopped applying, or a new py-libp2p ignores it), plus the import check: a py-libp2p
missing a name a change needs is refused with one sentence, never patched half-way.
"""

from __future__ import annotations

import gc
import importlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import multiaddr
import pytest
import trio
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.connection_gate import ConnectionGate
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux import yamux as yamux_module
from transport_harness import count_tasks, libp2p_group, seed_for

from p2pfed.errors import BrokenError, ConfigError
from p2pfed.transport import Stream
from p2pfed.transport import libp2p_compat as compat
from p2pfed.transport.libp2p import Libp2pTransport
from p2pfed.transport.libp2p_noise import BufferedNoiseSession

pytestmark = pytest.mark.network

NOISE_MESSAGE_ON_WIRE = 2 + 65_535  # length prefix + the largest Noise message


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


def swarm_of(transport: Libp2pTransport) -> Swarm:
    assert transport._host is not None
    network = transport._host.get_network()
    assert isinstance(network, Swarm)
    return network


@asynccontextmanager
async def pair(tag: str) -> AsyncIterator[tuple[Libp2pTransport, Libp2pTransport]]:
    async with libp2p_group(2, tag) as group:
        server, client = group.transports
        assert isinstance(server, Libp2pTransport) and isinstance(client, Libp2pTransport)
        server.serve("/echo/1", echo)
        yield server, client


async def round_trip(client: Libp2pTransport, server: Libp2pTransport, size: int) -> None:
    payload = bytes(range(256)) * (size // 256)
    stream = await client.open_stream(server.local_peer, "/echo/1")
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)
        assert await stream.receive_exactly(len(payload)) == payload


# -- the import check --------------------------------------------------------------------


def test_the_installed_py_libp2p_passes_the_check() -> None:
    compat.check_libp2p()  # what importing p2pfed.transport.libp2p already ran


MODULE_NAMES = sorted({(r.module, r.name.split(".")[0]) for r in compat.REQUIREMENTS})


@pytest.mark.parametrize(
    ("module", "name"), MODULE_NAMES, ids=[f"{m}.{n}" for m, n in MODULE_NAMES]
)
def test_a_py_libp2p_missing_a_name_is_refused_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, module: str, name: str
) -> None:
    monkeypatch.delattr(importlib.import_module(module), name)
    first = next(
        r for r in compat.REQUIREMENTS if (r.module, r.name.split(".")[0]) == (module, name)
    )
    dist = first.distribution
    with pytest.raises(ConfigError) as info:
        compat.check_libp2p()
    message = str(info.value)
    assert message.startswith(
        f"the installed {dist} {compat.installed_version(dist)} has no {module}.{first.name}"
    )
    assert f"p2pfed's '{first.change}' change" in message and message.count(". ") == 0


def test_a_missing_method_is_named_with_the_change_and_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Swarm, "unblock_peer")  # as if renamed upstream
    version = compat.installed_version("libp2p")
    with pytest.raises(ConfigError) as info:
        compat.check_libp2p()
    assert str(info.value) == (
        f"the installed libp2p {version} has no libp2p.network.swarm.Swarm.unblock_peer"
        "(self, peer_id), which p2pfed's 'redial-at-once' change to py-libp2p needs (written "
        "for libp2p 0.8.1); install that version"
    )


def test_a_changed_signature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def unblock_peer(self: Swarm, peer: object, *, forever: bool) -> None: ...

    monkeypatch.setattr(Swarm, "unblock_peer", unblock_peer)
    with pytest.raises(ConfigError, match=r"has a different signature \(self, peer, forever\)"):
        compat.check_libp2p()


# -- one test per change -----------------------------------------------------------------


async def test_yamux_256k_frames_are_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every Yamux frame is one write to the secured session: its largest write is one frame.
    frames: list[int] = []
    write = BufferedNoiseSession.write

    async def spy(self: BufferedNoiseSession, data: bytes) -> None:
        frames.append(len(data))
        await write(self, data)

    monkeypatch.setattr(BufferedNoiseSession, "write", spy)
    with trio.fail_after(15):
        async with pair("frames") as (server, client):
            await round_trip(client, server, 1 << 20)
    assert yamux_module.MAX_MESSAGE_SIZE == compat.YAMUX_FRAME_BYTES
    assert max(frames) == compat.YAMUX_FRAME_BYTES  # py-libp2p's own frames: 65,536 B at most


async def test_buffered_noise_session_sends_many_noise_messages_per_socket_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    write = RawConnection.write

    async def spy(self: RawConnection, data: bytes) -> None:
        sizes.append(len(data))
        await write(self, data)

    monkeypatch.setattr(RawConnection, "write", spy)
    with trio.fail_after(15):
        async with pair("noise") as (server, client):
            await round_trip(client, server, 1 << 20)
    # py-libp2p's session makes one socket call per Noise message (at most 65,537 B).
    assert max(sizes) > NOISE_MESSAGE_ON_WIRE


class Reads:
    """A reader handing out the given pieces, one per read, whatever is asked."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.pieces.pop(0) if self.pieces else b""


async def test_yamux_frame_reads_hand_over_the_sessions_bytes_uncopied() -> None:
    with trio.fail_after(15):
        async with pair("frames") as (server, client):
            await round_trip(client, server, 1 << 20)
    frame = bytes(256 * 1024)
    # py-libp2p's read_exactly returns a fresh copy even when one read brought the frame.
    assert await yamux_module.read_exactly(Reads(frame), len(frame)) is frame
    assert await yamux_module.read_exactly(Reads(b"ab", b"c", b"de"), 5) == b"abcde"


async def test_an_inbound_connections_task_ends_with_the_connection() -> None:
    async def cycle(server: Libp2pTransport, client: Libp2pTransport) -> None:
        await round_trip(client, server, 256)
        await client.disconnect(server.local_peer)
        while server.connected_peers():
            await trio.sleep(0.01)

    with trio.fail_after(15):
        async with pair("leak") as (server, client):
            await cycle(server, client)  # warm up: lazily created tasks and caches
            gc.collect()
            before = count_tasks()
            for _ in range(3):
                await cycle(server, client)
            # py-libp2p keeps one task per closed inbound connection until the swarm stops:
            # the count would never come back down.
            with trio.fail_after(3):
                while count_tasks() > before:
                    await trio.sleep(0.01)


async def test_the_inbound_step_keeps_py_libp2ps_ip_gate() -> None:
    ran: list[str] = []

    async def record(stream: Stream) -> None:
        ran.append(stream.remote_peer)

    with trio.fail_after(15):
        async with pair("ipgate") as (server, client):
            server.serve("/rec/1", record)
            # What an operator's deny list builds; the replaced inbound step must still ask it.
            swarm_of(server).connection_gate = ConnectionGate(deny_list=["127.0.0.0/8"])
            with pytest.raises(BrokenError):
                await client.open_stream(server.local_peer, "/rec/1")
            assert server.connected_peers() == [] and ran == []


async def test_a_peer_whose_dial_failed_can_be_dialed_again_at_once() -> None:
    with socket.socket() as probe:  # a free port, nobody listening on it yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    member = Libp2pTransport(seed_for("restart"), lambda _: True, port=port)
    with trio.fail_after(15):
        async with Libp2pTransport(
            seed_for("dialer"),
            lambda _: True,
            peer_addrs={member.local_peer: f"/ip4/127.0.0.1/tcp/{port}"},
        ) as dialer:
            with pytest.raises(BrokenError):  # the member is down
                await dialer.open_stream(member.local_peer, "/echo/1")
            async with member:  # ... and comes back: py-libp2p would block it for 60 s
                member.serve("/echo/1", echo)
                await round_trip(dialer, member, 256)


async def test_a_refused_dial_is_tried_once() -> None:
    attempts = 0

    async def hang_up(conn: trio.SocketStream) -> None:
        nonlocal attempts
        attempts += 1
        await conn.aclose()  # a port that answers, then drops every connection

    victim = Libp2pTransport(seed_for("victim"), lambda _: True).local_peer
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            async with Libp2pTransport(
                seed_for("dialer"),
                lambda _: True,
                peer_addrs={victim: f"/ip4/127.0.0.1/tcp/{port}"},
            ) as dialer:
                with pytest.raises(BrokenError):
                    await dialer.open_stream(victim, "/echo/1")
            nursery.cancel_scope.cancel()
    assert attempts == 1  # py-libp2p's default: 4 attempts with back-off


async def test_the_auto_connector_does_not_dial_peers_on_its_own() -> None:
    with trio.fail_after(15):
        async with pair("auto") as (server, client):
            swarm = swarm_of(client)
            addrs = [multiaddr.Multiaddr(a) for a in server.listen_addrs]
            swarm.peerstore.add_addrs(ID.from_base58(server.local_peer), addrs, 3600)
            # py-libp2p runs this every few seconds and on each disconnect: below its
            # connection quota, a running auto-connector dials the peerstore's peers.
            await swarm.auto_connector.maybe_connect()
            assert client.connected_peers() == []
