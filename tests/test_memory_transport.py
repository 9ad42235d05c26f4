import pytest
import trio

from p2pfed.errors import BrokenError, ClosedError, ReasonCode, RemoteProtocolError
from p2pfed.transport import MemoryNetwork, Stream


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def test_round_trip_and_eof() -> None:
    net = MemoryNetwork()
    async with net.open("a") as a, net.open("b") as b:
        b.serve("/echo", echo)
        stream = await a.open_stream("b", "/echo")
        assert stream.remote_peer == "b"
        payload = bytes(range(256)) * 1000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            got = await stream.receive_exactly(len(payload))
        assert got == payload
        await stream.send_eof()
        assert await stream.receive_some() == b""
        with pytest.raises(ClosedError):
            await stream.send_all(b"x")
        await stream.aclose()


async def test_gate_refuses_unknown_peer_both_ways() -> None:
    net = MemoryNetwork()
    async with net.open("a", gate=lambda p: p == "b") as a, net.open("b") as b, net.open("c") as c:
        b.serve("/echo", echo)
        a.serve("/echo", echo)
        with pytest.raises(RemoteProtocolError) as info:
            await a.open_stream("c", "/echo")
        assert info.value.reason is ReasonCode.UNKNOWN_PEER
        with pytest.raises(RemoteProtocolError):
            await c.open_stream("a", "/echo")


async def test_crash_breaks_streams_and_reachability() -> None:
    net = MemoryNetwork()
    async with net.open("a") as a, net.open("b") as b:
        b.serve("/echo", echo)
        stream = await a.open_stream("b", "/echo")
        net.crash("b")
        with pytest.raises(BrokenError):
            await stream.receive_some()
        with pytest.raises(BrokenError):
            await a.open_stream("b", "/echo")


async def test_cut_link() -> None:
    net = MemoryNetwork()
    async with net.open("a") as a, net.open("b") as b:
        b.serve("/echo", echo)
        stream = await a.open_stream("b", "/echo")
        net.cut("a", "b")
        with pytest.raises(BrokenError):
            await stream.send_all(b"x")
        with pytest.raises(BrokenError):
            await a.open_stream("b", "/echo")


async def test_errors_inside_the_block_propagate() -> None:
    # Regression: cleanup used to replace the block's exception with a swallowed Cancelled.
    net = MemoryNetwork()
    with pytest.raises(AssertionError, match="boom"):
        async with net.open("a") as a, net.open("b") as b:
            b.serve("/echo", echo)
            await a.open_stream("b", "/echo")
            raise AssertionError("boom")


async def test_closing_a_transport_leaves_the_block_running() -> None:
    net = MemoryNetwork()
    async with net.open("a") as a, net.open("b") as b:
        b.serve("/echo", echo)
        await a.open_stream("b", "/echo")
        await b.aclose()
        await trio.sleep(0)  # still running: only b's handlers were cancelled
        with pytest.raises(BrokenError):
            await a.open_stream("b", "/echo")


async def test_a_peer_that_closes_while_we_dial_is_unreachable_not_a_crash() -> None:
    """The dialer looks the target up, yields once, then opens: the target may close between."""
    net = MemoryNetwork()

    async def handler(stream: Stream) -> None:
        await stream.aclose()

    async with net.open("b") as b:
        async with net.open("a") as a:
            a.serve("p", handler)
            target = net._lookup("b", "a")
        with pytest.raises(BrokenError, match="unreachable"):
            target._accept("b", "p", b)  # its nursery is gone: no handler can start
