"""Transports: a small stream ABC, an in-memory network, and libp2p (Noise-only, roster-gated)."""

from p2pfed.transport.base import Handler, PeerGate, Stream, Transport
from p2pfed.transport.memory import MemoryNetwork, MemoryTransport

__all__ = ["Handler", "MemoryNetwork", "MemoryTransport", "PeerGate", "Stream", "Transport"]
