"""The consistency round against a lying summation (issue 12's equivocation attack).

The attacker ``a`` forms the sum and shows one survivor set to some peers and another to the
rest, then collects every share revealed to it. It wins if it rebuilds both the self-mask
seed and the pair secret of the victim ``v``: then it unmasks ``v``'s masked vector (which
it saw while summing) and holds ``v``'s input.
"""

from __future__ import annotations

import numpy as np
import pytest

from p2pfed.errors import DataError, ReasonCode, RemoteProtocolError
from p2pfed.secagg import shamir
from p2pfed.secagg.harness import CohortRun, run_cohort
from p2pfed.secagg.messages import MessageKind, Reveal, ShareKind, SurvivorSignature, decode
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import (
    AgreementKeyPair,
    MaskExpander,
    UIntVector,
    agree,
    commitment,
    pair_mask_key,
    self_mask_key,
)

D = 32
ATTACKER, VICTIM = "a", "v"


def inputs(names: list[str]) -> dict[str, UIntVector]:
    rng = np.random.default_rng(12)
    return {p: rng.integers(0, 2**20, D, dtype=np.uint32) for p in names}


class Eavesdrop:
    """Every share revealed to the attacker, by (dealer, kind) and holder."""

    def __init__(self) -> None:
        self.shares: dict[tuple[str, ShareKind], dict[str, bytes]] = {}

    def __call__(self, sender: str, recipient: str, raw: bytes) -> bytes:
        if recipient == ATTACKER and raw[3] == MessageKind.REVEAL:
            message = decode(raw)
            assert isinstance(message, Reveal)
            for share in message.shares:
                self.shares.setdefault((share.dealer, share.kind), {})[sender] = share.share
        return raw


def rebuild(run: CohortRun, dealer: str, kind: ShareKind, shares: dict[str, bytes]) -> bytes | None:
    """The secret of ``dealer`` from ``shares`` if they rebuild the committed one."""
    peer = run.peers[ATTACKER]
    if len(shares) < peer.plan.threshold:
        return None
    try:
        secret = shamir.combine({peer.plan.x(h): s for h, s in shares.items()})
    except DataError:
        return None
    advert = peer._exchange.adverts[dealer]
    if kind is ShareKind.SELF_SEED:
        ok = commitment(secret, peer.config.consortium, peer.config.round, dealer) == (
            advert.seed_commitment
        )
    else:
        ok = AgreementKeyPair.from_secret(secret).public == advert.mask_public
    return secret if ok else None


def attacker_unmasks(run: CohortRun, spy: Eavesdrop) -> UIntVector | None:
    """What the attacker computes as ``v``'s input from everything it holds, if anything."""
    me = run.peers[ATTACKER]
    own = me._exchange.held[VICTIM]
    secrets = {}
    mine_by_kind = {ShareKind.SELF_SEED: own.seed_share, ShareKind.PAIR_SECRET: own.mask_share}
    for kind, mine in mine_by_kind.items():
        shares = dict(spy.shares.get((VICTIM, kind), {}))
        shares[ATTACKER] = mine
        secrets[kind] = rebuild(run, VICTIM, kind, shares)
    if secrets[ShareKind.SELF_SEED] is None or secrets[ShareKind.PAIR_SECRET] is None:
        return None
    c, r = me.config.consortium, me.config.round
    x = run.masked[VICTIM].copy()
    removals = [(self_mask_key(secrets[ShareKind.SELF_SEED], c, r, VICTIM), -1)]
    for other in sorted(run.peers[VICTIM].mask_set):
        secret = agree(secrets[ShareKind.PAIR_SECRET], me._exchange.adverts[other].mask_public)
        removals.append((pair_mask_key(secret, c, r, VICTIM, other), -me.plan.sign(VICTIM, other)))
    MaskExpander().apply_many(x, removals)
    return x


def equivocate(split: dict[str, frozenset[str]]):
    def view(peer: str, true_set: frozenset[str]) -> frozenset[str]:
        return split[peer]

    return view


# n = 5, t = 3 (the configuration, with the survivor floor at its minimum of 3).
FIVE = ["a", "b", "c", "d", "v"]
S1, S2 = frozenset({"a", "v", "b"}), frozenset({"a", "c", "d"})


