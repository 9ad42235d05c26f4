"""``LinkMeter``: a burst's rate is its bytes over its busy time; pauses and small bursts are not
the link. Property tests on an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfed.transport.linkrate import LinkMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def meter(**kwargs: float) -> tuple[LinkMeter, Clock]:
    clock = Clock()
    return LinkMeter(clock=clock, **kwargs), clock  # type: ignore[arg-type]


reads = st.lists(st.tuples(st.integers(1, 1 << 20), st.floats(1e-6, 0.2)), min_size=2, max_size=60)


@given(reads)
def test_a_burst_rate_is_its_bytes_after_the_first_read_over_its_span(burst: list) -> None:
    m, clock = meter(min_bytes=1)
    for n, gap in burst:
        clock.now += gap
        m.received("p", n)
    span = sum(gap for _, gap in burst[1:])
    assert m.rate("p") == pytest.approx(sum(n for n, _ in burst[1:]) / span)


@given(reads, st.floats(0.26, 3600.0), reads)
def test_a_pause_between_two_transfers_does_not_lower_the_rate(
    first: list, pause: float, second: list
) -> None:
    m, clock = meter(min_bytes=1)
    for burst in (first, second):
        for n, gap in burst:
            clock.now += gap
            m.received("p", n)
        clock.now += pause
    # The latest burst's own rate: the pause counted nowhere.
    span = sum(gap for _, gap in second[1:])
    assert m.rate("p") == pytest.approx(sum(n for n, _ in second[1:]) / span)


def test_a_burst_too_small_to_measure_the_link_keeps_the_last_figure() -> None:
    m, clock = meter()
    assert m.rate("p") is None  # nothing received yet: no figure, not zero
    for _ in range(33):  # 32 MiB after the first read, one MiB every 10 ms: 100 MiB/s
        clock.now += 0.01
        m.received("p", 1 << 20)
    assert m.rate("p") == pytest.approx((1 << 20) / 0.01)
    clock.now += 5.0
    for _ in range(4):  # a control message or two, after a pause: round trips, not the link
        clock.now += 0.05
        m.received("p", 200)
    assert m.rate("p") == pytest.approx((1 << 20) / 0.01)
    assert m.rate("q") is None  # per peer


def test_empty_reads_and_bad_settings() -> None:
    m, clock = meter(min_bytes=1)
    m.received("p", 10)
    clock.now += 0.1
    m.received("p", 0)  # the end of a stream moves nothing
    assert m.rate("p") is None
    with pytest.raises(ValueError, match="idle_gap_s must be a positive"):
        LinkMeter(idle_gap_s=0)
    with pytest.raises(ValueError, match="min_bytes must be at least 1"):
        LinkMeter(min_bytes=0)
