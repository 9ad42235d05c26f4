import hashlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfed.errors import (
    BrokenError,
    DataError,
    LocalProtocolError,
    ReasonCode,
    RemoteProtocolError,
)
from p2pfed.transport import Handler, MemoryNetwork, Stream
from p2pfed.wire import (
    DEFAULT_LIMITS,
    DTYPE_CODES,
    HEADER_SIZE,
    MAGIC,
    ChunkedTensorHeader,
    Frame,
    FrameDecoder,
    FrameType,
    Limits,
    ReadTimeout,
    RejectedByPeer,
    StreamEnded,
    TensorHeader,
    decode_ack,
    decode_reject,
    decode_tensor,
    encode_ack,
    encode_frame,
    encode_reject,
    encode_tensor,
    read_frame,
    receive_tensor,
    send_tensor,
    write_frame,
)
from p2pfed.wire.tensor import tensor_bytes

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Printable text without a rejection filter: str.isprintable() is False exactly for the
# "Other" and separator categories, except the ASCII space.
printable = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
    )
    | st.just(" "),
    max_size=12,
)

frames = st.builds(
    Frame,
    type=st.sampled_from(FrameType),
    consortium=printable,
    round=st.integers(0, 2**64 - 1),
    sender=printable,
    seq=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=200),
)


def decode_all(pieces: list[bytes], limits: Limits = DEFAULT_LIMITS) -> tuple[list[Frame], object]:
    """Frames decoded from ``pieces`` fed in order, and the error reason (or None / 'partial')."""
    decoder = FrameDecoder(limits)
    out: list[Frame] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            assert decoder.buffered <= sum(len(p) for p in pieces)
            while (frame := decoder.next_frame()) is not None:
                out.append(frame)
        decoder.close()
    except RemoteProtocolError as exc:
        assert isinstance(exc.reason, ReasonCode)
        assert str(exc)
        return out, exc.reason
    return out, None


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- frames -------------------------------------------------------------------------------


@FAST
@given(frame=frames)
def test_frame_round_trip(frame: Frame) -> None:
    data = encode_frame(frame)
    assert len(data) == frame.encoded_size
    assert decode_all([data]) == ([frame], None)


@FAST
@given(batch=st.lists(frames, max_size=5), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_any_split_and_byte_at_a_time_give_the_same_frames(
    batch: list[Frame], cuts: list[int]
) -> None:
    data = b"".join(encode_frame(f) for f in batch)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decode_all(pieces) == (batch, None)
    assert decode_all(one_byte_at_a_time(data)) == (batch, None)


def mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


garbage = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: MAGIC + b),
    st.binary(max_size=300).map(lambda b: MAGIC + b"\x01" + b),
    st.builds(
        lambda fs, edits, cut: mutated(b"".join(encode_frame(f) for f in fs), edits)[:cut],
        st.lists(frames, min_size=1, max_size=3),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
        st.integers(0, 2000),
    ),
)

SMALL = Limits(max_frame_bytes=160, max_payload=100, max_consortium_len=16, max_sender_len=16)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage, small=st.booleans())
def test_decoder_fuzz_any_bytes_give_frames_or_a_typed_error(data: bytes, small: bool) -> None:
    limits = SMALL if small else DEFAULT_LIMITS
    whole = decode_all([data], limits)
    assert decode_all(one_byte_at_a_time(data), limits) == whole
    frames_out, reason = whole
    for frame in frames_out:
        assert frame.encoded_size <= limits.max_frame_bytes
        assert len(frame.payload) <= limits.max_payload
        # Whatever decodes re-encodes to the same bytes: nothing is silently repaired.
        assert data.startswith(b"".join(encode_frame(f) for f in frames_out))
    if reason is None:
        assert sum(f.encoded_size for f in frames_out) == len(data)


