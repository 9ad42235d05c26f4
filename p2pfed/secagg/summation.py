"""The pluggable summation step: "sum these uint vectors mod 2^k".

Theory of operation: secure aggregation never needs to know *how* the masked vectors are
added, only that the result is their exact sum in Z_2^k and which peers' vectors it contains.
The interface is deliberately narrow so the ring all-reduce of ``p2pfed.collectives`` can
implement it without knowing anything about masks:

    class MaskedSum(Protocol):
        def sum(self, vectors: Mapping[str, UIntVector], ring_bits: int)
            -> tuple[UIntVector, frozenset[str]]

``vectors`` maps each contributing peer ID to its masked vector (all of one length and of
dtype uint32 for ring_bits=32, uint64 for 64; unsigned numpy addition wraps, which *is* the
reduction mod 2^k). It returns the total and the set of peers whose vectors it contains —
the survivor set S that every peer then passes to ``SecAggPeer.receive_sum``. A distributed
implementation is given only the local peer's vector and returns the same (total, S) at every
peer; peers that vanish mid-reduction must be left out of S *and* of the total, or the
survivors' unmasking will not cancel (the round then aborts or yields garbage, which the
caller detects as a failed round, never as a leak). The in-memory ``DirectMaskedSum`` below
is the reference used by tests, the simulation and the benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, cast

import numpy as np

from p2pfed.errors import DataError
from p2pfed.secagg.primitives import UIntVector, ring_dtype


class MaskedSum(Protocol):
    """Anything that sums masked vectors mod 2^ring_bits and says whose it summed."""

    def sum(
        self, vectors: Mapping[str, UIntVector], ring_bits: int
    ) -> tuple[UIntVector, frozenset[str]]:
        """The total of ``vectors`` mod 2^ring_bits and the contributing peer IDs."""


class DirectMaskedSum:
    """Adds the vectors in memory, in place into one accumulator (reference implementation)."""

    def sum(
        self, vectors: Mapping[str, UIntVector], ring_bits: int
    ) -> tuple[UIntVector, frozenset[str]]:
        """The total of ``vectors`` mod 2^ring_bits and the contributing peer IDs."""
        if not vectors:
            raise DataError("a masked sum needs at least one vector")
        dtype = ring_dtype(ring_bits)
        items = sorted(vectors.items())
        shape = items[0][1].shape
        for peer, vector in items:
            if vector.dtype != dtype or vector.shape != shape or vector.ndim != 1:
                raise DataError(
                    f"the masked vector of {peer!r} is {vector.dtype}{vector.shape}, "
                    f"expected {dtype.__name__}{shape}"
                )
        total = cast(UIntVector, np.array(items[0][1], dtype=dtype, copy=True))
        for _, vector in items[1:]:
            np.add(total, vector, out=total)
        return total, frozenset(vectors)
