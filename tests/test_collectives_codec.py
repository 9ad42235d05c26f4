from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.collectives.codec import Decoder, encode
from p2pfed.collectives.messages import (
    Abort,
    Cohort,
    Commit,
    Contributors,
    Done,
    GossipValue,
    Message,
    ModelBase,
    Ready,
    RingChunk,
    SecAggData,
    WordType,
)
from p2pfed.errors import LocalProtocolError, ReasonCode, RemoteProtocolError

peer = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=40)
rounds = st.integers(0, 2**63 - 1)
words = st.sampled_from(list(WordType))
bases = st.builds(ModelBase, st.integers(-1, 2**63 - 1), st.binary(min_size=32, max_size=32))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(
        st.sampled_from(
            [
                "ring",
                "ready",
                "cohort",
                "abort",
                "gossip",
                "done",
                "commit",
                "secagg",
                "contributors",
            ]
        )
    )
    rnd = draw(rounds)
    if kind == "contributors":
        return Contributors(rnd, tuple(draw(st.lists(peer, min_size=1, max_size=6, unique=True))))
    if kind == "secagg":
        return SecAggData(rnd, draw(st.binary(min_size=1, max_size=40)))
    if kind == "done":
        return Done(rnd, draw(st.integers(0, 255)))
    if kind == "commit":
        return Commit(rnd, draw(st.integers(0, 255)))
    if kind == "ring":
        word = draw(words)
        n = draw(st.integers(0, 20))
        data = draw(st.binary(min_size=n * word.dtype.itemsize, max_size=n * word.dtype.itemsize))
        return RingChunk(
            rnd,
            draw(st.integers(0, 255)),
            draw(st.integers(0, 2047)),
            draw(st.integers(0, 2**31 - 1)),
            word,
            data,
        )
    if kind == "ready":
        accused = draw(
            st.lists(st.tuples(peer, st.sampled_from(["timeout", "dropped"])), max_size=3)
        )
        return Ready(
            rnd,
            draw(st.integers(0, 255)),
            draw(st.integers(0, 1023)),
            tuple(accused),
            draw(st.integers(0, 2**63 - 1)),
            draw(bases),
        )
    if kind == "cohort":
        members = tuple(draw(st.lists(peer, min_size=1, max_size=8, unique=True)))
        return Cohort(
            rnd,
            draw(st.integers(0, 255)),
            draw(st.integers(0, 1023)),
            draw(peer),
            members,
            draw(st.binary(max_size=64)),
            draw(st.integers(0, 2**63 - 1)),
            draw(bases),
        )
    if kind == "abort":
        return Abort(rnd, draw(st.integers(0, 255)), draw(peer), "wrong-shape")
    word = draw(words)
    data = draw(st.binary(max_size=8 * word.dtype.itemsize))
    data = data[: len(data) - len(data) % word.dtype.itemsize]
    count = len(data) // word.dtype.itemsize
    offset = draw(st.integers(0, 100))
    return GossipValue(rnd, offset, offset + count + draw(st.integers(0, 5)), word, data)


@settings(max_examples=150, deadline=None)
@given(msgs=st.lists(messages(), min_size=1, max_size=4), split=st.integers(1, 7))
def test_messages_round_trip_fed_in_any_pieces(msgs: list[Message], split: int) -> None:
    wire = b""
    payloads = 0
    for seq, m in enumerate(msgs):
        frame, payload = encode(m, "consortium-x", "peer-a", seq)
        wire += frame
        payloads += payload
    decoder = Decoder("peer-a")
    out = []
    for at in range(0, len(wire), split):
        decoder.feed(wire[at : at + split])
        while (env := decoder.next()) is not None:
            out.append(env)
    assert [e.message for e in out] == msgs
    assert [e.seq for e in out] == list(range(len(msgs)))
    assert all(e.sender == "peer-a" and e.consortium == "consortium-x" for e in out)
    assert sum(e.payload_bytes for e in out) == payloads
    assert sum(e.frame_bytes for e in out) == len(wire)