def header(
    version: int = 1,
    ftype: int = 1,
    c_len: int = 0,
    s_len: int = 0,
    p_len: int = 0,
) -> bytes:
    return struct.pack(">4sBBBBQQI", MAGIC, version, ftype, c_len, s_len, 0, 0, p_len)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\n", ReasonCode.MALFORMED),
        (header(version=2), ReasonCode.UNKNOWN_VERSION),
        (header(ftype=0), ReasonCode.UNKNOWN_TYPE),
        (header(ftype=200), ReasonCode.UNKNOWN_TYPE),
        (header(c_len=65), ReasonCode.OVERSIZED),
        (header(s_len=129), ReasonCode.OVERSIZED),
        (header(p_len=2**32 - 1), ReasonCode.OVERSIZED),
        (header(c_len=2) + b"\xff\xfe", ReasonCode.MALFORMED),
        (header(s_len=1) + b"\n", ReasonCode.MALFORMED),
    ],
)
def test_bad_headers_give_reason_codes(data: bytes, reason: ReasonCode) -> None:
    assert decode_all([data]) == ([], reason)
    assert decode_all(one_byte_at_a_time(data)) == ([], reason)


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(DEFAULT_LIMITS)
    decoder.feed(header(p_len=DEFAULT_LIMITS.max_payload + 1))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.reason is ReasonCode.OVERSIZED
    assert decoder.buffered == HEADER_SIZE  # nothing was allocated for the declared body
    # A failed decoder stays failed.
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"x")


def test_unknown_version_is_refused_at_its_byte() -> None:
    decoder = FrameDecoder()
    decoder.feed(MAGIC + b"\x09")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.reason is ReasonCode.UNKNOWN_VERSION


def test_truncated_stream_is_an_error_at_close() -> None:
    data = encode_frame(Frame(FrameType.BYE, "c", 0, "s", 0))
    assert decode_all([data[:-1]]) == ([], ReasonCode.MALFORMED)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": 3},
        {"consortium": "x" * 256},
        {"sender": "tab\there"},
        {"round": -1},
        {"seq": 2**64},
        {"round": True},
        {"payload": bytearray(b"x")},
    ],
)
def test_invalid_frames_cannot_be_built(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "type": FrameType.CONTROL,
        "consortium": "c",
        "round": 0,
        "sender": "s",
        "seq": 0,
        "payload": b"",
    }
    base.update(kwargs)
    with pytest.raises(LocalProtocolError):
        Frame(**base)  # type: ignore[arg-type]


def test_frame_other_version_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Frame(FrameType.CONTROL, "c", 0, "s", 0, version=2)


def test_encode_refuses_what_a_peer_would_refuse() -> None:
    frame = Frame(FrameType.CONTROL, "c", 0, "s", 0, b"x" * 101)
    with pytest.raises(LocalProtocolError, match="payload"):
        encode_frame(frame, SMALL)
    with pytest.raises(LocalProtocolError, match="consortium"):
        encode_frame(Frame(FrameType.CONTROL, "c" * 17, 0, "s", 0), SMALL)


def test_limits_are_validated() -> None:
    with pytest.raises(LocalProtocolError, match="max_payload"):
        Limits(max_payload=0)
    with pytest.raises(LocalProtocolError):
        Limits(max_sender_len=256)
    with pytest.raises(LocalProtocolError):
        Limits(max_frame_bytes=HEADER_SIZE)


def test_ack_and_reject_payloads() -> None:
    assert decode_ack(encode_ack(7)) == 7
    with pytest.raises(RemoteProtocolError) as info:
        decode_ack(b"\x00")
    assert info.value.reason is ReasonCode.MALFORMED
    reason, message = decode_reject(encode_reject(ReasonCode.WRONG_SHAPE, "shape (2,) != (3,)"))
    assert (reason, message) == ("wrong-shape", "shape (2,) != (3,)")


# --- tensors ------------------------------------------------------------------------------


