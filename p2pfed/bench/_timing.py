"""The one benchmark clock: best-of-N wall time, and a timer that records wall and CPU.

Theory of operation: on a shared machine the fastest of several runs is the least disturbed
estimate of a piece of code's own cost, so every benchmark keeps the minimum (``best_of``,
wall seconds by ``time.perf_counter`` and nothing else inside the timed window). ``timed``
measures one block: wall seconds, and this process's CPU seconds by ``time.process_time``
(read outside the wall window), both set when the block ends, even if it raises. The
leading underscore keeps this module out of the ``p2pfed bench`` sub-commands.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from p2pfed.errors import ConfigError

T = TypeVar("T")


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` so far (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def round_ends(state: Path) -> list[dict[str, Any]]:
    """The ``round_end`` entries of a member's audit log (with their ``ts``), in order."""
    ends = []
    for line in (state / "audit.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "round_end":
            ends.append(entry)
    return ends


def stage_pairs(stages: Any) -> list[tuple[str, float]]:
    """A round's ``stages_s`` as (name, seconds) pairs (the audit log stores a list of pairs)."""
    if isinstance(stages, dict):
        return [(str(k), float(v)) for k, v in stages.items()]
    return [(str(k), float(v)) for k, v in stages or ()]


@dataclass
class Timer:
    """What ``timed`` measured: wall and CPU seconds of the block (0 until it ends)."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed() -> Iterator[Timer]:
    """A ``Timer`` for the block it wraps; its wall and CPU seconds are set when it ends."""
    timer = Timer()
    # The wall clock is read innermost: process_time is a system call here, not a vDSO read,
    # and inside the wall window it would cost a 4 MiB memcpy half its measured rate.
    cpu = time.process_time()
    wall = time.perf_counter()
    try:
        yield timer
    finally:
        timer.wall = time.perf_counter() - wall
        timer.cpu = time.process_time() - cpu


class Best(NamedTuple, Generic[T]):
    """The fastest wall seconds of ``best_of``'s calls, and the last call's value."""

    seconds: float
    value: T


def best_of(repeats: int, case: Callable[[], T]) -> Best[T]:
    """Call ``case`` ``repeats`` times; its fastest wall time and its last value."""
    if repeats < 1:
        raise ConfigError(f"a benchmark needs at least one repeat, got {repeats}")
    best = float("inf")
    for _ in range(repeats - 1):
        start = time.perf_counter()  # wall time only: nothing else inside the window
        # The result is dropped at once: held until the next call, a large one would make
        # that call allocate fresh memory (a 4 MiB copy ran at half its rate).
        case()
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    value = case()
    return Best(min(best, time.perf_counter() - start), value)
