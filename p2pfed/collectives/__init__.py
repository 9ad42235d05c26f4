"""Collectives: ring all-reduce and gossip averaging, as sans-I/O cores with trio drivers.

See ``docs/protocols.md`` for the protocols, their state diagrams and failure handling.
"""

from p2pfed.collectives.codec import ByteCounts
from p2pfed.collectives.faults import Exclusion, Fault, FaultPlan, InjectedCrash
from p2pfed.collectives.messages import WordType
from p2pfed.collectives.ring import RingAllReduce, ring_order
from p2pfed.collectives.ring_driver import RING_PROTOCOL, RingConfig, RingResult, RingService

__all__ = [
    "RING_PROTOCOL",
    "ByteCounts",
    "Exclusion",
    "Fault",
    "FaultPlan",
    "InjectedCrash",
    "RingAllReduce",
    "RingConfig",
    "RingResult",
    "RingService",
    "WordType",
    "ring_order",
]
