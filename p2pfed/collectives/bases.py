"""Which base model a round's cohort sums onto: the one most of its members hold.

Theory of operation: every member adds the round's (shared) sum to its own base model, so
members on different bases would commit different models from one sum. Each ``Ready``
names its sender's base (``ModelBase``: the round that committed the model, and the digest
the commit certificates sign). The coordinator picks ``majority_base`` of the Ready messages
it collected (a tie goes to the most recent round, then to the lowest digest, so any
coordinator given the same messages picks the same) and fixes the cohort from the members
on it; the others are left out with ``STALE_BASE`` and catch up by model sync before the
next round. A coordinator not on the majority's base steps aside (its cohort would not
include itself); a member never sums onto a base that is not its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from p2pfed.collectives.messages import ModelBase
from p2pfed.errors import LocalProtocolError


def majority_base(bases: Iterable[ModelBase]) -> ModelBase:
    """The base held most often; ties: the most recent round, then the lowest digest."""
    counts = Counter(bases)
    if not counts:
        raise LocalProtocolError("a cohort's base is chosen from at least one Ready")
    return min(counts, key=lambda base: (-counts[base], -base.round, base.digest))


__all__ = ["majority_base"]
