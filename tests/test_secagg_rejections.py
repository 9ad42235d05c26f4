import dataclasses

import numpy as np
import pytest

from p2pfed.errors import ReasonCode, RemoteProtocolError
from p2pfed.identity.keys import Identity
from p2pfed.secagg.harness import make_identities, run_cohort
from p2pfed.secagg.messages import (
    AdvertiseKeys,
    MessageKind,
    Reveal,
    ShareKeys,
    decode,
    encode,
)
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.protocol import SecAggPeer
from p2pfed.secagg.state import Stage

D = 32
NAMES = ["a", "b", "c", "d"]


def cohort(round_=1, consortium="c"):
    signers, ids = make_identities(NAMES)
    config = SecAggConfig(consortium, round_, D)
    return {n: SecAggPeer(config, n, signers[n], ids) for n in NAMES}


def adverts(peers):
    return {n: p.start(np.zeros(D, np.uint32))[0].message for n, p in peers.items()}


def reason_of(call) -> ReasonCode:
    with pytest.raises(RemoteProtocolError) as info:
        call()
    return info.value.reason


def test_header_and_replay_rejections():
    peers = cohort()
    ads = adverts(peers)
    a = peers["a"]
    a.receive("b", ads["b"])
    assert reason_of(lambda: a.receive("b", ads["b"])) is ReasonCode.DUPLICATE
    other_round = adverts(cohort(round_=2))
    assert reason_of(lambda: a.receive("c", other_round["c"])) is ReasonCode.WRONG_ROUND
    other_consortium = adverts(cohort(consortium="z"))
    assert reason_of(lambda: a.receive("c", other_consortium["c"])) is ReasonCode.WRONG_CONSORTIUM
    assert reason_of(lambda: a.receive("mallory", ads["c"])) is ReasonCode.UNKNOWN_PEER
    assert reason_of(lambda: a.receive("a", ads["a"])) is ReasonCode.UNKNOWN_PEER
    reveal = Reveal("c", 1, bytes(32), ())
    assert reason_of(lambda: a.receive("c", reveal)) is ReasonCode.UNEXPECTED_STAGE
    assert reason_of(lambda: a.receive_bytes("c", b"garbage")) is ReasonCode.MALFORMED
    assert a.excluded == {"c": ReasonCode.MALFORMED}
    # An excluded peer's further messages are refused, and the refusal is recorded.
    assert reason_of(lambda: a.receive("c", ads["c"])) is ReasonCode.PROTOCOL_VIOLATION
    assert {r.reason for r in a.rejections} >= {
        ReasonCode.DUPLICATE,
        ReasonCode.WRONG_ROUND,
        ReasonCode.WRONG_CONSORTIUM,
        ReasonCode.UNKNOWN_PEER,
        ReasonCode.UNEXPECTED_STAGE,
        ReasonCode.MALFORMED,
    }
    assert a.stage is Stage.ADVERTISE  # refusals changed nothing


def test_substituted_keys_fail_the_identity_signature():
    peers = cohort()
    ads = adverts(peers)
    forged = dataclasses.replace(ads["b"], mask_public=bytes([9]) * 32)
    a = peers["a"]
    assert reason_of(lambda: a.receive("b", forged)) is ReasonCode.BAD_SIGNATURE
    assert a.excluded == {"b": ReasonCode.BAD_SIGNATURE}
    # a key signed by someone else's identity is refused just the same
    mallory = Identity.from_seed(bytes([7]) * 32)
    resigned = dataclasses.replace(ads["c"], signature=mallory.sign(b"whatever"))
    assert reason_of(lambda: a.receive("c", resigned)) is ReasonCode.BAD_SIGNATURE


def test_shares_before_keys_are_out_of_order():
    peers = cohort()
    adverts(peers)
    sealed = ShareKeys("c", 1, bytes(234))
    assert reason_of(lambda: peers["a"].receive("b", sealed)) is ReasonCode.OUT_OF_ORDER