def test_garbage_and_unknown_kinds_name_the_peer() -> None:
    decoder = Decoder("peer-b")
    decoder.feed(b"NOPE" + bytes(40))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next()
    assert info.value.peer == "peer-b" and info.value.reason is ReasonCode.MALFORMED
    frame, _ = encode(Abort(1, 0, "x", "timeout"), "c", "peer-b", 0)
    bad = bytearray(frame)
    bad[-len(b"\x01x\x07timeout") - 2] = 99  # the kind byte
    decoder = Decoder("peer-b")
    decoder.feed(bytes(bad))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next()
    assert info.value.reason is ReasonCode.UNKNOWN_TYPE


def test_messages_check_their_limits_on_construction() -> None:
    with pytest.raises(LocalProtocolError, match="whole number"):
        RingChunk(0, 0, 0, 0, WordType.FLOAT32, b"abc")
    with pytest.raises(LocalProtocolError, match="twice"):
        Cohort(0, 0, 0, "c", ("a", "a"))
    with pytest.raises(LocalProtocolError, match="round"):
        Ready(-1, 0, 0)
    with pytest.raises(LocalProtocolError, match="does not fit"):
        GossipValue(0, 5, 6, WordType.UINT32, bytes(8))
    with pytest.raises(LocalProtocolError, match="base model round"):
        ModelBase(-2, bytes(32))
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        ModelBase(0, bytes(31))


@settings(max_examples=100, deadline=None)
@given(base=bases, other=bases)
def test_the_cohort_signature_covers_the_base(base: ModelBase, other: ModelBase) -> None:
    """A cohort moved onto another base no longer matches what its coordinator signed."""
    cohort = Cohort(3, 0, 0, "c", ("a", "b"), b"", 2, base)
    moved = Cohort(3, 0, 0, "c", ("a", "b"), b"", 2, other)
    assert (cohort.signed_bytes("x") == moved.signed_bytes("x")) == (base == other)


def test_a_base_round_below_minus_one_on_the_wire_is_malformed() -> None:
    frame, _ = encode(Ready(1, 0, 0, (), 0, ModelBase(-1, bytes(32))), "c", "peer-b", 0)
    at = frame.rindex(struct.pack("<q", -1) + bytes(32))
    bad = frame[:at] + struct.pack("<q", -5) + frame[at + 8 :]
    decoder = Decoder("peer-b")
    decoder.feed(bad)
    with pytest.raises(RemoteProtocolError, match="base model round") as info:
        decoder.next()
    assert info.value.reason is ReasonCode.MALFORMED and info.value.peer == "peer-b"


def test_a_hostile_list_count_or_a_cut_body_is_refused_naming_the_sender() -> None:
    """A Contributors frame claiming 65535 peers is refused from its count alone; one cut
    short of its last member is MALFORMED. Both name the sender."""
    frame, _ = encode(Contributors(3, ("x", "y")), "c", "peer-b", 0)
    body_at = len(frame) - len(b"\x09\x02\x00\x01x\x01y")
    inflated = bytearray(frame)
    inflated[body_at + 1 : body_at + 3] = (0xFFFF).to_bytes(2, "little")
    decoder = Decoder("peer-b")
    decoder.feed(bytes(inflated))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next()
    assert info.value.reason is ReasonCode.OVERSIZED and info.value.peer == "peer-b"
    assert "65535 contributors" in str(info.value)
    frame, _ = encode(Contributors(3, ("x", "yy")), "c", "peer-b", 0)
    cut = bytearray(frame)
    cut[body_at + 5] = 9  # the last member claims 9 bytes; 2 follow
    decoder = Decoder("peer-b")
    decoder.feed(bytes(cut))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next()
    assert info.value.reason is ReasonCode.MALFORMED and info.value.peer == "peer-b"
    assert "is truncated" in str(info.value)
