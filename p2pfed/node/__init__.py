"""A federated-learning peer composed from the parts: see ``Peer`` and ``build``."""

from p2pfed.node.aggregators import (
    Aggregate,
    Aggregator,
    GossipAggregator,
    Missed,
    RingAggregator,
    SecureRingAggregator,
)
from p2pfed.node.peer import Peer
from p2pfed.node.report import RoundReport
from p2pfed.node.sync import ModelStatus, ModelSync, weights_digest

__all__ = [
    "Aggregate",
    "Aggregator",
    "GossipAggregator",
    "Missed",
    "ModelStatus",
    "ModelSync",
    "Peer",
    "RingAggregator",
    "RoundReport",
    "SecureRingAggregator",
    "weights_digest",
]
