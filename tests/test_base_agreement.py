"""A cohort sums onto one base model: the majority's; members on another are left out.

Each member adds the round's (shared) sum to its own base model, so members on different
bases would commit different models from one sum. ``Ready`` and the signed ``Cohort`` name
the base (round + digest); the coordinator fixes the cohort from the members on the
majority's base and a member refuses a cohort that lists it on a base it does not hold.
The sans-I/O core is tested message by message, then the attacks run through the real
protocol stack (codec, control service, ring) over the in-memory transport.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_collectives_round import CONSORTIUM, RING, TIMING, signers
from transport_harness import libp2p_group

from p2pfed.collectives.agreement import RoundAgreement, Send, StartRing
from p2pfed.collectives.agreement_state import Phase
from p2pfed.collectives.bases import majority_base
from p2pfed.collectives.messages import Cohort, Commit, Done, ModelBase, Ready
from p2pfed.collectives.round import ControlService, RingRound, RoundOutcome
from p2pfed.errors import LocalProtocolError, ReasonCode
from p2pfed.transport import MemoryNetwork, Transport

PEERS = ["a", "b", "c", "d"]
KEYS = signers(PEERS)
FRESH = ModelBase(5, b"\x11" * 32)
STALE = ModelBase(4, b"\x22" * 32)
NOBODYS = ModelBase(5, b"\x33" * 32)


def agreement(me: str, base: ModelBase, peers: list[str] = PEERS) -> RoundAgreement:
    return RoundAgreement(me, CONSORTIUM, 0, peers, KEYS[me], TIMING, roster_version=1, base=base)


def signed(coordinator: str, members: tuple[str, ...], base: ModelBase) -> Cohort:
    unsigned = Cohort(0, 0, 0, coordinator, members, b"", 1, base)
    signature = KEYS[coordinator].sign(unsigned.signed_bytes(CONSORTIUM))
    return dataclasses.replace(unsigned, signature=signature)


def reasons(agreement: RoundAgreement) -> set[tuple[str, ReasonCode]]:
    return {(e.peer, e.reason) for e in agreement.exclusions}


# -- the base a cohort sums onto ---------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.integers(-1, 3), st.sampled_from([b"\1" * 32, b"\2" * 32, b"\3" * 32])),
        min_size=1,
        max_size=9,
    ),
    seed=st.randoms(use_true_random=False),
)
def test_the_majority_base_is_the_most_held_then_the_newest_then_the_lowest_digest(
    picks: list[tuple[int, bytes]], seed: object
) -> None:
    bases = [ModelBase(r, d) for r, d in picks]
    chosen = majority_base(bases)
    counts = Counter(bases)
    top = max(counts.values())
    assert counts[chosen] == top
    tied = [b for b in counts if counts[b] == top]
    assert chosen.round == max(b.round for b in tied)
    assert chosen.digest == min(b.digest for b in tied if b.round == chosen.round)
    shuffled = list(bases)
    seed.shuffle(shuffled)
    assert majority_base(shuffled) == chosen  # every coordinator picks the same


def test_no_base_is_chosen_from_nothing() -> None:
    with pytest.raises(LocalProtocolError, match="at least one Ready"):
        majority_base([])


# -- the sans-I/O core -------------------------------------------------------------------


def test_the_coordinator_fixes_the_cohort_on_the_majority_base_and_names_the_stale() -> None:
    a = agreement("a", FRESH)
    assert a.start(0.0) == [] and a.coordinator == "a"
    actions = []
    for peer, base in (("b", FRESH), ("c", FRESH), ("d", STALE)):
        actions += a.receive(peer, Ready(0, 0, 0, (), 1, base), 0.1)
    cohorts = {s.peer: s.message for s in actions if isinstance(s, Send)}
    assert set(cohorts) == {"b", "c", "d"}  # the stale member hears it is out
    cohort = cohorts["d"]
    assert isinstance(cohort, Cohort) and cohort.base == FRESH
    assert cohort.members == ("a", "b", "c")
    assert StartRing(0, ("a", "b", "c")) in actions
    assert ("d", ReasonCode.STALE_BASE) in reasons(a)
    stale = [e for e in a.exclusions if e.reason is ReasonCode.STALE_BASE]
    assert str(STALE) in stale[0].detail and str(FRESH) in stale[0].detail


def test_a_coordinator_on_a_stale_base_steps_aside_for_the_next() -> None:
    a = agreement("a", STALE)
    a.start(0.0)
    actions = []
    for peer in ("b", "c", "d"):
        actions += a.receive(peer, Ready(0, 0, 0, (), 1, FRESH), 0.1)
    assert not any(isinstance(s, Send) and isinstance(s.message, Cohort) for s in actions)
    assert not any(isinstance(s, StartRing) for s in actions)
    assert actions == [Send("b", Ready(0, 0, 1, (), 1, STALE))]
    assert a.phase is Phase.ANNOUNCED and a.coordinator == "b"


def test_a_coordinator_with_too_few_on_its_base_fixes_no_cohort() -> None:
    """Two members on two bases: a lone member's sum would be no round, so none is fixed."""
    a = RoundAgreement("a", CONSORTIUM, 0, ["a", "b"], KEYS["a"], TIMING, base=FRESH, min_cohort=2)
    a.start(0.0)
    actions = a.receive("b", Ready(0, 0, 0, (), 0, STALE), 0.1)
    assert actions == [Send("b", Ready(0, 0, 1, (), 0, FRESH))]  # steps aside: no StartRing
    assert a.tick(TIMING.takeover_timeout + 0.1) == [] and a.phase is Phase.FAILED