def inputs(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {f"p{i}": rng.integers(0, 2**20, D, dtype=np.uint32) for i in range(n)}


def test_a_peer_whose_shares_fail_verification_is_excluded_and_named():
    data = inputs()

    def corrupt(sender, recipient, raw):
        if sender == "p1" and recipient == "p0" and raw[3] == MessageKind.SHARE_KEYS:
            message = decode(raw)
            assert isinstance(message, ShareKeys)
            flipped = message.sealed[:-1] + bytes([message.sealed[-1] ^ 1])
            return encode(dataclasses.replace(message, sealed=flipped))
        return raw

    run = run_cohort(SecAggConfig("c", 1, D), data, tamper=corrupt, random_seed=4)
    p0 = run.peers["p0"]
    assert p0.excluded == {"p1": ReasonCode.BAD_SHARE}
    assert any(r.peer == "p1" and r.reason is ReasonCode.BAD_SHARE for r in p0.rejections)
    assert "p1" not in p0.mask_set and "p0" not in run.peers["p1"].mask_set
    expected = sum(data[p].astype(np.uint64) for p in run.survivors).astype(np.uint32)
    assert run.survivors == set(data)
    assert len(run.results) == 5
    assert all(np.array_equal(r, expected) for r in run.results.values())


def test_a_forged_revealed_share_names_the_revealer_and_recovery_goes_on():
    data = inputs()

    def forge(sender, recipient, raw):
        # p0 has x = 1, so its share is among the first t any peer combines.
        if sender == "p0" and raw[3] == MessageKind.REVEAL:
            message = decode(raw)
            assert isinstance(message, Reveal)
            shares = list(message.shares)
            bad = shares[0].share[:-1] + bytes([shares[0].share[-1] ^ 1])
            shares[0] = dataclasses.replace(shares[0], share=bad)
            return encode(dataclasses.replace(message, shares=tuple(shares)))
        return raw

    run = run_cohort(SecAggConfig("c", 1, D), data, tamper=forge, random_seed=5)
    expected = sum(data[p].astype(np.uint64) for p in data).astype(np.uint32)
    assert len(run.results) == 5
    assert all(np.array_equal(r, expected) for r in run.results.values())
    # Peers that finished before p0's reveal arrived never combined it; the others name p0.
    namers = [name for name, peer in run.peers.items() if peer.excluded]
    assert namers and "p0" not in namers
    assert all(run.peers[n].excluded == {"p0": ReasonCode.BAD_SHARE} for n in namers)


def test_a_reveal_for_another_survivor_set_is_refused():
    data = inputs()

    def other_set(sender, recipient, raw):
        if sender == "p3" and raw[3] == MessageKind.REVEAL:
            message = decode(raw)
            assert isinstance(message, Reveal)
            return encode(dataclasses.replace(message, survivors_digest=bytes(32)))
        return raw

    run = run_cohort(SecAggConfig("c", 1, D), data, tamper=other_set, random_seed=6)
    assert len(run.results) == 5
    for name, peer in run.peers.items():
        if name != "p3":
            assert peer.excluded == {"p3": ReasonCode.PROTOCOL_VIOLATION}
            # Refused on arrival (the sum was in), not merely skipped when used.
            assert (name, "p3", ReasonCode.PROTOCOL_VIOLATION) in run.refused


def test_a_late_message_is_refused_as_unexpected():
    peers = cohort()
    ads = adverts(peers)
    a = peers["a"]
    a.receive("b", ads["b"])
    a.deadline()  # c and d never advertised in time: go on with a, b (t = 3 of 4 → abort)
    assert a.stage is Stage.ABORTED and a.abort_code is ReasonCode.DROPPED
    assert reason_of(lambda: a.receive("c", ads["c"])) is ReasonCode.UNEXPECTED_STAGE


def test_advert_codec_round_trip_from_a_live_peer():
    ad = adverts(cohort())["a"]
    assert isinstance(ad, AdvertiseKeys)
    assert decode(encode(ad)) == ad


def test_a_buffered_reveal_for_another_survivor_set_is_refused_when_used():
    # p0 takes the sum last, so p3's reveal reaches it while it still waits for the sum:
    # it is buffered unchecked (no survivor set yet) and must be refused when used.
    data = {p: v for p, v in inputs().items() if p in ("p0", "p1", "p2", "p3")}

    def other_set(sender, recipient, raw):
        if sender == "p3" and recipient == "p0" and raw[3] == MessageKind.REVEAL:
            message = decode(raw)
            assert isinstance(message, Reveal)
            return encode(dataclasses.replace(message, survivors_digest=bytes(32)))
        return raw

    run = run_cohort(SecAggConfig("c", 1, D), data, tamper=other_set, random_seed=7, late=("p0",))
    p0 = run.peers["p0"]
    assert p0.excluded == {"p3": ReasonCode.PROTOCOL_VIOLATION}
    # Buffered, so not refused on arrival: the check at use is the one that caught it.
    assert ("p0", "p3", ReasonCode.PROTOCOL_VIOLATION) not in run.refused
    expected = sum(data[p].astype(np.uint64) for p in data).astype(np.uint32)
    assert set(run.results) == set(data)
    assert all(np.array_equal(r, expected) for r in run.results.values())
