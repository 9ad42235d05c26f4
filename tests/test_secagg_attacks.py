"""What an honest-but-curious member learns from the masks, tried through the real protocol.

Each test plays a member that legitimately holds part of a victim's secrets (a revealed
self-mask seed, or a rebuilt pair secret) and the victim's masked vector (the one who forms
the sum sees it), removes every mask it can, and checks that the victim's input is still
hidden. Deleting either mask makes the matching test fail (``make mutants``).
"""

from __future__ import annotations

import numpy as np

from p2pfed.secagg.harness import run_cohort
from p2pfed.secagg.messages import ShareKind
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import MaskExpander, agree, pair_mask_key, self_mask_key
from tests.test_secagg_consistency import (
    ATTACKER,
    VICTIM,
    Eavesdrop,
    inputs,
    rebuild,
)

D = 32
NAMES = ["a", "b", "c", "d", "v"]


def test_a_revealed_self_mask_seed_leaves_the_input_hidden_by_pair_masks() -> None:
    # v survives, so every survivor reveals its share of v's seed: the attacker rebuilds
    # b_v and strips the self mask from v's masked vector; the pair masks still hide x_v.
    spy = Eavesdrop()
    data = inputs(NAMES)
    config = SecAggConfig("attacks", 2, D)
    run = run_cohort(config, data, views=lambda peer, s: s, tamper=spy, random_seed=5)
    assert set(run.results) == set(NAMES)
    shares = dict(spy.shares[(VICTIM, ShareKind.SELF_SEED)])
    shares[ATTACKER] = run.peers[ATTACKER]._exchange.held[VICTIM].seed_share
    seed = rebuild(run, VICTIM, ShareKind.SELF_SEED, shares)
    assert seed is not None  # the attack had what the protocol hands out
    seen = run.masked[VICTIM].copy()
    MaskExpander().apply_many(seen, [(self_mask_key(seed, "attacks", 2, VICTIM), -1)])
    assert not np.array_equal(seen, data[VICTIM])
    # Not even close: the words left look uniform, not like a 20-bit input.
    assert int(np.count_nonzero(seen >> 20)) > D // 2


def test_a_rebuilt_pair_secret_leaves_a_late_input_hidden_by_its_self_mask() -> None:
    # v's vector reaches whoever sums, but the survivors are told v dropped (it came
    # late), so they reveal shares of v's pair secret. The attacker rebuilds it and strips
    # every pair mask from v's masked vector; v's self mask still hides x_v.
    spy = Eavesdrop()
    data = inputs(NAMES)
    config = SecAggConfig("attacks", 3, D)
    told = frozenset(NAMES) - {VICTIM}
    run = run_cohort(config, data, views=lambda peer, s: told, tamper=spy, random_seed=6)
    assert set(run.results) == told  # the others' sum was unmasked without v
    shares = dict(spy.shares[(VICTIM, ShareKind.PAIR_SECRET)])
    shares[ATTACKER] = run.peers[ATTACKER]._exchange.held[VICTIM].mask_share
    secret = rebuild(run, VICTIM, ShareKind.PAIR_SECRET, shares)
    assert secret is not None
    attacker = run.peers[ATTACKER]
    seen = run.masked[VICTIM].copy()
    removals = []
    for other in sorted(run.peers[VICTIM].mask_set):
        key = pair_mask_key(
            agree(secret, attacker._exchange.adverts[other].mask_public),
            "attacks",
            3,
            VICTIM,
            other,
        )
        removals.append((key, -attacker.plan.sign(VICTIM, other)))
    MaskExpander().apply_many(seen, removals)
    assert not np.array_equal(seen, data[VICTIM])
    assert int(np.count_nonzero(seen >> 20)) > D // 2
    # No seed share of v went out: v was not in anyone's survivor set.
    assert (VICTIM, ShareKind.SELF_SEED) not in spy.shares