def test_the_next_coordinator_waits_for_the_others_after_an_early_takeover() -> None:
    """A coordinator that stepped aside says so at once; the others give up only on timeout."""
    b = agreement("b", FRESH)
    b.start(0.0)  # Ready to a; b would give up on a at takeover_timeout
    assert b.receive("a", Ready(0, 0, 1, (), 1, STALE), 0.2) == []
    assert b.phase is Phase.COLLECTING
    assert b.tick(TIMING.collect_window + 0.2) == []  # a cohort of b and a alone: too early
    actions = b.receive("c", Ready(0, 0, 1, (), 1, FRESH), TIMING.takeover_timeout)
    actions += b.receive("d", Ready(0, 0, 1, (), 1, FRESH), TIMING.takeover_timeout)
    assert StartRing(0, ("b", "c", "d")) in actions
    assert ("a", ReasonCode.STALE_BASE) in reasons(b)


def test_a_member_left_out_for_its_base_knows_why() -> None:
    d = agreement("d", STALE)
    d.start(0.0)
    assert d.receive("a", signed("a", ("a", "b", "c"), FRESH), 0.5) == []
    assert d.phase is Phase.LEFT_OUT
    assert ("d", ReasonCode.STALE_BASE) in reasons(d)


@pytest.mark.parametrize(
    ("me", "mine", "claimed"),
    [
        ("d", STALE, FRESH),  # the coordinator puts a stale member into the majority's cohort
        ("b", FRESH, NOBODYS),  # the coordinator claims a base nobody holds
    ],
)
def test_a_member_refuses_a_cohort_that_puts_it_on_a_base_it_does_not_hold(
    me: str, mine: ModelBase, claimed: ModelBase
) -> None:
    member = agreement(me, mine)
    member.start(0.0)
    assert member.receive("a", signed("a", ("b", "c", "d"), claimed), 0.5) == []
    assert member.phase is Phase.ANNOUNCED  # no ring: it waits for the next coordinator
    assert ("a", ReasonCode.PROTOCOL_VIOLATION) in reasons(member)
    member.tick(TIMING.takeover_timeout)
    assert member.takeover == 1 and member.coordinator == "b"  # on to the next coordinator


# -- through the protocol stack ------------------------------------------------------------


