"""The phases of one peer's round agreement, their legal moves written as data, its timeouts.

Theory of operation: ``AGREEMENT_TRANSITIONS`` maps (phase, trigger) to the next phase and is
the only place where the order of round agreement is defined; ``RoundAgreement`` moves only
through ``next_phase``, which raises ``LocalProtocolError`` for any pair not in the table.
``p2pfed.collectives.diagram`` renders the table as the state diagram in docs/protocols.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pfed.errors import LocalProtocolError


class Phase(enum.Enum):
    """Where one peer stands in one round."""

    IDLE = "idle"
    ANNOUNCED = "announced"
    COLLECTING = "collecting"
    RUNNING = "running"
    REPORTED = "reported"
    COMMITTED = "committed"
    LEFT_OUT = "left-out"
    FAILED = "failed"


class Trigger(enum.Enum):
    """What moves a peer from one phase to the next."""

    ANNOUNCE = "announce"
    COORDINATE = "coordinate"
    TAKEOVER = "takeover"
    ABDICATE = "abdicate"
    COHORT = "cohort"
    LEFT_OUT = "left-out"
    RING_DONE = "ring-done"
    COMMIT = "commit"
    ABORT = "abort"
    EXHAUSTED = "exhausted"


AGREEMENT_TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.IDLE, Trigger.ANNOUNCE): Phase.ANNOUNCED,
    (Phase.IDLE, Trigger.COORDINATE): Phase.COLLECTING,
    (Phase.IDLE, Trigger.EXHAUSTED): Phase.FAILED,
    (Phase.ANNOUNCED, Trigger.TAKEOVER): Phase.ANNOUNCED,
    (Phase.ANNOUNCED, Trigger.COORDINATE): Phase.COLLECTING,
    (Phase.ANNOUNCED, Trigger.COHORT): Phase.RUNNING,
    (Phase.ANNOUNCED, Trigger.LEFT_OUT): Phase.LEFT_OUT,
    (Phase.ANNOUNCED, Trigger.EXHAUSTED): Phase.FAILED,
    (Phase.COLLECTING, Trigger.COHORT): Phase.RUNNING,
    (Phase.COLLECTING, Trigger.LEFT_OUT): Phase.LEFT_OUT,
    (Phase.COLLECTING, Trigger.ABDICATE): Phase.ANNOUNCED,
    (Phase.COLLECTING, Trigger.EXHAUSTED): Phase.FAILED,
    (Phase.RUNNING, Trigger.RING_DONE): Phase.REPORTED,
    (Phase.RUNNING, Trigger.ABORT): Phase.IDLE,
    (Phase.REPORTED, Trigger.COMMIT): Phase.COMMITTED,
    (Phase.REPORTED, Trigger.ABORT): Phase.IDLE,
}
"""Every legal move; ``IDLE`` after ``ABORT`` is the start of the next attempt."""

FINAL_PHASES = frozenset({Phase.COMMITTED, Phase.LEFT_OUT, Phase.FAILED})


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    """The phase after ``trigger`` in ``phase``; ``LocalProtocolError`` if the table forbids it."""
    try:
        return AGREEMENT_TRANSITIONS[(phase, trigger)]
    except KeyError:
        raise LocalProtocolError(
            f"round agreement cannot {trigger.value} in phase {phase.value}"
        ) from None


@dataclass(frozen=True, slots=True)
class AgreementTiming:
    """Timeouts in seconds: collect window < takeover timeout, commit timeout ≥ ring timeout."""

    collect_window: float = 2.0
    takeover_timeout: float = 5.0
    commit_timeout: float = 15.0

    def __post_init__(self) -> None:
        if not 0 < self.collect_window < self.takeover_timeout:
            raise LocalProtocolError(
                "agreement timing needs 0 < collect_window < takeover_timeout, got "
                f"{self.collect_window} and {self.takeover_timeout}"
            )
        if not self.commit_timeout > 0:
            raise LocalProtocolError(f"commit_timeout {self.commit_timeout} must be positive")

    @property
    def patience(self) -> float:
        """How long a coordinator short of its quorum collects: ¾ of the takeover timeout.

        The quarter left is for its ``Cohort`` to reach the members before they give up on
        it and move to the next coordinator.
        """
        return max(self.collect_window, 0.75 * self.takeover_timeout)