def run_attack(config: SecAggConfig, names: list[str], split: dict[str, frozenset[str]]):
    spy = Eavesdrop()
    data = inputs(names)
    run = run_cohort(config, data, views=equivocate(split), tamper=spy, random_seed=3)
    return run, spy, data


def test_the_attack_helper_unmasks_when_given_both_secrets() -> None:
    # Sanity of the attacker's arithmetic: with every holder's shares of both of v's
    # secrets (which no honest peer would ever reveal together) it finds v's input.
    config = SecAggConfig("consistency", 9, D, threshold=3, min_survivors=3)
    run, spy, data = run_attack(config, FIVE, dict.fromkeys(FIVE, frozenset(FIVE)))
    assert set(run.results) == set(FIVE)
    for kind in ShareKind:
        for holder, peer in run.peers.items():
            held = peer._exchange.held[VICTIM]
            spy.shares.setdefault((VICTIM, kind), {})[holder] = (
                held.seed_share if kind is ShareKind.SELF_SEED else held.mask_share
            )
    got = attacker_unmasks(run, spy)
    assert got is not None and np.array_equal(got, data[VICTIM])


def test_equivocated_survivor_sets_reveal_nothing_of_the_victim() -> None:
    config = SecAggConfig("consistency", 9, D, threshold=3, min_survivors=3)
    split = {p: S1 for p in S1} | {p: S2 for p in S2 - {"a"}}
    run, spy, _ = run_attack(config, FIVE, split)
    # Neither set can gather the quorum (max(t, ⌊(5+1)/2⌋+1) = 4) of its own members.
    assert run.peers["v"].plan.quorum == 4
    for name in ("b", "c", "d", "v"):
        assert run.peers[name].abort_code is not None, name
        assert "nothing was revealed" in (run.peers[name].abort_reason or "")
    assert not spy.shares  # no honest peer revealed a single share to the attacker
    assert attacker_unmasks(run, spy) is None


def test_a_quorum_set_reveals_and_the_other_set_refuses_naming_no_victim_secret() -> None:
    # n = 7, t = 3, quorum 5: S1 (five peers, v in it) reaches its quorum and reveals seed
    # shares; S2 (without v) cannot, so nobody reveals v's pair secret to the attacker.
    names = ["a", "b", "c", "d", "e", "f", "v"]
    config = SecAggConfig("consistency", 9, D, threshold=3)
    s1 = frozenset({"a", "b", "c", "d", "v"})
    s2 = frozenset({"a", "b", "c", "e", "f"})
    split = {p: s1 for p in s1} | {p: s2 for p in ("e", "f")}
    run, spy, _ = run_attack(config, names, split)
    assert set(run.results) >= {"b", "c", "d", "v"}
    for name in ("e", "f"):
        peer = run.peers[name]
        assert peer.abort_code in (ReasonCode.PROTOCOL_VIOLATION, ReasonCode.TIMEOUT)
        assert "signed another survivor set" in (peer.abort_reason or "")
    assert (VICTIM, ShareKind.PAIR_SECRET) not in spy.shares
    assert len(spy.shares[(VICTIM, ShareKind.SELF_SEED)]) >= 3  # the seed alone is harmless
    assert attacker_unmasks(run, spy) is None


def test_a_peer_signing_two_survivor_sets_is_named() -> None:
    # After signing the set everyone agreed on, the attacker sends a signature on another
    # set: its two signatures prove the equivocation, and the recipient excludes it by name.
    from p2pfed.secagg.consistency import survivor_set_signed_bytes
    from p2pfed.secagg.harness import make_identities
    from p2pfed.secagg.messages import encode
    from p2pfed.secagg.recovery import survivors_digest

    names = ["a", "b", "c", "d", "v"]
    signers, _ = make_identities(names)
    config = SecAggConfig("consistency", 9, D, threshold=3)
    forged = survivors_digest(config, S2)

    run = run_cohort(config, inputs(names), random_seed=4)
    assert set(run.results) == set(names)
    peer = run.peers["b"]
    vote = SurvivorSignature(
        config.consortium,
        config.round,
        forged,
        signers["a"].sign(survivor_set_signed_bytes(config, forged)),
    )
    with pytest.raises(RemoteProtocolError, match="two different survivor sets"):
        peer.receive_bytes("a", encode(vote))
    assert peer.excluded.get("a") is ReasonCode.PROTOCOL_VIOLATION