@FAST
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(sorted(DTYPE_CODES)).flatmap(
            lambda name: st.sampled_from([np.dtype(name), np.dtype(name).newbyteorder(">")])
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_tensor_round_trip_every_dtype_and_byte_order(array: np.ndarray) -> None:
    out = decode_tensor(encode_tensor(array))
    assert out.dtype == array.dtype.newbyteorder("=")
    assert out.shape == array.shape
    assert out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_tensor_bytes_are_little_endian() -> None:
    header, raw = tensor_bytes(np.array([1, 2], dtype=">u4"))
    assert raw == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    assert header.digest == hashlib.sha256(raw).digest()


def test_tensor_errors_have_reasons() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = encode_tensor(array)

    def reason_of(data: bytes, **kwargs: object) -> ReasonCode:
        with pytest.raises(RemoteProtocolError) as info:
            decode_tensor(data, **kwargs)  # type: ignore[arg-type]
        return info.value.reason

    assert reason_of(payload[:-1] + bytes([payload[-1] ^ 1])) is ReasonCode.DIGEST_MISMATCH
    assert reason_of(payload[:-4]) is ReasonCode.MALFORMED
    assert reason_of(payload, expected_shape=(3, 2)) is ReasonCode.WRONG_SHAPE
    assert reason_of(payload, expected_dtype=np.float64) is ReasonCode.WRONG_DTYPE
    assert reason_of(b"\x02" + payload[1:]) is ReasonCode.UNKNOWN_VERSION
    assert reason_of(payload[:1] + b"\x63" + payload[2:]) is ReasonCode.MALFORMED
    assert reason_of(payload[:3]) is ReasonCode.MALFORMED
    nan = encode_tensor(np.array([1.0, np.nan], dtype=np.float32))
    assert reason_of(nan, finite=True) is ReasonCode.NON_FINITE
    assert np.isnan(decode_tensor(nan)[1])
    inf = encode_tensor(np.array([np.inf], dtype=np.float16))
    assert reason_of(inf, finite=True) is ReasonCode.NON_FINITE
    decode_tensor(encode_tensor(np.array([2**63], dtype=np.uint64)), finite=True)
    huge = TensorHeader("float64", (2**20, 2**20), bytes(32)).encode()
    assert reason_of(huge) is ReasonCode.OVERSIZED
    empty_but_absurd = TensorHeader("uint8", (0, 2**62), bytes(32)).encode()
    assert reason_of(empty_but_absurd) is ReasonCode.OVERSIZED
    many_dims = TensorHeader("uint8", (1,) * 9, bytes(32)).encode()
    assert reason_of(many_dims) is ReasonCode.OVERSIZED


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array(["a"]), np.array([True]), [1.0]])
def test_unsupported_arrays_are_refused_locally(bad: object) -> None:
    with pytest.raises(DataError):
        encode_tensor(bad)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_decode_tensor_fuzz(data: bytes) -> None:
    try:
        decode_tensor(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.reason, ReasonCode)


def test_chunk_plan() -> None:
    header, _ = tensor_bytes(np.zeros(10, dtype=np.uint8))
    plan = ChunkedTensorHeader(header, 4, 2)
    assert plan.n_chunks == 3
    assert [plan.chunk_size(i) for i in range(3)] == [4, 4, 2]
    assert ChunkedTensorHeader.decode(plan.encode()) == plan
    with pytest.raises(RemoteProtocolError) as info:
        ChunkedTensorHeader.decode(ChunkedTensorHeader(header, 4, 1000).encode())
    assert info.value.reason is ReasonCode.MALFORMED
    with pytest.raises(RemoteProtocolError) as info:
        ChunkedTensorHeader.decode(ChunkedTensorHeader(header, 2**31, 1).encode())
    assert info.value.reason is ReasonCode.OVERSIZED


# --- async drivers over the memory transport ----------------------------------------------

Client = Callable[[Stream], Awaitable[object]]


