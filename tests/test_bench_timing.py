"""The one benchmark clock: best_of keeps the fastest run, timed records wall and CPU."""

from __future__ import annotations

import pytest

from p2pfed.bench import _timing
from p2pfed.bench._timing import best_of, timed
from p2pfed.errors import ConfigError


class FakeClock:
    """perf_counter and process_time reading from fixed lists, one value per call."""

    def __init__(self, wall: list[float], cpu: list[float]) -> None:
        self.wall, self.cpu = iter(wall), iter(cpu)

    def perf_counter(self) -> float:
        return next(self.wall)

    def process_time(self) -> float:
        return next(self.cpu)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock([0, 5, 10, 12, 20, 27], [0, 1])
    monkeypatch.setattr(_timing.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(_timing.time, "process_time", fake.process_time)
    return fake


def test_best_of_keeps_the_fastest_run_and_the_last_value(clock: FakeClock) -> None:
    calls = iter(["first", "second", "third"])
    best = best_of(3, lambda: next(calls))
    assert best.seconds == 2  # runs of 5, 2 and 7 s
    assert best.value == "third"


def test_timed_records_wall_and_cpu_even_when_the_block_raises(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError), timed() as t:
        raise RuntimeError("the case failed")
    assert (t.wall, t.cpu) == (5, 1)


def test_best_of_refuses_zero_repeats() -> None:
    with pytest.raises(ConfigError, match="at least one repeat, got 0"):
        best_of(0, lambda: None)
