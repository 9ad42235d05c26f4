import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import DataError, ReasonCode, RemoteProtocolError
from p2pfed.secagg.messages import (
    MAX_MESSAGE_BYTES,
    SEALED_SHARES_BYTES,
    AdvertiseKeys,
    InputCommit,
    Reveal,
    RevealedShare,
    ShareKeys,
    ShareKind,
    ShareReceipt,
    decode,
    encode,
)

consortia = st.text(min_size=1, max_size=20)
rounds = st.integers(0, 2**63 - 1)
peer_ids = st.text(min_size=1, max_size=30)
peer_lists = st.lists(peer_ids, max_size=8, unique=True).map(tuple)


def fixed(n):
    return st.binary(min_size=n, max_size=n)


messages = st.one_of(
    st.builds(AdvertiseKeys, consortia, rounds, fixed(32), fixed(32), fixed(32), fixed(64)),
    st.builds(ShareKeys, consortia, rounds, fixed(SEALED_SHARES_BYTES)),
    st.builds(ShareReceipt, consortia, rounds, peer_lists),
    st.builds(InputCommit, consortia, rounds, peer_lists),
    st.builds(
        Reveal,
        consortia,
        rounds,
        fixed(32),
        st.lists(
            st.builds(RevealedShare, peer_ids, st.sampled_from(ShareKind), fixed(33), fixed(64)),
            max_size=5,
            unique_by=lambda s: s.dealer,
        ).map(tuple),
    ),
)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_round_trip(message):
    data = encode(message)
    assert decode(data) == message


@settings(max_examples=60, deadline=None)
@given(messages)
def test_every_truncation_and_extension_is_refused(message):
    data = encode(message)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError) as info:
            decode(data[:cut])
        assert info.value.reason in (ReasonCode.MALFORMED, ReasonCode.OVERSIZED)
    with pytest.raises(RemoteProtocolError) as info:
        decode(data + b"\x00")
    assert info.value.reason is ReasonCode.MALFORMED


def test_header_errors_have_their_reason_codes():
    data = bytearray(encode(ShareReceipt("c", 1, ("a",))))
    bad_version = bytes(data[:2]) + b"\x09" + bytes(data[3:])
    with pytest.raises(RemoteProtocolError) as info:
        decode(bad_version)
    assert info.value.reason is ReasonCode.UNKNOWN_VERSION
    bad_kind = bytes(data[:3]) + b"\x63" + bytes(data[4:])
    with pytest.raises(RemoteProtocolError) as info:
        decode(bad_kind)
    assert info.value.reason is ReasonCode.UNKNOWN_TYPE
    with pytest.raises(RemoteProtocolError) as info:
        decode(b"XX" + bytes(data[2:]))
    assert info.value.reason is ReasonCode.MALFORMED
    with pytest.raises(RemoteProtocolError) as info:
        decode(bytes(MAX_MESSAGE_BYTES + 1))
    assert info.value.reason is ReasonCode.OVERSIZED
    not_utf8 = bytes(data[:5]) + b"\xff" + bytes(data[6:])
    with pytest.raises(RemoteProtocolError) as info:
        decode(not_utf8)
    assert info.value.reason is ReasonCode.MALFORMED


def test_bad_share_kind_on_the_wire_is_malformed():
    share = RevealedShare("d", ShareKind.SELF_SEED, bytes(33), bytes(64))
    data = bytearray(encode(Reveal("c", 1, bytes(32), (share,))))
    kind_at = data.index(b"\x01d") + 2  # dealer "d" length-prefixed, then the kind byte
    data[kind_at] = 7
    with pytest.raises(RemoteProtocolError) as info:
        decode(bytes(data))
    assert info.value.reason is ReasonCode.MALFORMED


def test_limits_are_checked_on_construction():
    with pytest.raises(DataError, match="channel_public"):
        AdvertiseKeys("c", 1, bytes(31), bytes(32), bytes(32), bytes(64))
    with pytest.raises(DataError, match="consortium"):
        ShareReceipt("", 1, ())
    with pytest.raises(DataError, match="consortium"):
        ShareReceipt("x" * 200, 1, ())
    with pytest.raises(DataError, match="round"):
        ShareReceipt("c", -1, ())
    with pytest.raises(DataError, match="twice"):
        InputCommit("c", 1, ("a", "a"))
    with pytest.raises(DataError, match="more than"):
        InputCommit("c", 1, tuple(f"p{i}" for i in range(5000)))
    with pytest.raises(DataError, match="peer ID"):
        InputCommit("c", 1, ("x" * 200,))
    with pytest.raises(DataError, match="version"):
        ShareKeys("c", 1, bytes(SEALED_SHARES_BYTES), version=2)
    share = RevealedShare("d", ShareKind.SELF_SEED, bytes(33), bytes(64))
    with pytest.raises(DataError, match="two shares"):
        Reveal("c", 1, bytes(32), (share, share))
