"""Stage deadlines follow the measured round cost between a floor and a configurable ceiling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pfed.config import RoundsSection
from p2pfed.errors import ConfigError
from p2pfed.node.aggregators import Aggregate, Missed, Update
from p2pfed.node.deadlines import DeadlinePolicy, PacedAggregator
from p2pfed.node.liveness import PendingRelease

MB = 1_000_000


def policy(**kw: float) -> DeadlinePolicy:
    args = {"floor_s": 10.0, "ceiling_s": 600.0, "assumed_rate": 12.5 * MB} | kw
    return DeadlinePolicy(**args)  # type: ignore[arg-type]


def test_a_small_model_keeps_the_floor_and_a_big_one_gets_more_than_the_old_cap() -> None:
    p = policy()
    assert p.stage_timeout(2 * 31 * 4) == 10.0  # the demo's logistic regression
    # 10 M float32 parameters sent twice at 100 Mbit/s: 6.4 s of transfer, ×3 slack.
    assert p.stage_timeout(2 * 40 * MB) == pytest.approx(19.2)
    p.observe(busy_s=30.0, bytes_sent=80 * MB, aggregate_s=8.0)  # DP-SGD training took 30 s
    assert p.stage_timeout(80 * MB) == pytest.approx(3 * (30.0 + 8.0))
    assert policy(ceiling_s=60.0).stage_timeout(10**12) == 60.0


def test_a_round_that_waited_for_a_crashed_member_does_not_stretch_the_next_deadline() -> None:
    p = policy(floor_s=1.0)
    for _ in range(3):
        p.observe(busy_s=1.0, bytes_sent=80 * MB, aggregate_s=2.0)
    before = p.stage_timeout(80 * MB)
    p.observe(busy_s=1.0, bytes_sent=80 * MB, aggregate_s=600.0)  # the whole stage waited
    assert p.stage_timeout(80 * MB) == before == pytest.approx(3 * (1.0 + 2.0))


@given(
    floor=st.floats(0.1, 100),
    extra=st.floats(0, 1000),
    size=st.integers(0, 10**11),
    busy=st.floats(-1, 1e4),
    sent=st.integers(0, 10**10),
    took=st.floats(0, 1e4),
)
def test_the_deadline_stays_within_floor_and_ceiling_and_grows_with_the_update(
    floor: float, extra: float, size: int, busy: float, sent: int, took: float
) -> None:
    p = policy(floor_s=floor, ceiling_s=floor + extra)
    p.observe(busy, sent, took)
    t = p.stage_timeout(size)
    assert floor <= t <= floor + extra
    assert p.stage_timeout(size + 10**9) >= t


def test_bad_bounds_are_refused_with_a_sentence() -> None:
    with pytest.raises(ConfigError, match="floor ≤ ceiling"):
        policy(floor_s=20.0, ceiling_s=10.0)
    with pytest.raises(ConfigError, match=r"\[rounds\] stage_timeout_max_s"):
        RoundsSection(stage_timeout_min_s=50.0, stage_timeout_max_s=20.0).validate()
    with pytest.raises(ConfigError, match=r"\[rounds\] link_mbps"):
        RoundsSection(link_mbps=0.0).validate()


def test_the_config_lifts_the_old_cap() -> None:
    default = RoundsSection()
    assert (default.stage_floor_s, default.stage_ceiling_s) == (10.0, 120.0)
    assert RoundsSection(round_timeout_s=24.0).stage_floor_s == 6.0
    lifted = RoundsSection(stage_timeout_max_s=900.0)
    assert lifted.stage_ceiling_s == 900.0
    RoundsSection(stage_timeout_min_s=30.0, round_timeout_s=20.0).validate()  # ceiling follows


@dataclass
class Service:
    stage_timeout: float = 1.0

    def pace(self, stage_timeout: float) -> None:
        self.stage_timeout = stage_timeout


@dataclass
class Inner:
    """An aggregator that takes ``costs[i]`` seconds of the fake clock for round ``i``."""

    clock: list[float]
    costs: list[float]
    seen: list[float] = field(default_factory=list)
    service: Service = field(default_factory=Service)
    secure = True
    exact = True
    guaranteed_contributors = 3

    def newest_round_seen(self) -> int:
        return -1

    async def aggregate(
        self, round: int, update: Update, weights: np.ndarray, base: object = None
    ) -> Aggregate | Missed:
        self.seen.append(self.service.stage_timeout)
        self.clock[0] += self.costs[round]
        await trio.lowlevel.checkpoint()
        if round == 2:
            return Missed(round, "too few survivors")
        return Aggregate(round, weights, frozenset({"a"}), 40 * MB, ())


def test_each_round_runs_under_the_deadline_its_measured_predecessors_give() -> None:
    clock = [0.0]
    inner = Inner(clock, costs=[4.0, 2.0, 50.0, 2.0])
    p = policy(floor_s=1.0)
    paced = PacedAggregator(inner, inner.service, p, 40 * MB, lambda: clock[0])
    assert (paced.secure, paced.exact, paced.guaranteed_contributors) == (True, True, 3)
    trained = [5.0, 5.0, 5.0, 5.0]

    async def rounds() -> None:
        for r in range(4):
            update = PendingRelease(None, None, r, np.zeros(2, np.float32), 1.0, 1, trained[r])
            await paced.aggregate(r, update, np.zeros(2, np.float32))

    trio.run(rounds)
    # Nothing measured yet: the assumed rate, and this round's own 5 s of training.
    assert inner.seen[0] == pytest.approx(3 * (5.0 + 40 * MB / (12.5 * MB)))
    assert inner.seen[1] == pytest.approx(3 * (5.0 + 4.0))  # 10 MB/s measured, 5 s training
    assert inner.seen[2] == pytest.approx(3 * (5.0 + 2.0))  # 20 MB/s
    # The missed round's 50 s were a wait for the others: the deadline does not grow.
    assert inner.seen[3] == pytest.approx(3 * (5.0 + 2.0))


def test_the_first_round_is_stretched_by_its_own_training_time() -> None:
    p = policy()  # nothing measured: a DP-SGD round whose training took 30 s
    assert p.stage_timeout(2 * 40 * MB, busy_now=30.0) == pytest.approx(3 * (30.0 + 6.4))
    assert p.stage_timeout(2 * 40 * MB, busy_now=-1.0) == pytest.approx(3 * 6.4)  # unknown
    p.observe(busy_s=50.0, bytes_sent=0, aggregate_s=1.0)
    assert p.stage_timeout(2 * 40 * MB, busy_now=30.0) == pytest.approx(3 * (50.0 + 6.4))


def test_a_small_models_slow_round_is_latency_not_rate_and_keeps_the_floor() -> None:
    # The demo model: 500 bytes in a second of round trips under load is not a 500 B/s link.
    p = policy(floor_s=6.0)
    p.observe(busy_s=0.05, bytes_sent=500, aggregate_s=3.0)
    assert p.stage_timeout(2 * 62 * 4) == 6.0
