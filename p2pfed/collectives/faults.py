"""Injectable faults and the record of exclusions.

Theory of operation: a ``FaultPlan`` tells a driver to misbehave on purpose at its k-th
outgoing vector message: crash (the process dies there), stall for a while, send a vector of
the wrong length or word type, replay a message, or stamp it with an earlier round. Tests and
the fault benchmarks use it to make each failure the collectives must survive happen exactly
where intended, on the in-memory network and on real processes alike.

Whatever a driver rejects or whomever it excludes is written down as an ``Exclusion`` with a
reason code: a misbehaving peer is never dropped silently. Where a peer could send without
limit, ``RefusalSummary`` keeps one ``Exclusion`` per (round, peer, reason) with a count, so
the record of a flood grows with rounds, not with messages.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pfed.errors import LocalProtocolError, ReasonCode


class Fault(enum.Enum):
    """A way to misbehave at one outgoing vector message."""

    CRASH = "crash"
    DELAY = "delay"
    WRONG_SHAPE = "wrong-shape"
    WRONG_DTYPE = "wrong-dtype"
    REPLAY = "replay"
    STALE_ROUND = "stale-round"


class InjectedCrash(Exception):
    """Raised in the faulty peer's own task when a ``Fault.CRASH`` fires (it is 'dead')."""


def _no_hook() -> None:
    return None


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Misbehave with ``fault`` at outgoing vector message number ``at`` (0-based).

    ``delay`` is the stall in seconds for ``Fault.DELAY``; ``on_crash`` runs when a crash
    fires (for example ``MemoryNetwork.crash(peer)`` or ``os._exit``) before
    ``InjectedCrash`` is raised.
    """

    fault: Fault
    at: int = 0
    delay: float = 0.0
    on_crash: Callable[[], None] = field(default=_no_hook, compare=False)

    def __post_init__(self) -> None:
        if self.at < 0:
            raise LocalProtocolError(f"fault position {self.at} is negative")
        if self.delay < 0:
            raise LocalProtocolError(f"fault delay {self.delay} is negative")


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A peer (or ``count`` of its messages) rejected for a round, and why."""

    round: int
    peer: str
    reason: ReasonCode
    detail: str
    count: int = 1


class RefusalSummary:
    """Refusals summarised per (round, peer, reason): history plus what is not yet reported."""

    def __init__(self) -> None:
        self.exclusions: list[Exclusion] = []
        """Every summary so far, oldest first (a count grows in place)."""
        self._index: dict[tuple[int, str, ReasonCode], int] = {}
        self._pending: dict[tuple[int, str, ReasonCode], Exclusion] = {}

    def refuse(self, round: int, peer: str, reason: ReasonCode, detail: str) -> None:
        """One more refused message (or stream refused unread) of ``peer`` in ``round``.

        The first keeps its detail; the rest only add to the count.
        """
        key = (round, peer, reason)
        index = self._index.get(key)
        if index is None:
            self._index[key] = len(self.exclusions)
            self.exclusions.append(Exclusion(round, peer, reason, detail))
        else:
            old = self.exclusions[index]
            self.exclusions[index] = Exclusion(round, peer, reason, old.detail, old.count + 1)
        pending = self._pending.get(key)
        count = 1 if pending is None else pending.count + 1
        first = detail if pending is None else pending.detail
        self._pending[key] = Exclusion(round, peer, reason, first, count)

    def drain(self, up_to: float = math.inf) -> list[Exclusion]:
        """The refusals for rounds up to ``up_to`` since they were last drained.

        One per round, peer and reason; later rounds' stay for their own round's report.
        """
        drained = [e for key, e in self._pending.items() if key[0] <= up_to]
        self._pending = {key: e for key, e in self._pending.items() if key[0] > up_to}
        return drained

    def forget_before(self, round: int) -> None:
        """Stop merging into summaries of rounds below ``round`` (they were reported)."""
        self._index = {key: i for key, i in self._index.items() if key[0] >= round}
