"""Communication graphs for decentralised training, their mixing matrices and spectra.

``build(name, n, seed=...)`` makes a ``Topology``; ``analyze(topology)`` reports its spectral
gap, rounds to consensus, degrees, diameter and traffic. Loaders read edge lists, GraphML, GML
and JSON (the only I/O here). No torch, no networking. Names load on first use (PEP 562), so
importing ``topologies.errors`` alone stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from topologies.analysis import Analysis as Analysis
    from topologies.analysis import analyze as analyze
    from topologies.analysis import rounds_to_consensus as rounds_to_consensus
    from topologies.analysis import spectral_norm as spectral_norm
    from topologies.errors import TopologyError as TopologyError
    from topologies.graphs import GENERATORS as GENERATORS
    from topologies.graphs import Generator as Generator
    from topologies.graphs import Topology as Topology
    from topologies.graphs import build as build
    from topologies.graphs import from_graphs as from_graphs
    from topologies.graphs import make_mixing as make_mixing
    from topologies.loaders import load as load
    from topologies.loaders import load_edgelist as load_edgelist
    from topologies.loaders import load_gml as load_gml
    from topologies.loaders import load_graphml as load_graphml
    from topologies.loaders import load_json as load_json

_WHERE = {
    "Analysis": "analysis",
    "GENERATORS": "graphs",
    "Generator": "graphs",
    "Topology": "graphs",
    "TopologyError": "errors",
    "analyze": "analysis",
    "build": "graphs",
    "from_edge_weights": "mixing",
    "from_graphs": "graphs",
    "lazy": "mixing",
    "load": "loaders",
    "load_edgelist": "loaders",
    "load_gml": "loaders",
    "load_graphml": "loaders",
    "load_json": "loaders",
    "make_mixing": "graphs",
    "max_degree": "mixing",
    "metropolis_hastings": "mixing",
    "rounds_to_consensus": "analysis",
    "spectral_norm": "analysis",
    "uniform": "mixing",
    "validate_mixing": "mixing",
}

__all__ = sorted(_WHERE)


# p2pfed.lazy holds the same four-line PEP 562 loader for p2pfed's packages: topologies
# imports neither p2pfed nor torch, so it cannot share p2pfed's copy.
def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