async def talk(handler: Handler, client: Client) -> tuple[object, list[BaseException]]:
    """Run ``client`` on a stream from a to b (served by ``handler``).

    Returns what the client returned and the exceptions the handler raised. Exceptions are
    carried out of the memory network's block by hand: its close path checkpoints inside a
    cancelled scope, which would otherwise swallow an exception raised in the block.
    """
    net = MemoryNetwork()
    handler_errors: list[BaseException] = []
    outcome: list[object] = []
    failure: list[Exception] = []

    async def guarded(stream: Stream) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            handler_errors.append(exc)

    async with net.open("a") as a, net.open("b") as b:
        b.serve("/t", guarded)
        stream = await a.open_stream("b", "/t")
        try:
            outcome.append(await client(stream))
            await trio.testing.wait_all_tasks_blocked()
        except Exception as exc:
            failure.append(exc)
        await stream.aclose()
    if failure:
        raise failure[0]
    return outcome[0], handler_errors


async def test_write_and_read_frames_back_to_back() -> None:
    got: list[Frame] = []
    f1 = Frame(FrameType.HELLO, "c", 1, "a", 0, b"hi")
    f2 = Frame(FrameType.CONTROL, "c", 1, "a", 1, b"x" * 70_000)

    async def handler(stream: Stream) -> None:
        got.append(await read_frame(stream))
        got.append(await read_frame(stream))
        await read_frame(stream)

    async def client(stream: Stream) -> None:
        # Both frames go out in one write: read_frame must not read past the first.
        await stream.send_all(encode_frame(f1) + encode_frame(f2))
        await stream.send_eof()

    _, errors = await talk(handler, client)
    assert got == [f1, f2]
    assert len(errors) == 1 and isinstance(errors[0], StreamEnded)


async def test_read_frame_refuses_a_spoofed_sender() -> None:
    async def client(stream: Stream) -> None:
        await write_frame(stream, Frame(FrameType.HELLO, "c", 1, "mallory", 0))

    _, errors = await talk(read_frame, client)
    assert isinstance(errors[0], RemoteProtocolError)
    assert errors[0].reason is ReasonCode.PROTOCOL_VIOLATION
    assert errors[0].peer == "a"


async def test_read_frame_times_out_on_a_stalled_peer(autojump_clock: trio.abc.Clock) -> None:
    async def handler(stream: Stream) -> None:
        await read_frame(stream, timeout=5.0)

    async def client(stream: Stream) -> float:
        await stream.send_all(encode_frame(Frame(FrameType.HELLO, "c", 1, "a", 0, b"x"))[:10])
        start = trio.current_time()
        await trio.sleep(60)
        return start

    _, errors = await talk(handler, client)
    assert isinstance(errors[0], ReadTimeout)
    assert "5 s" in str(errors[0])


async def test_read_frame_reports_bad_frames_with_the_peer() -> None:
    async def client(stream: Stream) -> None:
        await stream.send_all(header(p_len=2**31))

    _, errors = await talk(read_frame, client)
    assert isinstance(errors[0], RemoteProtocolError)
    assert errors[0].reason is ReasonCode.OVERSIZED
    assert errors[0].peer == "a"


async def test_end_inside_a_frame_is_broken() -> None:
    async def client(stream: Stream) -> None:
        await stream.send_all(encode_frame(Frame(FrameType.HELLO, "c", 1, "a", 0, b"xyz"))[:-1])
        await stream.send_eof()

    _, errors = await talk(read_frame, client)
    assert type(errors[0]) is BrokenError


async def exchange(
    array: np.ndarray, receive_kwargs: dict[str, Any], **send_kwargs: Any
) -> tuple[object, object]:
    """Send ``array`` from a to b; returns (what the sender got, what the receiver got)."""
    received: list[object] = []

    async def handler(stream: Stream) -> None:
        received.append(await receive_tensor(stream, local_peer="b", **receive_kwargs))

    async def client(stream: Stream) -> object:
        try:
            return await send_tensor(
                stream, array, consortium="c", round=3, sender="a", **send_kwargs
            )
        except (RemoteProtocolError, BrokenError) as exc:
            return exc

    sent, errors = await talk(handler, client)
    return sent, (received + errors)[0]


