import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, ReasonCode
from p2pfed.secagg.harness import Drop, run_cohort
from p2pfed.secagg.messages import MessageKind
from p2pfed.secagg.params import SecAggConfig, plan_cohort
from p2pfed.secagg.state import PROGRESS, Stage

STAGES = list(PROGRESS[1:-1])  # every stage a peer can drop in, ADVERTISE to UNMASK
D = 24


def names(n):
    return [f"p{i}" for i in range(n)]


def inputs_for(n, seed=0):
    rng = np.random.default_rng(seed)
    return {p: rng.integers(0, 2**20, D, dtype=np.uint32) for p in names(n)}


def run_with_spy(config, inputs, drops, seed):
    kinds_sent: list[int] = []

    def spy(sender, recipient, data):
        kinds_sent.append(data[3])
        return data

    run = run_cohort(config, inputs, drops=drops, random_seed=seed, tamper=spy)
    return run, kinds_sent


def check(n, drops, seed=0):
    inputs = inputs_for(n, seed)
    config = SecAggConfig("faults", 3, D)
    plan = plan_cohort(config, frozenset(inputs))
    run, kinds_sent = run_with_spy(config, inputs, drops, seed)
    live = set(names(n)) - set(drops)
    # Dropped at CONSISTENCY: the vector is in the sum, no signature; at UNMASK: signed too.
    signed = live | {p for p, d in drops.items() if d.stage is Stage.UNMASK}
    contributed = signed | {p for p, d in drops.items() if d.stage is Stage.CONSISTENCY}
    clean = not any(d.partial for d in drops.values())
    enough = (
        len(contributed) >= plan.min_survivors
        and len(signed) >= plan.quorum
        and len(live) >= plan.threshold
    )
    if len(drops) <= n - plan.min_survivors or (clean and enough):
        assert run.survivors == contributed
        expected = sum(inputs[p].astype(np.uint64) for p in contributed).astype(np.uint32)
        assert set(run.results) == live, run.aborted
        for result in run.results.values():
            assert np.array_equal(result, expected)
        return
    # A peer scheduled to drop at a later stage may abort first: it is live, not dead.
    live = set(names(n)) - run.dead
    expected = sum(inputs[p].astype(np.uint64) for p in run.survivors)
    for result in run.results.values():
        # Only a crash mid-broadcast can still hand someone a quorum and t shares.
        assert not clean
        assert np.array_equal(result, np.asarray(expected).astype(np.uint32))
    assert set(run.aborted) == live - set(run.results)
    for code, reason in run.aborted.values():
        assert code in (ReasonCode.DROPPED, ReasonCode.TIMEOUT) and reason
    if len(run.survivors) < plan.min_survivors or (clean and len(signed) < plan.quorum):
        assert MessageKind.REVEAL not in kinds_sent  # nothing revealed


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 4, 5])
def test_every_drop_pattern_at_every_stage(n):
    for k in range(0, n + 1):
        for dropped in itertools.combinations(names(n), k):
            # k ≤ n − min_survivors: every assignment of stages; beyond: one stage for all
            if k <= n - plan_cohort(SecAggConfig("f", 3, D), frozenset(names(n))).min_survivors:
                assignments = itertools.product(STAGES, repeat=k)
            else:
                assignments = ((s,) * k for s in STAGES)
            for stages in assignments:
                check(n, {p: Drop(s) for p, s in zip(dropped, stages, strict=True)})


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 7), st.data())
def test_random_drops_including_crashes_mid_broadcast(n, data):
    dropped = data.draw(st.lists(st.sampled_from(names(n)), unique=True, max_size=n))
    drops = {p: Drop(data.draw(st.sampled_from(STAGES)), data.draw(st.booleans())) for p in dropped}
    check(n, drops, seed=data.draw(st.integers(0, 3)))


def test_secagg_plus_tolerates_scattered_drops_and_aborts_cleanly_otherwise():
    n = 24
    inputs = inputs_for(n, 9)
    config = SecAggConfig("faults", 4, D, graph="harary", degree=4)  # 5 holders, t = 3
    run = run_cohort(config, inputs, random_seed=1)
    plan = run.peers["p0"].plan
    assert plan.graph == "harary" and plan.threshold == 3
    # Drop two peers that share no holder set: every neighbourhood keeps ≥ 3 of 5.
    first = "p0"
    second = next(
        p for p in sorted(plan.peers) if p != first and not plan.holders(p) & plan.holders(first)
    )
    drops = {first: Drop(Stage.MASKED_INPUT), second: Drop(Stage.SHARE_KEYS)}
    run = run_cohort(config, inputs, drops=drops, random_seed=2)
    contributed = set(names(n)) - {first, second}
    expected = sum(inputs[p].astype(np.uint64) for p in contributed).astype(np.uint32)
    assert run.survivors == contributed
    assert len(run.results) == n - 2
    assert all(np.array_equal(r, expected) for r in run.results.values())
    # Kill a whole neighbourhood's majority: recovery is impossible, so a clean abort.
    victim = "p5"
    killed = sorted(plan.holders(victim) - {victim})[:3]
    drops = {p: Drop(Stage.MASKED_INPUT) for p in killed}
    run = run_cohort(config, inputs, drops=drops, random_seed=3)
    assert not run.results
    assert {code for code, _ in run.aborted.values()} == {ReasonCode.DROPPED}


