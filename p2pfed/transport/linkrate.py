"""Per-peer receive throughput, measured passively from the reads themselves (sans-I/O).

Theory of operation: the transport tells ``LinkMeter.received`` how many bytes each read
from a peer returned. Reads that follow each other within ``idle_gap_s`` form one burst; a
longer pause ends it (the sender had nothing to send, so that time says nothing about the
link). A burst's rate is the bytes after its first read over the time from its first read
to its last: the first read's bytes were already on their way before the clock started.
Only a burst that moved at least ``min_bytes`` counts; below that a burst measures round
trips and scheduling, not the link. ``rate`` is the latest counted burst's rate, the burst
under way taking over as soon as it counts.

What it is: the rate this member actually received at from that peer while a transfer was
under way, pauses shorter than ``idle_gap_s`` included. It is a lower bound on what the
link can carry (a sender that computes between chunks, or a busy receiver, lowers it), and
it costs no probe traffic: a consortium whose updates never reach ``min_bytes`` in one
burst has no figure, which the status says rather than guessing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

IDLE_GAP_S = 0.25
"""A pause between reads longer than this ends a burst."""

MIN_BURST_BYTES = 1 << 20
"""A burst counts as a measurement of the link from this many bytes on."""


@dataclass(slots=True)
class _Burst:
    start: float
    last: float
    bytes: int = 0  # after the first read

    def rate(self, min_bytes: int) -> float | None:
        span = self.last - self.start
        return self.bytes / span if self.bytes >= min_bytes and span > 0 else None


class LinkMeter:
    """Receive throughput per peer, in bytes per second; see the module docstring."""

    def __init__(
        self,
        *,
        idle_gap_s: float = IDLE_GAP_S,
        min_bytes: int = MIN_BURST_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(idle_gap_s) and idle_gap_s > 0):
            raise ValueError(f"idle_gap_s must be a positive number of seconds, got {idle_gap_s}")
        if min_bytes < 1:
            raise ValueError(f"min_bytes must be at least 1, got {min_bytes}")
        self.idle_gap_s = idle_gap_s
        self.min_bytes = min_bytes
        self._clock = clock
        self._bursts: dict[str, _Burst] = {}
        self._rates: dict[str, float] = {}  # peer -> the latest counted burst's rate

    def received(self, peer: str, n: int) -> None:
        """A read from ``peer`` returned ``n`` bytes just now."""
        if n <= 0:
            return
        now = self._clock()
        burst = self._bursts.get(peer)
        if burst is None or now - burst.last > self.idle_gap_s:
            if burst is not None:
                self._finish(peer, burst)
            self._bursts[peer] = _Burst(now, now)
            return
        burst.bytes += n
        burst.last = now

    def rate(self, peer: str) -> float | None:
        """Bytes per second received from ``peer`` in its latest counted burst, or None."""
        burst = self._bursts.get(peer)
        current = burst.rate(self.min_bytes) if burst is not None else None
        return current if current is not None else self._rates.get(peer)

    def _finish(self, peer: str, burst: _Burst) -> None:
        rate = burst.rate(self.min_bytes)
        if rate is not None:
            self._rates[peer] = rate
