"""Spectral and cost analysis of a topology.

Theory of operation: with a doubly stochastic ``W`` and ``J = 11ᵀ/n``, the disagreement
``x − x̄`` shrinks each round by at most ``ρ = ‖W − J‖₂``; the spectral gap is ``1 − ρ`` and
ε-consensus takes ``⌈ln(1/ε) / ln(1/ρ)⌉`` rounds. For a time-varying sequence the product over
one period ``P = W_{τ−1}…W_0`` gives ``ρ_period = ‖P − J‖₂`` and the per-round rate
``ρ = ρ_period^(1/τ)``; one-peer exponential graphs reach ``P = J`` exactly when n is a power
of two. Small graphs use dense linear algebra (exact to round-off); large ones use ARPACK on
the operator ``x ↦ Wx − x̄·1`` so that nothing n×n is ever formed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as sla

from topologies.graphs import Topology

DENSE_LIMIT = 1024
"""Up to this many nodes the spectrum is computed densely (exact to round-off)."""

_EXACT = 1e-12  # below this ρ_period counts as exact averaging


@dataclass(frozen=True)
class Analysis:
    """What the analysis of one topology found."""

    name: str
    n: int
    period: int
    directed: bool
    rho: float
    rho_period: float
    spectral_gap: float
    edges: int
    degree_min: int
    degree_mean: float
    degree_max: int
    diameter: int
    messages_per_node_round: float
    model_bytes: int
    bytes_per_node_round: float

    def rounds_to(self, eps: float) -> int:
        """Rounds until the disagreement has shrunk by a factor ``eps``."""
        return rounds_to_consensus(self.rho_period, self.period, eps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary, including ``rounds_to_1e-3`` and ``rounds_to_1e-6``."""
        out = asdict(self)
        out["rounds_to_1e-3"] = self.rounds_to(1e-3)
        out["rounds_to_1e-6"] = self.rounds_to(1e-6)
        return out


def rounds_to_consensus(rho_period: float, period: int, eps: float) -> int:
    """Rounds for ``rho_period^(rounds/period) ≤ eps``, whole periods for time-varying graphs."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if rho_period < _EXACT:
        return period
    if rho_period >= 1.0:
        raise ValueError("ρ ≥ 1: this topology never reaches consensus")
    periods = math.ceil(math.log(eps) / math.log(rho_period) - 1e-12)
    return max(1, periods) * period


def _deviation_operator(mixings: tuple[sp.csr_array, ...]) -> sla.LinearOperator:
    """``x ↦ (W_{τ−1}…W_0 − J) x`` without forming anything dense."""
    n = mixings[0].shape[0]

    def apply(x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, dtype=np.float64).reshape(n, -1)
        for w in mixings:
            y = np.asarray(w @ y)
        return np.asarray(y - y.mean(axis=0, keepdims=True))

    def apply_t(x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, dtype=np.float64).reshape(n, -1)
        for w in reversed(mixings):
            y = np.asarray(w.T @ y)
        return np.asarray(y - y.mean(axis=0, keepdims=True))

    return sla.LinearOperator((n, n), matvec=apply, rmatvec=apply_t, matmat=apply, dtype=float)


def _is_symmetric(w: sp.csr_array) -> bool:
    diff = w - w.T
    return diff.nnz == 0 or float(np.abs(diff.data).max()) < 1e-12


def spectral_norm(topology: Topology) -> float:
    """``‖W_{τ−1}…W_0 − 11ᵀ/n‖₂`` over one period (``‖W − J‖₂`` for a static graph)."""
    mixings = topology.mixings
    n = topology.n
    if n == 1:
        return 0.0
    symmetric = len(mixings) == 1 and _is_symmetric(mixings[0])
    if n <= DENSE_LIMIT:
        prod = np.eye(n)
        for w in mixings:
            prod = w @ prod
        dev = prod - 1.0 / n
        if symmetric:
            return float(np.abs(np.linalg.eigvalsh((dev + dev.T) / 2)).max())
        return float(np.linalg.norm(dev, 2))
    op = _deviation_operator(mixings)
    rng = np.random.default_rng(0)
    probe = rng.standard_normal((n, 2))
    if np.abs(op.matmat(probe)).max() < _EXACT:
        # A nonzero operator maps random vectors to zero with probability 0: P − J = 0
        # (exact averaging over the period). ARPACK cannot start from a zero image.
        return 0.0
    v0 = probe[:, 0]
    if symmetric:
        vals = sla.eigsh(op, k=1, which="LM", v0=v0, tol=1e-10, return_eigenvectors=False)
        return float(np.abs(vals).max())
    sv = sla.svds(op, k=1, v0=v0, tol=1e-10, return_singular_vectors=False)
    return float(sv.max())


def diameter(topology: Topology) -> int:
    """Longest shortest path (in hops) of the union graph over one period."""
    union = topology.union_graph()
    n = topology.n
    if n == 1:
        return 0
    if not union.is_directed():
        # Eccentricity bounds (Takes & Kosters) need a handful of BFS runs, not n.
        return int(nx.diameter(union, usebounds=True))
    adj = sp.csr_array(
        (np.ones(union.number_of_edges()), tuple(np.array(list(union.edges())).T)), shape=(n, n)
    )
    best = 0
    chunk = max(1, 2_000_000 // n)  # bound the distance block to ~16 MB
    for start in range(0, n, chunk):
        dist = csgraph.shortest_path(
            adj,
            directed=topology.directed,
            unweighted=True,
            indices=np.arange(start, min(n, start + chunk)),
        )
        best = max(best, int(dist.max()))
    return best


def analyze(topology: Topology, model_bytes: int = 1_000_000) -> Analysis:
    """Spectral gap, rounds to consensus, degrees, diameter and traffic per node per round.

    ``model_bytes`` is the size M of one model; a node sends it once to each peer it talks to
    in a round (its out-degree).
    """
    rho_period = spectral_norm(topology)
    rho = rho_period ** (1.0 / topology.period)
    out_degrees: list[int] = []
    edges = 0
    for g in topology.graphs:
        degs = g.out_degree() if g.is_directed() else g.degree()
        out_degrees += [int(d) for _, d in degs]
        edges += g.number_of_edges()
    deg = np.array(out_degrees)
    messages = float(deg.mean())
    return Analysis(
        name=topology.name,
        n=topology.n,
        period=topology.period,
        directed=topology.directed,
        rho=rho,
        rho_period=rho_period,
        spectral_gap=1.0 - rho,
        edges=round(edges / topology.period),
        degree_min=int(deg.min()),
        degree_mean=messages,
        degree_max=int(deg.max()),
        diameter=diameter(topology),
        messages_per_node_round=messages,
        model_bytes=model_bytes,
        bytes_per_node_round=messages * model_bytes,
    )
