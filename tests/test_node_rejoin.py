"""A member (re)starting while the others retry missed rounds joins their round at once."""

import struct
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pfed.errors import RemoteProtocolError
from p2pfed.node import Peer
from p2pfed.node.sync import ModelStatus, ModelSync, Progress
from tests.test_node import Consortium

SLOT = 10.0


async def test_a_restarted_member_joins_the_retrying_others_without_a_round_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Two of three are up; a secure sum needs three, so they miss round after round, each
    # attempt at a slot boundary with a new number. The third starts late: it must take
    # their number and boundary at once, not spend a lone round (and a slot) learning it.
    c = Consortium(tmp_path, 3, virtual_clock=True)
    reports: dict[int, list] = {}
    up: dict[int, Peer] = {}

    async def one(k: int, rounds: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with c.peer(k) as peer:
            # The shared clock of the slot boundaries; the late member's runs 0.25 s ahead,
            # so its first messages reach the others just before the boundary they share.
            peer.wall = (lambda: trio.current_time() + 0.25) if k == 0 else trio.current_time
            up[k] = peer
            task_status.started()
            reports[k] = await peer.run(rounds, startup_timeout=5.0, miss_timeout=SLOT)

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            for k in (1, 2):
                await nursery.start(one, k, 12)
            while min(up[k].next_round for k in (1, 2)) < 4:  # virtual time: no real wait
                await trio.sleep(0.5)
            nursery.start_soon(one, 0, 12)
    missed = {r.round for k in (1, 2) for r in reports[k] if not r.committed}
    assert {0, 1, 2, 3} <= missed  # they were retrying when it started
    first = reports[0][0]
    assert first.committed and first.round >= 4, (first.round, first.reason)
    assert all(r.committed for r in reports[0])
    assert {p.model_round for p in up.values()} == {11}
    assert len({p.weights.tobytes() for p in up.values()}) == 1


async def test_a_stolen_key_claiming_a_far_round_does_not_move_a_starting_member(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The attack: a member's stolen key answers status probes claiming it retries round
    # 10^9. Followed, the starting member would jump past its last round and train no
    # more. One honest member retrying round 6 answers too: the starting member takes 6.
    c = Consortium(tmp_path, 3, virtual_clock=True)
    size = 30 * 2 + 2  # the logistic model's shared weights
    weights = np.zeros(size, np.float32)
    stop = trio.Event()

    async def claims(k: int, progress: Progress, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with c.net.open(c.ids[k].peer_id) as transport:
            ModelSync(transport, "test", lambda: (1, weights, None), size, progress=progress)
            task_status.started()
            await stop.wait()

    async with trio.open_nursery() as nursery:
        now = trio.current_time()
        await nursery.start(claims, 1, lambda: (6, False, now + 3.0))
        await nursery.start(claims, 2, lambda: (10**9, False, now + 1e6))
        async with c.peer(0) as peer:
            peer.wall = trio.current_time
            await peer.join_in_step(SLOT, 40)
            assert peer.next_round == 6
            assert trio.current_time() == pytest.approx(now + 3.0)  # its boundary, not later
        stop.set()


@given(
    st.integers(-1, 2**40),
    st.binary(min_size=32, max_size=32),
    st.integers(1, 2**40),
    st.booleans(),
    st.floats(0.0, 1e12),
)
def test_a_status_survives_its_encoding_and_says_whether_it_retries(
    round_: int, digest: bytes, ahead: int, running: bool, starts_at: float
) -> None:
    status = ModelStatus(round_, digest, round_ + ahead, running, starts_at)
    assert ModelStatus.decode(status.encode(), "p") == status
    current = round_ + ahead - 1 if running else round_ + ahead
    assert status.retrying == (current > round_ + 1)
    assert ModelStatus(round_, digest).starts_next == round_ + 1


@pytest.mark.parametrize("next_round", [-1, 0, 5])
def test_a_status_whose_next_round_does_not_follow_its_model_is_malformed(
    next_round: int,
) -> None:
    good = ModelStatus(5, bytes(32), 9).encode()
    bad = good[:40] + next_round.to_bytes(8, "big", signed=True) + good[48:]
    with pytest.raises(RemoteProtocolError, match="bad rounds in status from p: completed 5"):
        ModelStatus.decode(bad, "p")
    with pytest.raises(RemoteProtocolError, match="bad rounds"):
        ModelStatus.decode(good[:48] + b"\x02" + good[49:], "p")  # running is a flag
    for when in (float("nan"), float("inf"), -1.0):
        with pytest.raises(RemoteProtocolError, match="bad start time in status from p"):
            ModelStatus.decode(good[:49] + struct.pack(">d", when), "p")
