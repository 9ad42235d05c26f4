"""p2pfed: serverless peer-to-peer federated learning for hospitals.

Peers exchange clipped, noised and masked model updates over authenticated libp2p
channels, by gossip or ring all-reduce, with no central server. See docs/architecture.md.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
