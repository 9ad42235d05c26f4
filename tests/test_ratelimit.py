"""The stream rate limiter's core: token buckets, their bound, bookkeeping and notices."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.collectives.gossip_driver import GOSSIP_SYNC_PROTOCOL, PUSH_PULL_PROTOCOL
from p2pfed.collectives.ring_driver import RING_PROTOCOL
from p2pfed.collectives.round import CONTROL_PROTOCOL
from p2pfed.collectives.secure import SECAGG_PROTOCOL
from p2pfed.collectives.secure_gossip import MASKED_SUM_PROTOCOL, SECURE_GOSSIP_PROTOCOL
from p2pfed.errors import ConfigError
from p2pfed.node.certify import CERT_PROTOCOL
from p2pfed.node.roster_sync import ROSTER_PROTOCOL
from p2pfed.node.sync import MODEL_SYNC_PROTOCOL
from p2pfed.transport.dialback import DIALBACK_PROTOCOL
from p2pfed.transport.ratelimit import (
    DEFAULT_LIMITS,
    FALLBACK,
    Limit,
    StreamLimiter,
    TokenBucket,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


limits = st.builds(
    Limit,
    rate=st.floats(min_value=0.01, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=200),
)
gaps = st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200)


@settings(max_examples=100, deadline=None)
@given(limit=limits, gaps=gaps)
def test_admitted_streams_in_any_window_stay_within_burst_plus_rate_times_window(
    limit: Limit, gaps: list[float]
) -> None:
    bucket = TokenBucket(limit, 0.0)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now):
            admitted.append(now)
    # Window [admitted[i], admitted[j]] holds j - i + 1 admitted arrivals, so the bound for
    # every i <= j reads (j - rate·a_j) - (i - rate·a_i) <= burst - 1: one pass suffices.
    lowest = float("inf")
    for j, at in enumerate(admitted):
        lowest = min(lowest, j - limit.rate * at)
        assert (j - limit.rate * at) - lowest <= limit.burst - 1 + 1e-6 * (1 + limit.rate * at)


@settings(max_examples=100, deadline=None)
@given(limit=limits, drained=st.integers(min_value=0, max_value=250))
def test_an_idle_bucket_refills_to_its_whole_burst(limit: Limit, drained: int) -> None:
    bucket = TokenBucket(limit, 0.0)
    for _ in range(drained):
        bucket.take(0.0)
    later = limit.burst / limit.rate + 1e-6
    assert all(bucket.take(later) for _ in range(limit.burst))
    assert not bucket.take(later)


def test_a_clock_that_steps_back_refills_nothing() -> None:
    bucket = TokenBucket(Limit(rate=1.0, burst=1), 10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(
    ("rate", "burst", "words"),
    [
        (0.0, 1, "rate must be a positive number"),
        (float("nan"), 1, "rate must be a positive number"),
        (float("inf"), 1, "rate must be a positive number"),
        (1.0, 0, "burst must be an integer >= 1"),
        (1.0, 1.5, "burst must be an integer >= 1"),
    ],
)
def test_bad_limits_are_refused_with_one_sentence(rate: float, burst: int, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Limit(rate=rate, burst=burst)


def test_limiter_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="at least 1 peer"):
        StreamLimiter(max_peers=0)
    with pytest.raises(ConfigError, match="log_interval"):
        StreamLimiter(log_interval=-1.0)


def test_every_protocol_the_peer_serves_has_a_default_limit() -> None:
    served = {
        RING_PROTOCOL,
        PUSH_PULL_PROTOCOL,
        GOSSIP_SYNC_PROTOCOL,
        MASKED_SUM_PROTOCOL,
        SECURE_GOSSIP_PROTOCOL,
        SECAGG_PROTOCOL,
        CONTROL_PROTOCOL,
        CERT_PROTOCOL,
        MODEL_SYNC_PROTOCOL,
        ROSTER_PROTOCOL,
        DIALBACK_PROTOCOL,
    }
    assert set(DEFAULT_LIMITS) == served
    for limit in DEFAULT_LIMITS.values():
        assert limit.why and limit.rate < FALLBACK.rate


def test_buckets_are_per_peer_and_per_protocol() -> None:
    clock = FakeClock()
    limiter = StreamLimiter({"/a": Limit(rate=1.0, burst=2)}, clock=clock)
    assert [limiter.admit("p", "/a") for _ in range(3)] == [True, True, False]
    assert limiter.admit("q", "/a")  # another peer has its own bucket
    assert limiter.admit("p", "/other")  # another protocol too (the fallback limit)
    clock.now = 1.0
    assert limiter.admit("p", "/a") and not limiter.admit("p", "/a")
    assert limiter.refused_by_peer("p") == 2 and limiter.refused_by_peer("q") == 0
    assert limiter.refused_total == 2 and limiter.refused_by_protocol == {"/a": 2}


def test_tracked_peers_are_bounded_and_the_least_recent_is_forgotten() -> None:
    limiter = StreamLimiter({"/a": Limit(rate=1.0, burst=1)}, clock=FakeClock(), max_peers=3)
    for peer in ("p0", "p1", "p2", "p0", "p3"):
        limiter.admit(peer, "/a")
    assert limiter.tracked_peers == 3
    assert limiter.refused_by_peer("p0") == 1  # seen again, so kept
    assert not limiter.admit("p0", "/a")
    assert limiter.admit("p1", "/a")  # forgotten: its bucket starts full again


def test_a_flooder_is_named_once_per_interval_and_every_refusal_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    seen: list[tuple[str, str]] = []
    limiter = StreamLimiter(
        {"/a": Limit(rate=1.0, burst=1)},
        clock=clock,
        log_interval=60.0,
        on_refuse=lambda peer, protocol: seen.append((peer, protocol)),
    )
    caplog.set_level(logging.WARNING, logger="p2pfed.transport.ratelimit")
    for _ in range(1000):
        limiter.admit("flooder", "/a")
    clock.now = 30.0
    for _ in range(1000):
        limiter.admit("flooder", "/a")
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "peer flooder opens /a streams" in notices[0]
    assert len(seen) == limiter.refused_by_peer("flooder") == 999 + 999
    clock.now = 61.0
    for _ in range(10):
        limiter.admit("flooder", "/a")
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 2 and "refused 1998 since the last notice, 1999 in all" in notices[1]


def test_the_limits_table_in_the_transport_docs_is_the_code() -> None:
    text = (Path(__file__).parent.parent / "docs" / "transport.md").read_text()
    rows = re.findall(r"^\| `(/p2pfed/[^`]+)` \| ([\d.]+) \| (\d+) \| (.+) \|$", text, re.M)
    assert {p: (float(r), int(b), why) for p, r, b, why in rows} == {
        p: (limit.rate, limit.burst, limit.why) for p, limit in DEFAULT_LIMITS.items()
    }
