import hashlib
import itertools

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pfed.errors import BrokenError, ReasonCode, RemoteProtocolError
from p2pfed.transport import MemoryNetwork, Stream
from p2pfed.transport.striping import HEADER, StripedReceiver, send_striped, slices


@given(st.integers(0, 10**9), st.integers(1, 64))
def test_slices_are_contiguous_and_cover_the_payload(total: int, lanes: int) -> None:
    parts = slices(total, lanes)
    assert len(parts) == lanes
    assert parts[0][0] == 0
    for (offset, length), (next_offset, _) in itertools.pairwise(parts):
        assert offset + length == next_offset
    assert sum(length for _, length in parts) == total
    assert max(length for _, length in parts) - min(length for _, length in parts) <= 1


def test_slices_rejects_no_lanes() -> None:
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        slices(10, 0)


@pytest.mark.parametrize("lanes", [1, 3, 8])
async def test_striped_payload_reassembles_in_one_buffer(lanes: int) -> None:
    payload = hashlib.sha256(b"x").digest() * 40_001  # not a multiple of the lane count
    buffer = bytearray(len(payload))
    receiver = StripedReceiver(memoryview(buffer))
    completions: list[bool] = []

    async def on_lane(stream: Stream) -> None:
        completions.append(await receiver.receive_lane(stream))

    net = MemoryNetwork()
    with trio.fail_after(10):
        async with net.open("a") as a, net.open("b") as b:
            b.serve("/bulk", on_lane)
            streams = [await a.open_stream("b", "/bulk") for _ in range(lanes)]
            await send_striped(streams, payload)
            await receiver.wait_complete()
    assert bytes(buffer) == payload
    assert sorted(completions) == [False] * (lanes - 1) + [True]


async def _feed(header: bytes, body: bytes, buffer_size: int) -> StripedReceiver:
    receiver = StripedReceiver(memoryview(bytearray(buffer_size)))
    net = MemoryNetwork()
    errors: list[Exception] = []

    async def on_lane(stream: Stream) -> None:
        try:
            await receiver.receive_lane(stream)
        except (RemoteProtocolError, BrokenError) as exc:
            errors.append(exc)

    async with net.open("a") as a, net.open("b") as b:
        b.serve("/bulk", on_lane)
        stream = await a.open_stream("b", "/bulk")
        await stream.send_all(header + body)
        await stream.send_eof()
        with trio.fail_after(5):
            while not errors and not receiver.complete:
                await trio.sleep(0.001)
    if errors:
        raise errors[0]
    return receiver


async def test_slice_past_the_buffer_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        await _feed(HEADER.pack(10, 8, 4), b"abcd", 10)
    assert info.value.reason is ReasonCode.MALFORMED
    assert info.value.peer == "a"


async def test_wrong_total_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError, match="announces 11 bytes, expected 10"):
        await _feed(HEADER.pack(11, 0, 10), b"x" * 10, 10)


async def test_lane_ending_early_is_broken() -> None:
    with pytest.raises(BrokenError, match="ended after 3 of 10 bytes"):
        await _feed(HEADER.pack(10, 0, 10), b"abc", 10)


async def test_overlapping_slices_are_malformed() -> None:
    buffer = bytearray(10)
    receiver = StripedReceiver(memoryview(buffer))
    net = MemoryNetwork()
    outcomes: list[object] = []

    async def on_lane(stream: Stream) -> None:
        try:
            outcomes.append(await receiver.receive_lane(stream))
        except RemoteProtocolError as exc:
            outcomes.append(exc)

    with trio.fail_after(5):
        async with net.open("a") as a, net.open("b") as b:
            b.serve("/bulk", on_lane)
            first = await a.open_stream("b", "/bulk")
            await first.send_all(HEADER.pack(10, 0, 6) + b"x" * 6)
            while not outcomes:
                await trio.sleep(0.001)
            second = await a.open_stream("b", "/bulk")
            await second.send_all(HEADER.pack(10, 5, 5) + b"y" * 5)
            while len(outcomes) < 2:
                await trio.sleep(0.001)
    assert outcomes[0] is False
    assert isinstance(outcomes[1], RemoteProtocolError)
    assert bytes(buffer) == b"x" * 6 + bytes(4)  # nothing of the rejected slice was written
