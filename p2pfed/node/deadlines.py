"""Stage deadlines from what a round actually costs, not from a constant.

Theory of operation: a secure-aggregation stage waits for every member's message or its
deadline. Too short and a big model, a slow link or a long local training step fails every
round; too long and a crashed member stalls the others. So each round's stage deadline is

    clamp(slack × (busy_s + update_bytes / rate), floor_s, ceiling_s)

where ``busy_s`` is the longest local training of the recent rounds and of this one (the
members train before they send their first message, so the spread between the first and the
last arrival is of that order; a DP-SGD step that takes 30 s must not meet a 10 s deadline,
in the first round either, before anything has been measured), and ``rate``
is the best aggregation throughput (bytes this peer sent per second of aggregation) seen over
the recent rounds, or ``assumed_rate`` before the first measurement. The best, not the mean,
because a round that waited for a crashed member measures the wait, not the link: averaging
it in would stretch the next deadline, which would stretch the next wait. ``floor_s`` keeps
small models at the old fixed deadline; ``ceiling_s`` is a configuration setting with no
upper limit of its own (no hard cap a big model cannot lift).

``DeadlinePolicy`` is pure (numbers in, seconds out); ``PacedAggregator`` is the layer that
feeds it one measurement per round and paces the wrapped service: its ``stage_timeout``, and
in the secure ring the round agreement's waits too (``SecureRingRound.pace``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from p2pfed.collectives.messages import NO_BASE, ModelBase
from p2pfed.errors import ConfigError
from p2pfed.node.aggregators import Aggregate, Aggregator, Missed, Update
from p2pfed.node.liveness import PendingRelease

WINDOW = 8
"""Rounds of measurements a deadline is derived from."""
MIN_MEASURED_BYTES = 1 << 20
"""An aggregation must move this much to count as a measurement of the links' rate."""


@dataclass
class DeadlinePolicy:
    """Derives each round's stage deadline from the recent rounds' measured costs."""

    floor_s: float
    ceiling_s: float
    assumed_rate: float  # bytes/s before the first round has been measured
    slack: float = 3.0
    _busy: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _rates: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.ceiling_s:
            raise ConfigError(
                f"stage deadlines need 0 < floor ≤ ceiling, got {self.floor_s} and {self.ceiling_s}"
            )
        if not (self.assumed_rate > 0 and self.slack >= 1):
            raise ConfigError("stage deadlines need a positive link rate and a slack ≥ 1")

    def observe(self, busy_s: float, bytes_sent: int, aggregate_s: float) -> None:
        """Record one round: its local training time (< 0: unknown), bytes sent and time."""
        if busy_s >= 0 and np.isfinite(busy_s):
            self._busy.append(busy_s)
        # Below a megabyte an aggregation's time is round trips and protocol, not the links'
        # rate: measured as a rate, a 31-parameter model's 500 bytes in a slow second would
        # stretch its deadlines as if the link ran at 500 B/s. The floor covers those.
        if bytes_sent >= MIN_MEASURED_BYTES and aggregate_s > 0:
            self._rates.append(bytes_sent / aggregate_s)

    def stage_timeout(self, update_bytes: int, busy_now: float = -1.0) -> float:
        """This round's stage deadline in seconds for an update of ``update_bytes``.

        ``busy_now`` is this round's own local training time (< 0: unknown), known before it
        aggregates: the first round, with nothing measured yet, is stretched by it too.
        """
        rate = max(self._rates, default=self.assumed_rate)
        busy = max(self._busy, default=0.0)
        if np.isfinite(busy_now):
            busy = max(busy, busy_now)
        wanted = self.slack * (busy + update_bytes / rate)
        return float(min(self.ceiling_s, max(self.floor_s, wanted)))


class Paced(Protocol):
    """A service whose stages read ``stage_timeout`` at each round."""

    stage_timeout: float

    def pace(self, stage_timeout: float) -> None:
        """Run the next rounds under ``stage_timeout`` (and whatever it implies)."""


class PacedAggregator:
    """An ``Aggregator`` whose service's stage deadline follows a ``DeadlinePolicy``."""

    def __init__(
        self,
        inner: Aggregator,
        service: Paced,
        policy: DeadlinePolicy,
        update_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.inner = inner
        self.service = service
        self.policy = policy
        self.update_bytes = update_bytes
        self.clock = clock
        self.secure = inner.secure
        self.exact = inner.exact

    @property
    def guaranteed_contributors(self) -> int:
        """As the wrapped aggregator."""
        return self.inner.guaranteed_contributors

    def newest_round_seen(self) -> int:
        """As the wrapped aggregator."""
        return self.inner.newest_round_seen()

    async def aggregate(
        self, round: int, update: Update, weights: NDArray[np.float32], base: ModelBase = NO_BASE
    ) -> Aggregate | Missed:
        """Set this round's stage deadline, aggregate, and measure what the round cost."""
        trained = update.trained_s if isinstance(update, PendingRelease) else -1.0
        self.service.pace(self.policy.stage_timeout(self.update_bytes, trained))
        start = self.clock()
        outcome = await self.inner.aggregate(round, update, weights, base)
        took = self.clock() - start
        # A missed round's time is a wait for the others, not what the links can do.
        sent = outcome.bytes_sent if isinstance(outcome, Aggregate) else 0
        self.policy.observe(trained, sent, took)
        return outcome
