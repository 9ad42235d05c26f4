"""A member that cannot join a round spends no privacy budget on it, and says why it waits."""

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import p2pfed.node.peer as peer_module
from p2pfed.daemon import RoundReporter, read_status
from p2pfed.errors import ConfigError
from p2pfed.node import Peer
from p2pfed.node.liveness import Backoff, Waiting, slot_wait
from p2pfed.training import ParameterLayout
from tests.reporter_fakes import demo_member
from tests.test_node import Consortium


async def test_a_member_alone_spends_no_epsilon(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The attack (or failure): every other member is down. The lone member attempts round
    # after round; no cohort ever forms, so nothing may be charged to its ledger.
    c = Consortium(tmp_path, 3, virtual_clock=True)
    async with c.peer(0) as peer:
        for _ in range(3):
            report = await peer.run_round()
            assert not report.committed
        assert peer.next_round == 3  # three attempts, each a new round number
        assert c.ledgers[0].records == ()
        assert peer.epsilon == 0.0


async def test_two_of_three_below_the_sum_floor_spend_no_epsilon(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Two members up, but a sum needs three (min_survivors): they exchange keys and shares,
    # yet no sum can complete, so neither makes (nor is charged for) its release.
    c = Consortium(tmp_path, 3, virtual_clock=True)
    reports = {}
    async with c.peer(0) as a, c.peer(1) as b, trio.open_nursery() as nursery:

        async def go(k: int, peer: Peer) -> None:
            reports[k] = await peer.run_round()

        nursery.start_soon(go, 0, a)
        nursery.start_soon(go, 1, b)
    assert not reports[0].committed and not reports[1].committed
    assert "advertised keys" in reports[0].reason
    assert c.ledgers[0].records == () and c.ledgers[1].records == ()


async def test_a_member_alone_says_whom_it_waits_for(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    c = Consortium(tmp_path, 3, virtual_clock=True)
    waits: list[Waiting] = []
    async with c.peer(0) as peer:
        peer.on_wait = waits.append
        with trio.move_on_after(60):
            await peer.run(5, startup_timeout=5.0)
        assert peer.next_round == 0  # never started a round: nobody to form a cohort with
    assert waits and all(set(w.missing) == set(peer.others) for w in waits)
    assert "1 of 3 members reachable, 2 needed" in waits[-1].reason
    assert c.ledgers[0].records == ()


@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.01, 5.0),
    st.floats(1.0, 100.0),
    st.integers(1, 40),
)
def test_backoff_delays_are_bounded_and_grow_no_faster_than_doubling(
    seed: int, base: float, spread: float, n: int
) -> None:
    cap = base * spread
    backoff = Backoff(base, cap, random.Random(seed))
    for k in range(n):
        delay = backoff.next()
        assert base <= delay <= cap
        assert delay <= base * 2 ** (k + 1) + 1e-9
    backoff.reset()
    assert backoff.next() <= 2 * base


@given(st.floats(0.01, 5.0), st.integers(0, 10))
def test_backoff_is_jittered_across_members(base: float, k: int) -> None:
    # Members that failed together draw different delays for the same retry: no lock-step.
    delays = set()
    for seed in range(8):
        backoff = Backoff(base, 100 * base, random.Random(seed))
        for _ in range(k):
            backoff.next()
        delays.add(backoff.next())
    assert len(delays) > 1


def test_backoff_refuses_a_cap_below_its_base() -> None:
    with pytest.raises(ConfigError, match="base <= cap"):
        Backoff(2.0, 1.0, random.Random(0))


def test_waiting_is_in_status_and_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, prepared, recorder = demo_member(tmp_path)
    roster = prepared.gate.roster
    layout = ParameterLayout(("w",), ((2,),))
    status: dict[str, object] = {"state": "running"}
    reporter = RoundReporter(prepared, status, recorder, None, layout)
    others = [m for m in roster.members if m.peer_id != prepared.identity.peer_id]
    missing = tuple(m.peer_id for m in others)
    with caplog.at_level(logging.WARNING, "p2pfed.daemon"):
        for r in range(5):  # a member alone: a missed round every few seconds
            wait = Waiting(12 + r, f"round {11 + r} missed (aborted)", missing, 4.0)
            reporter.waiting(wait, now=1000.0 + 3 * r)
    written = read_status(prepared.state_dir)
    assert written is not None
    assert written["waiting"]["missing"] == [m.name for m in others]
    assert written["waiting"]["round"] == 16
    assert written["waiting"]["since"] == 1000.0
    lines = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    names = ", ".join(m.name for m in others)
    assert lines == [
        f"round 12: waiting for {names} (not answering): round 11 missed (aborted); retry in 4 s"
    ]
    reporter.waiting(Waiting(40, "round 39 missed (aborted)", missing, 4.0), now=1031.0)
    recorder.stop(reason="finished")
    assert len([r for r in caplog.records if "waiting" in r.getMessage()]) == 2
    np.testing.assert_equal(written["waiting"]["retry_in_s"], 4.0)


async def test_members_a_round_number_apart_realign(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a disturbance one member is a round number behind the two others: a secure
    # round needs all three on one number, and each missed round kept the gap. Messages
    # from the members ahead show the one behind where to go.
    c = Consortium(tmp_path, 3, virtual_clock=True)
    done: dict[int, Peer] = {}
    took: list[float] = []  # what each wait after a miss knew of how long the miss lasted

    def recorded(now: float, slot: float, lasted: float = 0.0) -> float:
        took.append(lasted)
        return slot_wait(now, slot, lasted)

    monkeypatch.setattr(peer_module, "slot_wait", recorded)

    async def one(k: int) -> None:
        async with c.peer(k) as peer:
            peer.wall = trio.current_time  # the shared clock of the slot boundaries
            peer.next_round = 1 if k else 0
            reports = await peer.run(6, startup_timeout=5.0, miss_timeout=10.0)
            assert sum(r.committed for r in reports) >= 3
            done[k] = peer

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            for k in range(3):
                nursery.start_soon(one, k)
    assert {p.model_round for p in done.values()} == {5}
    assert len({p.weights.tobytes() for p in done.values()}) == 1
    assert took and all(t > 0 for t in took)  # slot_wait heard each missed round's duration