async def test_tensor_transfer_intact_in_many_chunks() -> None:
    array = np.random.default_rng(0).standard_normal((512, 1000)).astype(np.float32)
    sent, received = await exchange(
        array,
        {"consortium": "c", "round": 3, "expected_shape": (512, 1000), "finite": True},
        chunk_bytes=100_000,
        window=2,
        seq=10,
    )
    assert sent == 10 + 1 + 21
    assert isinstance(received, np.ndarray)
    np.testing.assert_array_equal(received, array)


async def test_empty_tensor_transfer() -> None:
    sent, received = await exchange(np.zeros((0, 4), np.int64), {})
    assert sent == 1
    assert isinstance(received, np.ndarray) and received.shape == (0, 4)


@pytest.mark.parametrize(
    ("receive_kwargs", "reason"),
    [
        ({"expected_shape": (7,)}, ReasonCode.WRONG_SHAPE),
        ({"expected_dtype": np.float64}, ReasonCode.WRONG_DTYPE),
        ({"round": 4}, ReasonCode.WRONG_ROUND),
        ({"consortium": "other"}, ReasonCode.WRONG_CONSORTIUM),
        ({"finite": True}, ReasonCode.NON_FINITE),
        ({"limits": Limits(max_tensor_bytes=100)}, ReasonCode.OVERSIZED),
    ],
)
async def test_tensor_refusals_reach_both_sides(
    receive_kwargs: dict[str, Any], reason: ReasonCode
) -> None:
    array = np.full(3000, np.inf, dtype=np.float32)
    sent, received = await exchange(array, receive_kwargs, chunk_bytes=1000, window=1)
    assert isinstance(received, RemoteProtocolError)
    assert received.reason is reason
    assert received.peer == "a"
    assert isinstance(sent, RejectedByPeer)
    assert sent.reason == reason.value


async def test_tampered_chunk_is_a_digest_mismatch() -> None:
    async def handler(stream: Stream) -> None:
        await receive_tensor(stream, local_peer="b")

    async def client(stream: Stream) -> list[Frame]:
        header_, _ = tensor_bytes(np.arange(8, dtype=np.uint8))
        plan = ChunkedTensorHeader(header_, 4, 1)
        await write_frame(stream, Frame(FrameType.TENSOR_HEADER, "c", 0, "a", 0, plan.encode()))
        for i, chunk in enumerate([b"\x00\x01\x02\x03", b"\x04\x05\x06\x08"]):
            await write_frame(stream, Frame(FrameType.TENSOR_CHUNK, "c", 0, "a", 1 + i, chunk))
        return [await read_frame(stream), await read_frame(stream)]

    replies, errors = await talk(handler, client)
    assert isinstance(replies, list)
    ack, reject = replies
    # The first chunk is acknowledged; the last ACK is withheld until verification.
    assert ack.type is FrameType.ACK and decode_ack(ack.payload) == 1
    assert reject.type is FrameType.REJECT
    assert decode_reject(reject.payload)[0] == "digest-mismatch"
    assert isinstance(errors[0], RemoteProtocolError)
    assert errors[0].reason is ReasonCode.DIGEST_MISMATCH


async def test_out_of_order_chunk_is_refused() -> None:
    async def handler(stream: Stream) -> None:
        await receive_tensor(stream, local_peer="b")

    async def client(stream: Stream) -> None:
        header_, raw = tensor_bytes(np.arange(8, dtype=np.uint8))
        plan = ChunkedTensorHeader(header_, 4, 4)
        await write_frame(stream, Frame(FrameType.TENSOR_HEADER, "c", 0, "a", 0, plan.encode()))
        await write_frame(stream, Frame(FrameType.TENSOR_CHUNK, "c", 0, "a", 2, raw[4:]))

    _, errors = await talk(handler, client)
    assert isinstance(errors[0], RemoteProtocolError)
    assert errors[0].reason is ReasonCode.OUT_OF_ORDER


