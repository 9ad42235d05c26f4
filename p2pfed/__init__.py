"""p2pfed: serverless peer-to-peer federated learning for hospitals.

Peers exchange clipped, noised and masked model updates over authenticated libp2p
channels, by gossip or ring all-reduce, with no central server. See docs/architecture.md.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["Privacy", "__version__", "build_peer"]


def __getattr__(name: str) -> Any:
    """``build_peer`` and ``Privacy`` on first use: importing p2pfed stays light (PEP 562)."""
    if name in ("build_peer", "Privacy"):
        from p2pfed.daemon import custom

        return getattr(custom, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
