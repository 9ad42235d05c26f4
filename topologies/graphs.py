"""Topology generators and the ``Topology`` value they produce.

Theory of operation: a ``Topology`` is a period of ``(graph, mixing matrix)`` pairs on nodes
``0..n-1``; a static topology has period 1, a time-varying one (one-peer exponential) cycles
through its period, round ``t`` using entry ``t mod period``. Construction validates
everything once: node labels, no self-loops, connectivity of the union over the period, and
each mixing matrix (non-negative, doubly stochastic, support within the edges). Generators
that draw at random take a ``seed`` and are deterministic for it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from topologies.errors import TopologyError
from topologies.mixing import MIXING_RULES, lazy, uniform, validate_mixing

_MAX_RESAMPLES = 200


@dataclass(frozen=True, eq=False)
class Topology:
    """A (possibly time-varying) communication graph with its mixing matrices."""

    name: str
    graphs: tuple[nx.Graph, ...]
    mixings: tuple[sp.csr_array, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    """Original node ids (loaded graphs); node ``i`` is ``labels[i]``."""

    def __post_init__(self) -> None:
        if not self.graphs or len(self.graphs) != len(self.mixings):
            raise TopologyError("a topology needs one mixing matrix per graph of its period")
        n = self.graphs[0].number_of_nodes()
        for g, w in zip(self.graphs, self.mixings, strict=True):
            _check_graph(g, n)
            validate_mixing(w, g)
        if self.labels is not None and len(self.labels) != n:
            raise TopologyError(f"{len(self.labels)} labels given for {n} nodes")
        union = self.union_graph()
        connected = (
            nx.is_strongly_connected(union) if union.is_directed() else nx.is_connected(union)
        )
        if n > 1 and not connected:
            parts = (
                nx.number_strongly_connected_components(union)
                if union.is_directed()
                else nx.number_connected_components(union)
            )
            raise TopologyError(f"topology {self.name!r} is disconnected ({parts} components)")

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.graphs[0].number_of_nodes())

    @property
    def period(self) -> int:
        """Number of rounds after which the sequence of graphs repeats (1 if static)."""
        return len(self.graphs)

    @property
    def directed(self) -> bool:
        """Whether edges are one-way (``u → v``: ``u`` sends to ``v``)."""
        return bool(self.graphs[0].is_directed())

    def graph_at(self, t: int) -> nx.Graph:
        """The graph used in round ``t``."""
        return self.graphs[t % self.period]

    def mixing_at(self, t: int) -> sp.csr_array:
        """The mixing matrix used in round ``t`` (``x ← W x``)."""
        return self.mixings[t % self.period]

    def neighbors_at(self, t: int, i: int) -> tuple[int, ...]:
        """Nodes whose values node ``i`` mixes in during round ``t`` (excluding ``i``)."""
        w = self.mixing_at(t)
        row = w.indices[w.indptr[i] : w.indptr[i + 1]]
        vals = w.data[w.indptr[i] : w.indptr[i + 1]]
        return tuple(sorted(int(j) for j, v in zip(row, vals, strict=True) if j != i and v > 0))

    def union_graph(self) -> nx.Graph:
        """All edges used over one period."""
        union = self.graphs[0].copy()
        for g in self.graphs[1:]:
            union.add_edges_from(g.edges())
        return union

    def with_mixing(self, rule: str = "auto", beta: float | None = None) -> Topology:
        """The same graphs with mixing matrices from another rule, optionally lazy."""
        mixings = tuple(make_mixing(g, rule) for g in self.graphs)
        if beta is not None:
            mixings = tuple(lazy(w, beta) for w in mixings)
        params = {**self.params, "mixing": rule}
        if beta is not None:
            params["lazy"] = beta
        return Topology(self.name, self.graphs, mixings, params, self.labels)


def _check_graph(graph: nx.Graph, n: int) -> None:
    if graph.number_of_nodes() != n or set(graph.nodes()) != set(range(n)):
        raise TopologyError("a topology's graphs must all have nodes 0..n-1")
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(f"graph has a self-loop at node {loops[0][0]}")


def make_mixing(graph: nx.Graph, rule: str = "auto") -> sp.csr_array:
    """The mixing matrix of ``graph`` by rule name; ``auto`` picks the usual one.

    ``auto``: the graph's own ``weight`` attributes if edges have them, uniform for
    directed graphs, Metropolis–Hastings otherwise.
    """
    if rule == "auto":
        # Any weight at all means the file meant to fix the weights: from_edge_weights then
        # names an edge left without one, rather than silently ignoring the others.
        has_weights = any("weight" in d for _, _, d in graph.edges(data=True))
        directed_rule = "uniform" if graph.is_directed() else "metropolis"
        rule = "weights" if has_weights else directed_rule
    try:
        fn = MIXING_RULES[rule]
    except KeyError:
        known = ", ".join(["auto", *MIXING_RULES])
        raise TopologyError(f"unknown mixing rule {rule!r}; choose one of {known}") from None
    return fn(graph)


def from_graphs(
    name: str,
    graphs: list[nx.Graph],
    params: Mapping[str, Any] | None = None,
    mixing: str = "auto",
    labels: tuple[str, ...] | None = None,
) -> Topology:
    """Build a topology from graphs on nodes 0..n-1 with the named mixing rule."""
    mixings = tuple(make_mixing(g, mixing) for g in graphs)
    return Topology(name, tuple(graphs), mixings, dict(params or {}), labels)


# --- generators -------------------------------------------------------------------------


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise TopologyError(message)


def _log2_ceil(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


def _factor(n: int, rows: int | None, minimum: int, what: str) -> tuple[int, int]:
    if rows is None:
        candidates = [r for r in range(minimum, math.isqrt(n) + 1) if n % r == 0]
        _need(bool(candidates), f"{what} needs n = rows × cols with both ≥ {minimum}; got n={n}")
        rows = candidates[-1]
    _need(
        rows >= minimum and n % rows == 0 and n // rows >= minimum,
        f"{what} needs rows ≥ {minimum} dividing n={n} with cols ≥ {minimum}; got rows={rows}",
    )
    return rows, n // rows


def _relabel(graph: nx.Graph) -> nx.Graph:
    return nx.convert_node_labels_to_integers(graph, ordering="sorted")


def ring(n: int) -> nx.Graph:
    """Cycle: each node talks to two neighbours. Cheapest, slowest to mix (gap ~ 1/n²)."""
    _need(n >= 3, f"a ring needs n ≥ 3, got {n}")
    return nx.cycle_graph(n)


def torus(n: int, rows: int | None = None) -> nx.Graph:
    """2-D torus (grid with wrap-around): degree 4, gap ~ 1/n."""
    r, c = _factor(n, rows, 3, "a torus")
    return _relabel(nx.grid_2d_graph(r, c, periodic=True))


def grid(n: int, rows: int | None = None) -> nx.Graph:
    """2-D grid without wrap-around, as a building's or campus's network."""
    r, c = _factor(n, rows, 1, "a grid")
    _need(n >= 2, f"a grid needs n ≥ 2, got {n}")
    return _relabel(nx.grid_2d_graph(r, c))


def complete(n: int) -> nx.Graph:
    """Everyone talks to everyone: exact averaging in one step, n−1 messages per node."""
    _need(n >= 2, f"a complete graph needs n ≥ 2, got {n}")
    return nx.complete_graph(n)


def star(n: int) -> nx.Graph:
    """A hub and n−1 spokes: the server topology, for comparison."""
    _need(n >= 2, f"a star needs n ≥ 2, got {n}")
    return nx.star_graph(n - 1)


def hypercube(n: int) -> nx.Graph:
    """log2 n-dimensional hypercube (n a power of two): degree log2 n, gap 2/(1+log2 n)."""
    _need(n >= 2 and n & (n - 1) == 0, f"a hypercube needs n a power of two ≥ 2, got {n}")
    return _relabel(nx.hypercube_graph(int(math.log2(n))))


def exponential(n: int) -> nx.Graph:
    """Static exponential graph (Ying et al. 2021): i sends to i + 2^k, k < ⌈log2 n⌉."""
    _need(n >= 2, f"an exponential graph needs n ≥ 2, got {n}")
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for i in range(n):
        for k in range(_log2_ceil(n)):
            j = (i + 2**k) % n
            if j != i:
                g.add_edge(i, j)
    return g


def one_peer_exponential(n: int) -> list[nx.Graph]:
    """Time-varying exponential graph: in round k, node i hears only i + 2^(k mod ⌈log2 n⌉)."""
    _need(n >= 2, f"a one-peer exponential graph needs n ≥ 2, got {n}")
    graphs = []
    for k in range(_log2_ceil(n)):
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        hop = 2**k % n
        if hop:
            g.add_edges_from(((i + hop) % n, i) for i in range(n))
        graphs.append(g)
    return graphs


def erdos_renyi(n: int, p: float | None = None, seed: int = 0) -> nx.Graph:
    """G(n, p) random graph, resampled until connected; default p = 2·ln(n)/n."""
    _need(n >= 2, f"an Erdős–Rényi graph needs n ≥ 2, got {n}")
    p = min(1.0, 2.0 * math.log(n) / n) if p is None else p
    _need(0.0 < p <= 1.0, f"edge probability p must be in (0, 1], got {p}")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_RESAMPLES):
        g = nx.fast_gnp_random_graph(n, p, seed=int(rng.integers(2**32)))
        if nx.is_connected(g):
            return g
    raise TopologyError(f"no connected G(n={n}, p={p}) in {_MAX_RESAMPLES} draws; raise p")


def regular(n: int, degree: int = 4, seed: int = 0) -> nx.Graph:
    """Random d-regular graph, resampled until connected: an expander with few links."""
    _need(1 <= degree < n, f"a {degree}-regular graph needs 1 ≤ degree < n={n}")
    _need(n * degree % 2 == 0, f"n·degree must be even for a regular graph ({n}·{degree})")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_RESAMPLES):
        g = nx.random_regular_graph(degree, n, seed=int(rng.integers(2**32)))
        if nx.is_connected(g):
            return g
    raise TopologyError(f"no connected {degree}-regular graph on {n} nodes; raise the degree")


def small_world(n: int, k: int = 4, p: float = 0.1, seed: int = 0) -> nx.Graph:
    """Watts–Strogatz: a ring lattice of degree k with a fraction p of edges rewired."""
    _need(2 <= k < n, f"small-world needs 2 ≤ k < n={n}, got k={k}")
    _need(0.0 <= p <= 1.0, f"rewiring probability p must be in [0, 1], got {p}")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_RESAMPLES):
        g = nx.watts_strogatz_graph(n, k, p, seed=int(rng.integers(2**32)))
        if nx.is_connected(g):
            return g
    raise TopologyError(f"no connected small-world graph for n={n}, k={k}, p={p}")


def regions(n: int, regions: int | None = None, bridges: int = 1, seed: int = 0) -> nx.Graph:
    """Hospitals in regional networks: complete inside a region, few bridges between regions.

    Regions are contiguous blocks of near-equal size, joined in a ring (a line for two) by
    ``bridges`` random hospital pairs between consecutive regions.
    """
    _need(n >= 2, f"regions needs n ≥ 2, got {n}")
    count = max(1, n // 8) if regions is None else regions
    _need(1 <= count <= n, f"regions must be in 1..n={n}, got {count}")
    _need(bridges >= 1, f"bridges must be ≥ 1, got {bridges}")
    rng = np.random.default_rng(seed)
    blocks = [list(b) for b in np.array_split(np.arange(n), count)]
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for block in blocks:
        g.add_edges_from((int(a), int(b)) for i, a in enumerate(block) for b in block[i + 1 :])
    pairs = [(r, (r + 1) % count) for r in range(count if count > 2 else count - 1)]
    for a, b in pairs:
        for _ in range(bridges):
            g.add_edge(int(rng.choice(blocks[a])), int(rng.choice(blocks[b])))
    return g


@dataclass(frozen=True)
class Generator:
    """A named topology generator and what it is for."""

    name: str
    make: Callable[..., nx.Graph | list[nx.Graph]]
    purpose: str

    def params(self) -> dict[str, Any]:
        """Keyword parameters beyond ``n`` and their defaults."""
        sig = inspect.signature(self.make)
        return {k: p.default for k, p in sig.parameters.items() if k != "n"}


GENERATORS: dict[str, Generator] = {
    g.name: g
    for g in [
        Generator("ring", ring, "cheapest links; the slow baseline (gap ~ 1/n²)"),
        Generator("torus", torus, "2-D mesh with wrap-around; degree 4, gap ~ 1/n"),
        Generator("grid", grid, "2-D mesh without wrap-around (campus/building networks)"),
        Generator("complete", complete, "all-to-all: exact in one round, n−1 messages each"),
        Generator("star", star, "one hub: the central-server topology, for comparison"),
        Generator("hypercube", hypercube, "log2 n links, gap 2/(1+log2 n); n a power of two"),
        Generator("exponential", exponential, "Ying et al. static exponential: log2 n links"),
        Generator(
            "one_peer_exponential",
            one_peer_exponential,
            "one link per round; exact average after log2 n rounds (n = 2^k)",
        ),
        Generator("erdos_renyi", erdos_renyi, "random G(n, p), resampled until connected"),
        Generator("regular", regular, "random d-regular expander (as SecAgg+ neighbours)"),
        Generator("small_world", small_world, "Watts–Strogatz ring with rewired shortcuts"),
        Generator("regions", regions, "regional hospital networks joined by few bridges"),
    ]
}


def build(
    name: str,
    n: int,
    seed: int = 0,
    mixing: str = "auto",
    lazy_beta: float | None = None,
    **params: Any,
) -> Topology:
    """Generate the named topology on ``n`` nodes and attach its mixing matrices.

    Raises ``TopologyError`` for an unknown name or parameter, or invalid values.
    """
    try:
        gen = GENERATORS[name]
    except KeyError:
        known = ", ".join(GENERATORS)
        raise TopologyError(f"unknown topology {name!r}; choose one of {known}") from None
    accepted = gen.params()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TopologyError(
            f"topology {name!r} has no parameter {unknown[0]!r}; it takes "
            + (", ".join(k for k in accepted if k != "seed") or "only n")
        )
    if n < 1:
        raise TopologyError(f"n must be a positive number of nodes, got {n}")
    kwargs = dict(params)
    if "seed" in accepted:
        kwargs["seed"] = seed
    made = gen.make(n, **kwargs)
    graphs = made if isinstance(made, list) else [made]
    topo = from_graphs(name, graphs, {"n": n, **kwargs, "mixing": mixing}, mixing)
    return topo if lazy_beta is None else topo.with_mixing(mixing, lazy_beta)


__all__ = [
    "GENERATORS",
    "Generator",
    "Topology",
    "build",
    "from_graphs",
    "make_mixing",
    "uniform",
]
