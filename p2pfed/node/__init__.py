"""A federated-learning peer composed from the parts: see ``Peer`` and ``build``.

Names are loaded on first use (PEP 562): ``p2pfed run`` reads the state folder's file names
from ``node.files`` before torch loads, and ``Peer`` brings torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfed.lazy import lazy_names

if TYPE_CHECKING:
    from p2pfed.node.aggregators import Aggregate as Aggregate
    from p2pfed.node.aggregators import Aggregator as Aggregator
    from p2pfed.node.aggregators import GossipAggregator as GossipAggregator
    from p2pfed.node.aggregators import Missed as Missed
    from p2pfed.node.aggregators import RingAggregator as RingAggregator
    from p2pfed.node.aggregators import SecureRingAggregator as SecureRingAggregator
    from p2pfed.node.peer import Peer as Peer
    from p2pfed.node.report import RoundReport as RoundReport
    from p2pfed.node.sync import ModelStatus as ModelStatus
    from p2pfed.node.sync import ModelSync as ModelSync
    from p2pfed.node.sync import weights_digest as weights_digest

_MODULES = {
    "aggregators": (
        "Aggregate",
        "Aggregator",
        "GossipAggregator",
        "Missed",
        "RingAggregator",
        "SecureRingAggregator",
    ),
    "peer": ("Peer",),
    "report": ("RoundReport",),
    "sync": ("ModelStatus", "ModelSync", "weights_digest"),
}
__all__, __getattr__ = lazy_names(__name__, _MODULES)
