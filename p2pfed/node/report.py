"""``RoundReport``: what one round did at a peer (the daemon's status and metrics read it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from p2pfed.collectives.faults import Exclusion
from p2pfed.node.certificates import CommitCertificate


@dataclass(frozen=True)
class RoundReport:
    """What one round did at this peer."""

    round: int
    committed: bool
    contributors: int
    train_loss: float
    test_accuracy: float
    test_loss: float
    epsilon: float | None
    bytes_sent: int
    duration_s: float
    model_digest: str
    reason: str = ""
    exclusions: tuple[Exclusion, ...] = field(default_factory=tuple)
    cohort: tuple[str, ...] = field(default_factory=tuple)
    """Peer IDs whose updates are in this round's aggregate (empty when missed)."""
    sample_rate: float = 1.0
    steps: int = 1
    certificate: CommitCertificate | None = None
    """The round's commit certificate (None when missed, uncertified, or in gossip)."""
    stages_s: tuple[tuple[str, float], ...] = ()
    """Seconds spent in each stage, in order: train, aggregate — under secure aggregation
    split into mask, all-reduce, unmask and decode —, commit (certify and adopt, or roll
    back a missed round), evaluate."""


class StageTimer:
    """Seconds per stage of one round, read off an injected clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = self.last = clock()
        self.stages: list[tuple[str, float]] = []

    def mark(self, stage: str) -> float:
        """End ``stage`` now; returns its seconds."""
        now = self.clock()
        took, self.last = now - self.last, now
        self.stages.append((stage, took))
        return took

    def mark_parts(self, parts: tuple[tuple[str, float], ...], rest: str) -> None:
        """End a stage timed in ``parts`` elsewhere; what they do not cover is ``rest``."""
        now = self.clock()
        took, self.last = now - self.last, now
        self.stages += parts
        self.stages.append((rest, max(0.0, took - sum(s for _, s in parts))))

    def total(self) -> float:
        """Seconds since the round started."""
        return self.clock() - self.started
