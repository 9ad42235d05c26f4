"""How a peer waits: on-demand releases, jittered backoff, slot alignment, and why it waits.

Theory of operation. A round's privacy release is handed to the aggregator as a
``PendingRelease``: the aggregator calls it only once the round's cohort is fixed, so a
member that cannot join a round (too few members up, another roster version, an expired
roster) charges no ε for it, and still nothing leaves before the ledger has said yes.
Retries (catch-up polls, reachability probes) wait with ``Backoff``: exponential, capped,
jittered by an injected RNG, so members that failed together do not retry in lock-step and
none waits a fixed long time. After a round everyone missed, members restart at a boundary
of a shared wall clock (``slot_wait``), which re-aligns them. ``Waiting`` is what a member
that cannot progress reports: the round, the reason and the members it waits for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, P2PFedError
from p2pfed.privacy.mechanisms import NoiseMode
from p2pfed.privacy.release import PrivateReleaser


def slot_wait(now: float, slot: float, took: float = 0.0) -> float:
    """Seconds from wall-clock ``now`` to the next multiple of ``slot`` at least a margin away.

    Members that all missed a round finished it at different times (stage deadlines);
    restarting after a fixed wait would keep those offsets forever and every round would
    miss again. Boundaries of a shared (NTP) clock re-align them: members less than a slot
    apart start together, or one slot apart and then together after the early one's miss.
    ``took``: how long the missed round lasted, which a lone attempt at the next boundary
    will last too. The margin is (slot − took)/2, so that lone attempt ends (slot − took)/2
    before the boundary where the later member starts, leaving that much for it to last
    longer than the last; a fixed margin of slot/2 let two members that miss slowly
    (took > slot/2) alternate boundaries forever. A round longer than the slot cannot
    re-align: the slot must outlast a missed round.
    """
    if slot <= 0:
        return 0.0
    margin = max(0.0, (slot - took) / 2)
    wait = slot - now % slot
    return wait + slot if wait < margin else wait


class Backoff:
    """Delays for successive retries: the k-th is uniform in [base, min(cap, base·2^(k+1))]."""

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        if not 0 < base <= cap:
            raise ConfigError(f"backoff needs 0 < base <= cap, got base {base} and cap {cap}")
        self.base, self.cap, self.rng = base, cap, rng
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next retry (jittered, so peers that failed together spread)."""
        high = min(self.cap, self.base * 2.0 ** min(self.attempts + 1, 64))
        self.attempts += 1
        return self.base + (high - self.base) * self.rng.random()

    def reset(self) -> None:
        """A retry succeeded: the next failure starts again from ``base``."""
        self.attempts = 0


@dataclass(frozen=True)
class Waiting:
    """Why a member cannot progress: shown in ``status.json`` and one log line."""

    round: int
    reason: str
    missing: tuple[str, ...] = field(default_factory=tuple)
    """Members it waits for (peer IDs)."""
    retry_in: float = 0.0


class PendingRelease:
    """One round's update, released (and its ε charged) only when first called.

    ``guard`` runs right before the reservation, with no await in between (the roster may
    expire while the round forms). An error of the release is kept, so the peer can raise it
    as itself even when the aggregator's task group wrapped it.
    """

    def __init__(
        self,
        releaser: PrivateReleaser | None,
        guard: Callable[[], None] | None,
        round_: int,
        update: NDArray[np.float32],
        sample_rate: float,
        steps: int,
        trained_s: float = 0.0,
    ) -> None:
        self.releaser, self.guard, self.round = releaser, guard, round_
        self.update, self.sample_rate, self.steps = update, sample_rate, steps
        self.trained_s = trained_s  # local training's wall time (stage deadlines follow it)
        self.released: NDArray[np.float32] | None = None
        self.error: P2PFedError | None = None

    def __call__(self) -> NDArray[np.float32]:
        """The update to send; the ledger records the spend before this returns."""
        if self.released is not None:
            return self.released
        if self.releaser is None:
            self.released = self.update
            return self.released
        try:
            if self.guard is not None:  # the roster may have expired while the round formed
                self.guard()
            # DP-SGD composes the local steps (rate q each); any other mode is one Gaussian
            # release of the whole update per round (q = 1, one step).
            dp_sgd = self.releaser.mode is NoiseMode.DP_SGD
            released = self.releaser.release(
                self.round,
                self.update,
                sample_rate=self.sample_rate if dp_sgd else 1.0,
                steps=self.steps if dp_sgd else 1,
            )
        except P2PFedError as exc:
            self.error = exc
            raise
        self.released = released.astype(np.float32)
        return self.released

    def raise_own_error(self) -> None:
        """Raise the release's error, if it failed (BudgetExceededError, RosterError, ...)."""
        if self.error is not None:
            raise self.error
