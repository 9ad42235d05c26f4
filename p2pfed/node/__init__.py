"""A federated-learning peer composed from the parts: see ``Peer`` and ``build``.

Names are loaded on first use (PEP 562): ``p2pfed run`` reads the state folder's file names
from ``node.files`` before torch loads, and ``Peer`` brings torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
