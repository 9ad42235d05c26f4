from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from transport_harness import SlowOpens

from p2pfed.collectives import Fault, FaultPlan, InjectedCrash, RingConfig
from p2pfed.collectives.agreement import RoundAgreement, StartRing, coordinator_of
from p2pfed.collectives.agreement_state import (
    AGREEMENT_TRANSITIONS,
    FINAL_PHASES,
    AgreementTiming,
    Phase,
)
from p2pfed.collectives.round import CONTROL_PROTOCOL, RingRound, RoundOutcome
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import ReasonCode
from p2pfed.transport import MemoryNetwork

CONSORTIUM = "round-test"
TIMING = AgreementTiming(collect_window=1.0, takeover_timeout=3.0, commit_timeout=6.0)
RING = RingConfig(chunk_bytes=512, timeout=2.0)


def signers(peers: list[str]) -> dict[str, Ed25519CohortSigner]:
    seeds = {p: bytes([i + 1]) * 32 for i, p in enumerate(peers)}
    public = {p: Ed25519CohortSigner(seeds[p], {}).public_key for p in peers}
    return {p: Ed25519CohortSigner(seeds[p], public) for p in peers}


async def run_peers(
    peers: list[str],
    vectors: dict[str, npt.NDArray[Any]],
    rounds: list[int],
    *,
    faults: dict[str, FaultPlan] | None = None,
    late: dict[tuple[str, int], float] | None = None,
    absent: frozenset[str] = frozenset(),
    network: MemoryNetwork | None = None,
) -> dict[str, dict[int, RoundOutcome | BaseException]]:
    net = network or MemoryNetwork()
    keys = signers(peers)
    outcomes: dict[str, dict[int, RoundOutcome | BaseException]] = {p: {} for p in peers}
    registered: set[str] = set()
    all_ready = trio.Event()
    present = [p for p in peers if p not in absent]

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            runner = RingRound(
                transport,
                CONSORTIUM,
                1,
                peers,
                keys[me],
                timing=TIMING,
                ring_config=RING,
                fault=(faults or {}).get(me),
            )
            registered.add(me)
            if len(registered) == len(present):
                all_ready.set()
            await all_ready.wait()
            for r in rounds:
                await trio.sleep((late or {}).get((me, r), 0.0))
                try:
                    outcomes[me][r] = await runner.all_reduce(vectors[me], r)
                except InjectedCrash as exc:
                    outcomes[me][r] = exc
                    return
            # Stay reachable a little so that late messages find us.
            await trio.sleep(TIMING.takeover_timeout)

    async with trio.open_nursery() as nursery:
        for p in present:
            nursery.start_soon(peer, p)
    return outcomes


def total(vectors: dict[str, npt.NDArray[Any]], peers: list[str] | set[str]) -> Any:
    out = np.zeros_like(next(iter(vectors.values())))
    for p in peers:
        out = out + vectors[p]
    return out


def vectors_for(peers: list[str], length: int = 3000) -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(len(peers))
    return {p: rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32) for p in peers}


async def test_a_ready_slower_to_deliver_than_the_window_still_counts_for_the_quorum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """c's Ready takes longer than the collect window to reach coordinator a: its send lasts
    the agreement's patience, and a, short of the quorum of 3, waits for it."""
    peers = ["a", "b", "c"]
    keys, vectors = signers(peers), vectors_for(peers)
    delay = (TIMING.collect_window + TIMING.patience) / 2
    outcomes: dict[str, RoundOutcome] = {}
    net = MemoryNetwork()

    async def peer(me: str, opened: trio.Event) -> None:
        async with net.open(me) as inner:
            transport = SlowOpens(inner, delay, CONTROL_PROTOCOL) if me == "c" else inner
            runner = RingRound(transport, CONSORTIUM, 1, peers, keys[me], timing=TIMING)
            opened.set()
            await everyone.wait()
            outcomes[me] = await runner.all_reduce(vectors[me], 0, quorum=3)
            await trio.sleep(TIMING.takeover_timeout)

    everyone = trio.Event()
    async with trio.open_nursery() as nursery:
        opened = [trio.Event() for _ in peers]
        for name, event in zip(peers, opened, strict=True):
            nursery.start_soon(peer, name, event)
        for event in opened:
            await event.wait()
        everyone.set()
    assert coordinator_of(peers, 0, 0, 0) == "a"
    for name in peers:
        assert outcomes[name].committed and outcomes[name].cohort == tuple(peers), outcomes[name]
        assert outcomes[name].result is not None
        np.testing.assert_array_equal(outcomes[name].result.vector, total(vectors, peers))


def test_transition_table_is_closed_and_final_phases_have_no_exits() -> None:
    assert not [k for k in AGREEMENT_TRANSITIONS if k[0] in FINAL_PHASES]
    reachable = {Phase.IDLE} | set(AGREEMENT_TRANSITIONS.values())
    assert reachable == set(Phase)


