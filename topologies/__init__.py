"""Communication graphs for decentralised training, their mixing matrices and spectra."""

from topologies.errors import TopologyError

__all__ = ["TopologyError"]
