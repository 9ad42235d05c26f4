"""A member that ignores Yamux flow control cannot grow another member's memory without bound.

The attacker is an admitted member (its key may be stolen) on real libp2p over 127.0.0.1: it
opens streams to a protocol whose handler does not read yet and pushes data with flow control
switched off on its side (its send window set beyond anything granted). What the victim holds
for it is then read back by the handler: at most the bound, and the member is named.
"""

from __future__ import annotations

import logging

import pytest
import trio
from transport_harness import libp2p_group

from p2pfed.errors import P2PFedError
from p2pfed.transport import libp2p_yamux
from p2pfed.transport.base import Stream

pytestmark = pytest.mark.network

SINK = "/p2pfed/test/sink/1.0.0"
MiB = 1 << 20


async def flood(streams: list[Stream], each: int) -> None:
    """Push ``each`` bytes down every stream, ignoring the windows the victim granted."""
    chunk = bytes(256 * 1024 - 12)
    for stream in streams:
        stream._stream.muxed_stream.send_window = 1 << 40  # type: ignore[attr-defined]
    try:
        for stream in streams:
            sent = 0
            while sent < each:
                await stream.send_all(chunk)
                sent += len(chunk)
            await stream.send_eof()
    except P2PFedError:
        pass  # the victim closed the connection: what the protection does


async def attack(streams_wanted: int, each: int) -> tuple[list[int], str]:
    """Run the flood; returns the bytes each victim handler could read, and the attacker's ID."""
    read: list[int] = []
    release, drained = trio.Event(), trio.Event()

    async def sink(stream: Stream) -> None:
        await release.wait()  # nothing is read while the flood runs
        got = 0
        try:
            while data := await stream.receive_some(1 << 20):
                got += len(data)
        except P2PFedError:
            pass
        read.append(got)
        if len(read) == streams_wanted:
            drained.set()

    with trio.fail_after(120):
        async with libp2p_group(2, "yamux-window") as g:
            victim, attacker = g.transports
            victim.serve(SINK, sink)
            peer = victim.local_peer
            streams = [await attacker.open_stream(peer, SINK) for _ in range(streams_wanted)]
            await flood(streams, each)
            release.set()
            await drained.wait()  # the handlers have read what the victim kept
    return read, attacker.local_peer


async def test_a_stream_flooded_past_its_window_is_cut_at_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pfed.transport.libp2p_yamux")
    read, attacker = await attack(1, 64 * MiB)
    assert sum(read) <= libp2p_yamux.STREAM_LIMIT < 64 * MiB
    named = [r.getMessage() for r in caplog.records if "ignores flow control" in r.getMessage()]
    assert len(named) == 1 and attacker in named[0]


async def test_many_streams_together_are_cut_at_the_connection_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each stream stays within the window it was granted; together they cross the bound."""
    caplog.set_level(logging.WARNING, logger="p2pfed.transport.libp2p_yamux")
    monkeypatch.setattr(libp2p_yamux, "CONNECTION_LIMIT", 1 * MiB)  # a short flood
    chunk = 256 * 1024 - 12  # one write per stream, within its initial 256 KiB window
    read, attacker = await attack(6, chunk)
    assert sum(read) <= 1 * MiB < 6 * chunk
    named = [r.getMessage() for r in caplog.records if "ignores flow control" in r.getMessage()]
    assert len(named) == 1 and attacker in named[0]


class _Stream:
    def __init__(self, recv_window: int) -> None:
        self.recv_window = recv_window


class _Conn:
    peer_id = "member-b"

    def __init__(self, recv_window: int) -> None:
        self.streams = {1: _Stream(recv_window)}
        self.cut: list[str] = []

    def window_exceeded(self, sentence: str) -> None:
        self.cut.append(sentence)


def test_an_honest_sender_within_its_granted_window_is_never_cut() -> None:
    """py-libp2p's window tuning can grant more than ``MAX_WINDOW_SIZE`` past what is unread
    (seen at 10 M parameters: 16.9 MB unread, one more frame granted): the bound is the grant."""
    conn = _Conn(recv_window=libp2p_yamux.STREAM_LIMIT)
    buffers = libp2p_yamux._Buffers(conn)  # type: ignore[arg-type]
    buffers[1] = bytearray()
    buffers.connection_limit = 1 << 40
    buffers[1].extend(bytes(libp2p_yamux.STREAM_LIMIT))  # unread, all of it granted before
    conn.streams[1].recv_window = 300 * 1024
    buffers[1].extend(bytes(256 * 1024))  # within what is still granted
    assert conn.cut == []
    with pytest.raises(P2PFedError):
        buffers[1].extend(bytes(301 * 1024))  # beyond it: cut, and the member named
    assert len(conn.cut) == 1 and "member-b" in conn.cut[0]


async def test_a_writer_waits_out_a_receiver_that_reads_late() -> None:
    """A closed window is backpressure: the writer waits past py-libp2p's 5 s, nothing fails.

    (A ring peer still training has its read-ahead full; its predecessor must wait for it.)
    """
    held_s = 6.0  # past py-libp2p's own 5 s reset of a writer facing a closed window
    payload = bytes(range(256)) * (4 * MiB // 256)  # 16 initial windows: the writer blocks
    got = bytearray()
    done = trio.Event()

    async def late_sink(stream: Stream) -> None:
        await trio.sleep(held_s)  # the condition under test: a receiver that is not reading
        while data := await stream.receive_some(1 << 20):
            got.extend(data)
        done.set()

    with trio.fail_after(120):
        async with libp2p_group(2, "yamux-patient") as g:
            receiver, writer = g.transports
            receiver.serve(SINK, late_sink)
            stream = await writer.open_stream(receiver.local_peer, SINK)
            started = trio.current_time()
            await stream.send_all(payload)
            await stream.send_eof()
            await done.wait()
    assert trio.current_time() - started >= held_s
    assert bytes(got) == payload