def test_coordinator_rotates_with_round_and_takeover() -> None:
    peers = ["a", "b", "c", "d"]
    assert [coordinator_of(peers, r, 0, 0) for r in range(4)] == ["a", "b", "c", "d"]
    assert coordinator_of(peers, 0, 0, 1) == "b"
    assert coordinator_of(list(reversed(peers)), 5, 1, 2) == coordinator_of(peers, 5, 1, 2)


@pytest.mark.parametrize("n", [2, 4, 9])
async def test_round_commits_the_sum_over_everyone(
    n: int, autojump_clock: trio.testing.MockClock
) -> None:
    peers = [f"p{i}" for i in range(n)]
    vectors = vectors_for(peers)
    outcomes = await run_peers(peers, vectors, [0, 1])
    for p in peers:
        for r in (0, 1):
            got = outcomes[p][r]
            assert isinstance(got, RoundOutcome) and got.committed
            assert got.cohort == tuple(peers) and got.attempts == 1
            assert got.result is not None
            np.testing.assert_array_equal(got.result.vector, total(vectors, peers))


async def test_peer_killed_mid_all_reduce_survivors_retry_and_commit_their_sum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [f"p{i}" for i in range(6)]
    vectors = vectors_for(peers)
    net = MemoryNetwork()
    plan = FaultPlan(Fault.CRASH, at=4, on_crash=lambda: net.crash("p2"))
    start = trio.current_time()
    outcomes = await run_peers(peers, vectors, [0], faults={"p2": plan}, network=net)
    survivors = [p for p in peers if p != "p2"]
    for p in survivors:
        got = outcomes[p][0]
        assert isinstance(got, RoundOutcome) and got.committed, got
        assert got.cohort == tuple(survivors) and got.attempts == 2
        assert got.result is not None
        np.testing.assert_array_equal(got.result.vector, total(vectors, survivors))
    assert not isinstance(outcomes["p2"].get(0), RoundOutcome)
    # Detection within the ring timeout, the whole retry within a few timeouts.
    elapsed = trio.current_time() - start - TIMING.takeover_timeout
    assert elapsed < RING.timeout + TIMING.collect_window + TIMING.takeover_timeout + 1


async def test_straggler_is_left_out_and_rejoins_next_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [f"p{i}" for i in range(5)]
    vectors = vectors_for(peers)
    # p4 is not the coordinator of round 0 (p0 is) and arrives after the collect window.
    outcomes = await run_peers(peers, vectors, [0, 1], late={("p4", 0): 1.5})
    on_time = peers[:4]
    for p in on_time:
        got = outcomes[p][0]
        assert isinstance(got, RoundOutcome) and got.committed
        assert got.result is not None
        np.testing.assert_array_equal(got.result.vector, total(vectors, on_time))
    late = outcomes["p4"][0]
    assert isinstance(late, RoundOutcome) and late.phase is Phase.LEFT_OUT
    for p in peers:
        got = outcomes[p][1]
        assert isinstance(got, RoundOutcome) and got.committed
        assert got.result is not None
        np.testing.assert_array_equal(got.result.vector, total(vectors, peers))


async def test_dead_coordinator_is_replaced_by_the_next_in_rotation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [f"p{i}" for i in range(5)]
    vectors = vectors_for(peers)
    # Round 1's first coordinator is p1, which never shows up.
    outcomes = await run_peers(peers, vectors, [1], absent={"p1"})
    alive = [p for p in peers if p != "p1"]
    for p in alive:
        got = outcomes[p][1]
        assert isinstance(got, RoundOutcome) and got.committed
        assert got.cohort == tuple(alive)
        assert got.result is not None
        np.testing.assert_array_equal(got.result.vector, total(vectors, alive))
        # Never silent: every member's outcome names the absent one (the audit log's
        # exclusion): its coordinator (p2, after p1's takeover) for the missing Ready, the
        # others as left out of the cohort. Nobody present is named.
        named = {(e.peer, e.reason) for e in got.exclusions}
        expected = ReasonCode.TIMEOUT if p == "p2" else ReasonCode.DROPPED
        assert named == {("p1", expected)}, got.exclusions


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(Fault.WRONG_SHAPE, ReasonCode.WRONG_SHAPE), (Fault.WRONG_DTYPE, ReasonCode.WRONG_DTYPE)],
)
async def test_misshapen_vector_excludes_its_sender_with_a_reason(
    fault: Fault, reason: ReasonCode, autojump_clock: trio.testing.MockClock
) -> None:
    peers = [f"p{i}" for i in range(5)]
    vectors = vectors_for(peers)
    outcomes = await run_peers(peers, vectors, [0], faults={"p3": FaultPlan(fault, at=2)})
    honest = [p for p in peers if p != "p3"]
    accusers = 0
    for p in honest:
        got = outcomes[p][0]
        assert isinstance(got, RoundOutcome) and got.committed, got
        assert got.cohort == tuple(honest)
        assert got.result is not None
        np.testing.assert_array_equal(got.result.vector, total(vectors, honest))
        accusers += any(e.peer == "p3" and e.reason is reason for e in got.exclusions)
    assert accusers == 1
    bad = outcomes["p3"][0]
    assert isinstance(bad, RoundOutcome) and bad.phase is Phase.LEFT_OUT