async def test_sender_waits_for_acks_and_never_runs_ahead(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A receiver that reads but never ACKs gets at most 2*window chunks, then a timeout."""
    chunks_seen = 0

    async def silent_reader(stream: Stream) -> None:
        nonlocal chunks_seen
        await read_frame(stream)
        while True:
            frame = await read_frame(stream, timeout=1000)
            assert frame.type is FrameType.TENSOR_CHUNK
            chunks_seen += 1

    async def client(stream: Stream) -> BaseException | None:
        try:
            await send_tensor(
                stream,
                np.zeros(100, np.uint8),
                consortium="c",
                round=0,
                sender="a",
                chunk_bytes=10,
                window=2,
                timeout=7.0,
            )
        except ReadTimeout as exc:
            return exc
        return None

    outcome, _ = await talk(silent_reader, client)
    assert isinstance(outcome, ReadTimeout)
    assert chunks_seen == 4


async def test_bogus_ack_is_a_protocol_violation() -> None:
    async def liar(stream: Stream) -> None:
        await read_frame(stream)
        await write_frame(stream, Frame(FrameType.ACK, "c", 0, "b", 0, encode_ack(99)))
        await trio.sleep_forever()

    async def client(stream: Stream) -> object:
        try:
            await send_tensor(
                stream,
                np.zeros(100, np.uint8),
                consortium="c",
                round=0,
                sender="a",
                chunk_bytes=10,
                window=1,
            )
        except RemoteProtocolError as exc:
            return exc
        return None

    outcome, _ = await talk(liar, client)
    assert isinstance(outcome, RemoteProtocolError)
    assert outcome.reason is ReasonCode.PROTOCOL_VIOLATION


async def test_send_tensor_checks_its_own_limits() -> None:
    async def client(stream: Stream) -> None:
        await send_tensor(
            stream,
            np.zeros(4),
            consortium="c",
            round=0,
            sender="a",
            chunk_bytes=DEFAULT_LIMITS.max_payload + 1,
        )

    with pytest.raises(LocalProtocolError):
        await talk(read_frame, client)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_read_frame_fuzz_over_a_stream(data: bytes, cuts: list[int]) -> None:
    """Whatever arrives, in whatever pieces, read_frame returns frames or a typed error."""
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    expected_frames, _ = decode_all([data])
    got: list[Frame] = []
    ended: list[BaseException] = []

    async def handler(stream: Stream) -> None:
        try:
            while True:
                got.append(await read_frame(stream, timeout=5, check_sender=False))
        except (RemoteProtocolError, BrokenError) as exc:
            ended.append(exc)

    async def client(stream: Stream) -> None:
        try:
            for piece in pieces:
                if piece:
                    await stream.send_all(piece)
            await stream.send_eof()
        except BrokenError:
            pass  # the reader refused the garbage and closed its end: expected

    async def main() -> None:
        await talk(handler, client)

    trio.run(main)
    assert got == expected_frames
    assert len(ended) == 1


def test_bench_wire_prints_its_cases(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from p2pfed.cli import main

    assert main(["bench", "wire", "--sizes", "1", "--repeat", "1"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["bench"] == "wire"
    (case,) = document["cases"]
    assert case["size_mb"] == 1
    for key in ("memcpy", "sha256", "encode_tensor", "decode_tensor", "frame_decoder"):
        assert case[f"{key}_mb_s"] > 0
    assert case["memory_exchange_mb_s"] > 0
    with pytest.raises(SystemExit):
        main(["bench", "wire", "--sizes", "0"])
    assert "argument --sizes: item '0' of '0' is not a positive whole number of MiB" in (
        capsys.readouterr().err
    )