def test_survivors_split_into_unmasked_groups_abort_before_revealing():
    # A ring of 12 (degree 2, t = 2 of 3): two non-adjacent peers commit and then vanish,
    # which cuts the survivors' mask graph into two arcs. Every secret still has t
    # surviving holders, but revealing seeds would let a partial sum over one arc (as a
    # ring all-reduce forms) expose that arc's inputs: refuse, reveal nothing.
    n = 12
    config = SecAggConfig("faults", 5, D, graph="harary", degree=2)
    inputs = inputs_for(n, 2)
    plan = run_cohort(config, inputs, random_seed=0).peers["p0"].plan
    order = [plan.peers[0]]
    while len(order) < n:
        order.append(next(p for p in sorted(plan.neighbours[order[-1]]) if p not in order))
    drops = {order[0]: Drop(Stage.MASKED_INPUT), order[6]: Drop(Stage.MASKED_INPUT)}
    run, kinds_sent = run_with_spy(config, inputs, drops, 1)
    assert len(run.survivors) == n - 2
    assert not run.results
    assert {code for code, _ in run.aborted.values()} == {ReasonCode.DROPPED}
    assert all("groups" in reason for _, reason in run.aborted.values())
    assert MessageKind.REVEAL not in kinds_sent


def corrupt_shares_to_p0(sender, recipient, raw):
    import dataclasses

    from p2pfed.secagg.messages import ShareKeys, decode, encode

    if recipient == "p0" and raw[3] == MessageKind.SHARE_KEYS:
        message = decode(raw)
        assert isinstance(message, ShareKeys)
        return encode(dataclasses.replace(message, sealed=bytes(len(message.sealed))))
    return raw


def test_a_peer_left_without_any_pair_mask_does_not_contribute():
    inputs = inputs_for(4, 4)
    run = run_cohort(SecAggConfig("f", 1, D), inputs, tamper=corrupt_shares_to_p0, random_seed=1)
    assert run.peers["p0"].stage is Stage.ABORTED
    excluded = {p: ReasonCode.BAD_SHARE for p in ("p1", "p2", "p3")}
    assert run.peers["p0"].excluded == excluded
    assert run.survivors == {"p1", "p2", "p3"}
    expected = sum(inputs[p].astype(np.uint64) for p in ("p1", "p2", "p3")).astype(np.uint32)
    assert set(run.results) == {"p1", "p2", "p3"}
    assert all(np.array_equal(r, expected) for r in run.results.values())


def test_a_sum_of_two_is_never_unmasked():
    # Issue 12's first attack: 3 members, one cannot contribute, the other two would each
    # learn the other's input from a sum of two. The floor refuses before any reveal.
    inputs = inputs_for(3, 4)
    run, kinds_sent = run_with_spy(
        SecAggConfig("f", 1, D), inputs, {"p0": Drop(Stage.MASKED_INPUT)}, 1
    )
    assert run.survivors == {"p1", "p2"}
    assert not run.results
    assert set(run.aborted) == {"p1", "p2"}
    for code, reason in run.aborted.values():
        assert code is ReasonCode.DROPPED and "min_contributors 3" in reason
    assert MessageKind.REVEAL not in kinds_sent
    # No secret was rebuilt anywhere, so the other's input stays under its masks.
    assert not any(peer._recovery and peer._recovery.recovered for peer in run.peers.values())


def test_floors_below_the_collusion_bound_are_refused_before_a_round():
    cohort = frozenset(names(5))
    with pytest.raises(ConfigError, match="min_contributors 2 is below collusion"):
        SecAggConfig("f", 1, D, min_contributors=2)
    with pytest.raises(ConfigError, match="min_survivors 2 is below min_contributors 3"):
        plan_cohort(SecAggConfig("f", 1, D, min_survivors=2), cohort)
    with pytest.raises(ConfigError, match="threshold 2 is not above the collusion bound 2"):
        plan_cohort(SecAggConfig("f", 1, D, threshold=2, collusion=2), cohort)
    with pytest.raises(ConfigError, match="cannot meet min_survivors"):
        plan_cohort(SecAggConfig("f", 1, D, min_contributors=4), frozenset(names(3)))
    plan = plan_cohort(SecAggConfig("f", 1, D, collusion=2), cohort)
    assert (plan.min_contributors, plan.quorum, plan.min_survivors) == (4, 4, 4)