def test_protocol_doc_diagrams_match_the_transition_tables() -> None:
    from pathlib import Path

    from p2pfed.collectives.diagram import render_document

    doc = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"
    text = doc.read_text(encoding="utf-8")
    assert text.count("```mermaid") == 3
    assert render_document(text) == text


async def test_slow_peer_mid_ring_times_out_the_attempt_and_rejoins_the_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [f"p{i}" for i in range(4)]
    vectors = vectors_for(peers)
    # p1 stalls past the ring timeout once; silence is no evidence, so it is not excluded.
    plan = FaultPlan(Fault.DELAY, at=2, delay=RING.timeout * 3)
    outcomes = await run_peers(peers, vectors, [0], faults={"p1": plan})
    for p in peers:
        got = outcomes[p][0]
        assert isinstance(got, RoundOutcome) and got.committed, got
        assert got.attempts == 2 and got.cohort == tuple(peers)
        assert got.result is not None
        np.testing.assert_array_equal(got.result.vector, total(vectors, peers))
    timeouts = [
        e
        for p in peers
        for e in outcomes[p][0].exclusions  # type: ignore[union-attr]
        if e.reason is ReasonCode.TIMEOUT
    ]
    assert any(e.peer == "p1" for e in timeouts)


async def test_control_messages_for_finished_rounds_and_replayed_frames_are_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from p2pfed.collectives.codec import encode
    from p2pfed.collectives.messages import Abort, Done
    from p2pfed.collectives.round import CONTROL_PROTOCOL

    peers = ["a", "b"]
    keys = signers(peers)
    net = MemoryNetwork()
    vector = np.ones(8, np.uint32)
    async with net.open("a") as a, net.open("b") as b:
        ra = RingRound(a, CONSORTIUM, 1, peers, keys["a"], timing=TIMING, ring_config=RING)
        rb = RingRound(b, CONSORTIUM, 1, peers, keys["b"], timing=TIMING, ring_config=RING)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ra.all_reduce, vector, 4)
            nursery.start_soon(rb.all_reduce, vector, 4)
        # A late Abort for round 4 and an Abort for round 2 (long over) from b.
        await rb.control.send("a", Abort(4, 0, "a", "timeout"))
        await rb.control.send("a", Abort(2, 0, "a", "timeout"))
        reasons = [(e.round, e.peer, e.reason) for e in ra.control.exclusions]
        assert (4, "b", ReasonCode.WRONG_ROUND) in reasons
        assert (2, "b", ReasonCode.WRONG_ROUND) in reasons
        # The same frame twice on one stream: the second is a replay.
        stream = await b.open_stream("a", CONTROL_PROTOCOL)
        frame, _ = encode(Done(5, 0), CONSORTIUM, "b", 0)
        await stream.send_all(frame + frame)
        await stream.send_eof()
        assert await stream.receive_some() == b""
        assert ra.control.exclusions[-1].reason is ReasonCode.REPLAY


def test_a_ring_outcome_after_its_attempt_is_over_changes_nothing() -> None:
    """The agreement, not the driver, decides that a late ring outcome no longer counts."""
    keys = signers(["a", "b"])
    agreement = RoundAgreement("a", CONSORTIUM, 2, ["a", "b"], keys["a"])
    agreement.start(0.0)
    assert agreement.coordinator == "a"
    actions = agreement.tick(agreement.deadline or 0.0)  # b never answers: a cohort of one
    assert StartRing(0, ("a",)) in actions and agreement.phase is Phase.RUNNING
    # An outcome for an attempt that is not the one running is ignored, whatever it says.
    assert agreement.ring_done(1, 3.0) == []
    assert agreement.ring_failed(1, "b", ReasonCode.WRONG_SHAPE, 3.0) == []
    assert agreement.phase is Phase.RUNNING and agreement.attempt == 0
    # The running attempt's failure moves on; its late success then counts for nothing.
    failed = agreement.ring_failed(0, None, ReasonCode.TIMEOUT, 4.0)
    assert StartRing(1, ("a",)) in failed and agreement.phase is Phase.RUNNING
    assert agreement.ring_done(0, 5.0) == []
    assert agreement.attempt == 1 and agreement.phase is Phase.RUNNING
    # Only the running attempt's own success reports, and (alone in it) commits.
    agreement.ring_done(1, 6.0)
    assert agreement.phase is Phase.COMMITTED
