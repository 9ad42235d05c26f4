"""Collectives: ring all-reduce and gossip averaging, as sans-I/O cores with trio drivers.

``RingService`` sums a vector over a given ring; ``RingRound`` adds serverless round
agreement and retries without failed peers; ``SecureRingRound`` sums secure-aggregation
masked vectors with it. ``GossipService`` averages over a ``topologies`` topology
(synchronous rounds or asynchronous push-pull) and ``SecureGossipService`` does it with
secure aggregation inside every averaging group. See ``docs/protocols.md``.
"""

from p2pfed.collectives.agreement import RoundAgreement
from p2pfed.collectives.agreement_state import AgreementTiming, Phase
from p2pfed.collectives.codec import ByteCounts
from p2pfed.collectives.faults import Exclusion, Fault, FaultPlan, InjectedCrash
from p2pfed.collectives.gossip import GossipRound
from p2pfed.collectives.gossip_driver import GossipConfig, GossipOutcome, GossipService
from p2pfed.collectives.messages import WordType
from p2pfed.collectives.ring import RingAllReduce, ring_order
from p2pfed.collectives.ring_driver import RING_PROTOCOL, RingConfig, RingResult, RingService
from p2pfed.collectives.round import RingRound, RoundOutcome
from p2pfed.collectives.secure import RingMaskedSum, SecureOutcome, SecureRingRound
from p2pfed.collectives.secure_gossip import SecureGossipOutcome, SecureGossipService
from p2pfed.collectives.signing import CohortSigner, Ed25519CohortSigner

__all__ = [
    "RING_PROTOCOL",
    "AgreementTiming",
    "ByteCounts",
    "CohortSigner",
    "Ed25519CohortSigner",
    "Exclusion",
    "Fault",
    "FaultPlan",
    "GossipConfig",
    "GossipOutcome",
    "GossipRound",
    "GossipService",
    "InjectedCrash",
    "Phase",
    "RingAllReduce",
    "RingConfig",
    "RingMaskedSum",
    "RingResult",
    "RingRound",
    "RingService",
    "RoundAgreement",
    "RoundOutcome",
    "SecureGossipOutcome",
    "SecureGossipService",
    "SecureOutcome",
    "SecureRingRound",
    "WordType",
    "ring_order",
]
