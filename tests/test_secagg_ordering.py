"""Messages that overtake what they depend on are held back by the driver, not refused."""

import numpy as np

from p2pfed.secagg.harness import make_identities
from p2pfed.secagg.messages import ShareKeys, encode
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.protocol import SecAggPeer
from p2pfed.secagg.state import Stage


def test_shares_before_the_advertisement_are_early_not_refused() -> None:
    names = ["a", "b", "c"]
    signers, ids = make_identities(names)
    config = SecAggConfig("ordering", 3, 8)
    peers = {n: SecAggPeer(config, n, signers[n], ids) for n in names}
    adverts = {n: peers[n].start(np.zeros(8, np.uint32)) for n in names}
    sent: dict[str, list] = {n: [] for n in names}  # what each peer sends in reply
    # Everyone hears every advertisement except b's, which has not reached a and c yet.
    for n in names:
        for item in adverts[n]:
            if n != "b":
                sent[item.to] += peers[item.to].receive(n, item.message)
    b_shares = [o for o in sent["b"] if isinstance(o.message, ShareKeys) and o.to == "a"]
    assert b_shares and peers["b"].stage is Stage.SHARE_KEYS
    data = encode(b_shares[0].message)
    assert peers["a"].is_early("b", data)  # would be refused as out of order now
    advert = next(o for o in adverts["b"] if o.to == "a")
    peers["a"].receive("b", advert.message)
    assert not peers["a"].is_early("b", data)
    peers["a"].receive_bytes("b", data)  # accepted once its advertisement is in
    assert not peers["a"].rejections


def test_garbage_and_other_rounds_are_not_early() -> None:
    signers, ids = make_identities(["a", "b", "c"])
    peer = SecAggPeer(SecAggConfig("ordering", 3, 8), "a", signers["a"], ids)
    peer.start(np.zeros(8, np.uint32))
    assert not peer.is_early("b", b"\x00garbage")
    other = SecAggPeer(SecAggConfig("ordering", 4, 8), "b", signers["b"], ids)
    advert = other.start(np.zeros(8, np.uint32))[0].message
    assert not peer.is_early("b", encode(advert))  # another round: receive refuses it
