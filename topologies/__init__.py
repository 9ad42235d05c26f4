"""Communication graphs for decentralised training, their mixing matrices and spectra.

``build(name, n, seed=...)`` makes a ``Topology``; ``analyze(topology)`` reports its spectral
gap, rounds to consensus, degrees, diameter and traffic. Loaders read edge lists, GraphML and
JSON (the only I/O here). No torch, no networking.
"""

from topologies.analysis import Analysis, analyze, rounds_to_consensus, spectral_norm
from topologies.errors import TopologyError
from topologies.graphs import GENERATORS, Generator, Topology, build, from_graphs, make_mixing
from topologies.loaders import load, load_edgelist, load_graphml, load_json
from topologies.mixing import (
    from_edge_weights,
    lazy,
    max_degree,
    metropolis_hastings,
    uniform,
    validate_mixing,
)

__all__ = [
    "GENERATORS",
    "Analysis",
    "Generator",
    "Topology",
    "TopologyError",
    "analyze",
    "build",
    "from_edge_weights",
    "from_graphs",
    "lazy",
    "load",
    "load_edgelist",
    "load_graphml",
    "load_json",
    "make_mixing",
    "max_degree",
    "metropolis_hastings",
    "rounds_to_consensus",
    "spectral_norm",
    "uniform",
    "validate_mixing",
]
