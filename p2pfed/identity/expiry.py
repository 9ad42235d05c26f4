"""Roster expiry made explicit: warned about ahead of time, and the end of rounds after it.

Theory of operation: a roster carries an expiry; once it passes, ``RosterGate`` admits nobody,
so rounds can only fail. Left at that, a daemon keeps "running", retries and keeps charging
its privacy budget for rounds nobody can join. ``ExpiryWatch`` is asked before every round
(before anything is trained or released): ahead of the expiry it returns a warning sentence
once each threshold of ``warn_before`` is crossed (7 days and 1 day by default); at or after
the expiry it raises ``RosterError(EXPIRED)`` with one sentence saying what to do, so the
caller stops its rounds and spends no further ε. It reads the roster through a callable, so a
renewed roster (a new version accepted by the gate) is what counts from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from p2pfed.errors import ConfigError
from p2pfed.identity.roster import Roster
from p2pfed.identity.roster_fields import RosterError, RosterProblem, format_time

WARN_BEFORE = (timedelta(days=7), timedelta(days=1))
"""How long before the expiry the operator is warned (once per threshold)."""


@dataclass(frozen=True, slots=True)
class ExpiryState:
    """Where the roster in force stands: its expiry, the time left, a warning if any."""

    version: int
    expires_at: datetime
    seconds_left: float
    warning: str | None
    """The sentence for the latest threshold crossed, or None while none is."""
    new_warning: bool
    """True on the check that crossed that threshold (log it then, not every round)."""

    def to_status(self) -> dict[str, object]:
        """Fields for ``status.json``."""
        return {
            "roster_expires_at": format_time(self.expires_at),
            "roster_expires_in_s": round(self.seconds_left),
            "roster_warning": self.warning,
        }


def _describe(left: timedelta) -> str:
    seconds = left.total_seconds()
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


class ExpiryWatch:
    """Checks the roster in force against a clock before each round."""

    def __init__(
        self,
        roster: Callable[[], Roster],
        clock: Callable[[], datetime],
        warn_before: tuple[timedelta, ...] = WARN_BEFORE,
    ) -> None:
        if any(w <= timedelta(0) for w in warn_before):
            raise ConfigError("roster expiry warnings must come a positive time before expiry")
        self._roster = roster
        self._clock = clock
        self._warn_before = tuple(sorted(warn_before, reverse=True))
        self._warned: tuple[int, timedelta] | None = None  # (version, threshold) last warned

    def check(self) -> ExpiryState:
        """The roster's state now; raises ``RosterError(EXPIRED)`` once it has expired."""
        roster, now = self._roster(), self._clock()
        left = roster.expires_at - now
        if left <= timedelta(0):
            raise RosterError(
                RosterProblem.EXPIRED,
                f"roster version {roster.version} expired at {format_time(roster.expires_at)}: "
                "rounds stopped and no further privacy budget is spent; install a renewed "
                "roster signed by the admins and restart",
            )
        crossed = [w for w in self._warn_before if left <= w]
        if not crossed:
            return ExpiryState(roster.version, roster.expires_at, left.total_seconds(), None, False)
        threshold = crossed[-1]
        warning = (
            f"roster version {roster.version} expires at {format_time(roster.expires_at)} "
            f"(in {_describe(left)}): ask the consortium admins to renew it"
        )
        new = self._warned != (roster.version, threshold)
        self._warned = (roster.version, threshold)
        return ExpiryState(roster.version, roster.expires_at, left.total_seconds(), warning, new)