async def run(
    bases: dict[str, ModelBase], liar: tuple[tuple[str, ...], ModelBase] | None = None
) -> dict[str, RoundOutcome]:
    """Round 0 over the members of ``bases``, each on its base, each adding its index + 1.

    With ``liar``, member "a" is a lying coordinator: it answers the Ready messages of
    attempt 0 with a validly signed cohort of its choice (members, base), and commits it as
    soon as those members report done.
    """
    peers = sorted(bases)
    keys = signers(peers)
    net = MemoryNetwork()
    outcomes: dict[str, RoundOutcome] = {}
    opened: set[str] = set()
    ready = trio.Event()

    def up(me: str) -> None:
        opened.add(me)
        if len(opened) == len(peers):
            ready.set()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            runner = RingRound(
                transport, CONSORTIUM, 1, peers, keys[me], timing=TIMING, ring_config=RING
            )
            up(me)
            await ready.wait()
            vector = np.full(64, peers.index(me) + 1, np.uint32)
            outcomes[me] = await runner.all_reduce(vector, 0, bases[me])
            await trio.sleep(TIMING.takeover_timeout)  # stay reachable for late messages

    async def lying_coordinator(members: tuple[str, ...], base: ModelBase) -> None:
        async with net.open("a") as transport:
            control = ControlService(transport, CONSORTIUM, timeout=TIMING.collect_window)
            mailbox = control.open_round(0)
            up("a")
            heard: set[str] = set()
            done: set[str] = set()
            with trio.move_on_after(4 * TIMING.commit_timeout):
                async for sender, message in mailbox:
                    if isinstance(message, Ready) and message.attempt == 0:
                        heard.add(sender)
                        if heard == set(members):
                            for p in members:
                                await control.send(p, signed("a", members, base))
                    if isinstance(message, Done) and message.attempt == 0:
                        done.add(sender)
                        if done == set(members):
                            for p in members:
                                await control.send(p, Commit(0, 0))

    async with trio.open_nursery() as nursery:
        for p in peers:
            if liar is None or p != "a":
                nursery.start_soon(peer, p)
        if liar is not None:
            nursery.start_soon(lying_coordinator, *liar)
    return outcomes


def committed(outcomes: dict[str, RoundOutcome]) -> dict[str, tuple[str, ...]]:
    """Each committing member's cohort, checked to be the sum over that cohort."""
    return committed_over(outcomes, sorted({*outcomes, "a"}))


def committed_over(
    outcomes: dict[str, RoundOutcome], peers: list[str]
) -> dict[str, tuple[str, ...]]:
    """As ``committed``, member k having added k + 1 (``peers`` sorted)."""
    out = {}
    for me, o in outcomes.items():
        if o.committed:
            assert o.cohort is not None and o.result is not None
            expected = sum(peers.index(p) + 1 for p in o.cohort)
            assert np.all(o.result.vector == expected)
            out[me] = o.cohort
    return out


@pytest.mark.parametrize("stale", ["a", "d"])  # "a" coordinates attempt 0 of round 0
async def test_a_member_on_a_stale_base_is_left_out_and_the_others_commit(
    stale: str, autojump_clock: trio.testing.MockClock
) -> None:
    bases = {p: STALE if p == stale else FRESH for p in PEERS}
    outcomes = await run(bases)
    fresh = tuple(p for p in PEERS if p != stale)
    assert committed(outcomes) == {p: fresh for p in fresh}
    assert outcomes[stale].phase is Phase.LEFT_OUT
    mine = {(e.peer, e.reason) for e in outcomes[stale].exclusions}
    assert (stale, ReasonCode.STALE_BASE) in mine


