"""Serverless secure aggregation: a masked-sum protocol as a pure, per-peer state machine.

Theory of operation: each peer quantises its update into Z_2^k (``fixedpoint``), adds a
self mask and pairwise masks agreed with its neighbours and expanded by ChaCha20
(``primitives``), and Shamir-shares (``shamir``) what the survivors need to remove the masks
of peers that drop. ``protocol.SecAggPeer`` runs one peer's round over the messages in
``messages`` through the stages of ``state``; the masked vectors are added by any
``summation.MaskedSum`` (in memory here, ring all-reduce in ``p2pfed.collectives``);
``harness.run_cohort`` drives a whole cohort in-process with injectable drops.

The summation interface (stable; the collectives plug in here)::

    class MaskedSum(Protocol):
        def sum(self, vectors: Mapping[str, UIntVector], ring_bits: int)
            -> tuple[UIntVector, frozenset[str]]

returns the exact sum mod 2^ring_bits of the given masked vectors (uint32 or uint64, one
length) and the peers whose vectors it contains; each contributor then calls
``SecAggPeer.receive_sum(total, contributors)``. See docs/secure-aggregation.md.
"""

from p2pfed.secagg.admission import Rejection
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.harness import CohortRun, Drop, run_cohort
from p2pfed.secagg.params import CohortPlan, SecAggConfig, plan_cohort
from p2pfed.secagg.protocol import Outgoing, SecAggPeer
from p2pfed.secagg.state import Event, Stage
from p2pfed.secagg.summation import DirectMaskedSum, MaskedSum

__all__ = [
    "CohortPlan",
    "CohortRun",
    "DirectMaskedSum",
    "Drop",
    "Event",
    "FixedPoint",
    "MaskedSum",
    "Outgoing",
    "Rejection",
    "SecAggConfig",
    "SecAggPeer",
    "Stage",
    "plan_cohort",
    "run_cohort",
]