async def test_two_members_on_different_bases_never_both_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pair case a quorum of certificates cannot settle: at most one model per round."""
    for newer, older in (("a", "b"), ("b", "a")):
        outcomes = await run({newer: FRESH, older: STALE})
        assert set(committed(outcomes)) <= {newer}  # the newer base wins the tie
        assert outcomes[older].phase is Phase.LEFT_OUT
        exclusions = {(e.peer, e.reason) for e in outcomes[older].exclusions}
        assert (older, ReasonCode.STALE_BASE) in exclusions


@pytest.mark.parametrize(
    ("listed", "base"),
    [
        (("b", "c", "d"), FRESH),  # the stale member d put into the majority's cohort
        (("b", "c", "d"), NOBODYS),  # a base nobody holds
    ],
)
async def test_a_lying_coordinator_is_refused_and_the_honest_members_commit_on_their_base(
    listed: tuple[str, ...], base: ModelBase, autojump_clock: trio.testing.MockClock
) -> None:
    bases = {"a": FRESH, "b": FRESH, "c": FRESH, "d": STALE}
    outcomes = await run(bases, liar=(listed, base))
    cohorts = committed(outcomes)
    assert cohorts["b"] == cohorts["c"] == ("b", "c")  # never with d, never on the lie
    assert not any("a" in c for c in cohorts.values())
    assert ("a", ReasonCode.PROTOCOL_VIOLATION) in {
        (e.peer, e.reason) for o in outcomes.values() for e in o.exclusions
    }
    refused_by = {
        me
        for me, o in outcomes.items()
        if ("a", ReasonCode.PROTOCOL_VIOLATION) in {(e.peer, e.reason) for e in o.exclusions}
    }
    assert refused_by == ({"d"} if base == FRESH else {"b", "c", "d"})


@pytest.mark.network
@pytest.mark.slow
async def test_over_real_libp2p_a_stale_member_is_left_out_and_the_others_commit() -> None:
    """The same rule over three real hosts on 127.0.0.1 (Noise, yamux), on the real clock."""
    with trio.fail_after(60):
        async with libp2p_group(3, "base") as group:
            peers = sorted(group.ids)
            keys = signers(peers)
            stale = peers[-1]  # not the coordinator of round 0: left out at once
            outcomes: dict[str, RoundOutcome] = {}

            async def one(transport: Transport) -> None:
                me = transport.local_peer
                runner = RingRound(
                    transport, CONSORTIUM, 1, peers, keys[me], timing=TIMING, ring_config=RING
                )
                vector = np.full(64, peers.index(me) + 1, np.uint32)
                base = STALE if me == stale else FRESH
                outcomes[me] = await runner.all_reduce(vector, 0, base)

            async with trio.open_nursery() as nursery:
                for t in group.transports:
                    nursery.start_soon(one, t)
    fresh = tuple(p for p in peers if p != stale)
    assert committed_over(outcomes, peers) == {p: fresh for p in fresh}
    assert outcomes[stale].phase is Phase.LEFT_OUT
    assert (stale, ReasonCode.STALE_BASE) in {
        (e.peer, e.reason) for e in outcomes[stale].exclusions
    }


# -- a straggler the quorum needs ----------------------------------------------------------


def test_a_coordinator_short_of_the_quorum_waits_past_its_window_for_a_straggler() -> None:
    """Two of three ready when the window closes: a secure sum of two could only abort."""
    peers = ["a", "b", "c"]
    a = RoundAgreement("a", CONSORTIUM, 0, peers, KEYS["a"], TIMING, roster_version=1, quorum=3)
    assert TIMING.collect_window < TIMING.patience < TIMING.takeover_timeout
    assert a.start(0.0) == [] and a.receive("b", Ready(0, 0, 0, (), 1), 0.1) == []
    assert a.tick(TIMING.collect_window) == [] and a.phase is Phase.COLLECTING
    actions = a.receive("c", Ready(0, 0, 0, (), 1), TIMING.patience - 0.1)
    assert StartRing(0, ("a", "b", "c")) in actions
    # The straggler had not given up on its coordinator yet: it takes the cohort.
    c = RoundAgreement("c", CONSORTIUM, 0, peers, KEYS["c"], TIMING, roster_version=1, quorum=3)
    assert c.start(TIMING.patience - 0.2) == [Send("a", Ready(0, 0, 0, (), 1))]
    cohort = next(s.message for s in actions if isinstance(s, Send) and s.peer == "c")
    assert c.receive("a", cohort, TIMING.patience) == [StartRing(0, ("a", "b", "c"))]


def test_a_coordinator_stops_waiting_for_the_quorum_before_the_others_take_over() -> None:
    """Patience ends before the takeover timeout: the members present get their cohort."""
    a = RoundAgreement(
        "a", CONSORTIUM, 0, ["a", "b", "c"], KEYS["a"], TIMING, roster_version=1, quorum=3
    )
    a.start(0.0)
    a.receive("b", Ready(0, 0, 0, (), 1), 0.1)
    assert a.tick(TIMING.patience - 0.01) == []
    # b gives up on a at the takeover timeout: the cohort must leave a margin to reach it.
    actions = a.tick(0.8 * TIMING.takeover_timeout)
    assert StartRing(0, ("a", "b")) in actions
    assert Send("b", a.cohort_message) in actions  # type: ignore[arg-type]


def test_without_a_quorum_to_wait_for_the_window_fixes_the_cohort() -> None:
    a = RoundAgreement("a", CONSORTIUM, 0, ["a", "b", "c"], KEYS["a"], TIMING, roster_version=1)
    a.start(0.0)
    a.receive("b", Ready(0, 0, 0, (), 1), 0.1)
    assert StartRing(0, ("a", "b")) in a.tick(TIMING.collect_window)
