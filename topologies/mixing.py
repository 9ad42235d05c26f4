"""Mixing matrices: the weights with which peers average their neighbours' values.

Theory of operation: one gossip step is ``x ← W x``. Row ``i`` of ``W`` holds the weights
node ``i`` gives to each value it mixes in (its own and its in-neighbours'). For consensus to
the exact average, ``W`` must be non-negative and doubly stochastic (rows *and* columns sum to
one), and it may only put weight where the graph has an edge. Every matrix built here is
checked for those three properties by ``validate_mixing`` before it is returned.

Edge convention for directed graphs: an edge ``u → v`` means ``u`` sends to ``v``, so it
allows ``W[v, u] > 0``.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp

from topologies.errors import TopologyError

_TOL = 1e-9


def _degrees(graph: nx.Graph) -> np.ndarray:
    n = graph.number_of_nodes()
    deg = np.zeros(n, dtype=np.int64)
    for node, d in graph.degree():
        deg[node] = d
    return deg


def _edge_arrays(graph: nx.Graph) -> tuple[np.ndarray, np.ndarray]:
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
    return edges[:, 0], edges[:, 1]


def _from_parts(
    n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, diag: np.ndarray
) -> sp.csr_array:
    idx = np.arange(n)
    r = np.concatenate([rows, idx])
    c = np.concatenate([cols, idx])
    v = np.concatenate([vals, diag])
    keep = v != 0.0
    return sp.csr_array((v[keep], (r[keep], c[keep])), shape=(n, n))


def metropolis_hastings(graph: nx.Graph) -> sp.csr_array:
    """``W_ij = 1/(1+max(d_i, d_j))`` on edges, the rest on the diagonal (undirected graphs)."""
    _require_undirected(graph, "Metropolis–Hastings")
    n = graph.number_of_nodes()
    deg = _degrees(graph)
    u, v = _edge_arrays(graph)
    w = 1.0 / (1.0 + np.maximum(deg[u], deg[v]))
    rows, cols, vals = np.concatenate([u, v]), np.concatenate([v, u]), np.concatenate([w, w])
    off = np.bincount(rows, weights=vals, minlength=n)
    return validate_mixing(_from_parts(n, rows, cols, vals, 1.0 - off), graph)


def max_degree(graph: nx.Graph) -> sp.csr_array:
    """``W_ij = 1/(1+d_max)`` on every edge, the rest on the diagonal (undirected graphs)."""
    _require_undirected(graph, "max-degree")
    n = graph.number_of_nodes()
    deg = _degrees(graph)
    u, v = _edge_arrays(graph)
    w = np.full(len(u), 1.0 / (1.0 + deg.max()))
    rows, cols, vals = np.concatenate([u, v]), np.concatenate([v, u]), np.concatenate([w, w])
    return validate_mixing(_from_parts(n, rows, cols, vals, 1.0 - deg / (1.0 + deg.max())), graph)


def uniform(graph: nx.Graph) -> sp.csr_array:
    """``1/(d+1)`` to oneself and to each in-neighbour; needs a d-regular graph (or digraph)."""
    n = graph.number_of_nodes()
    if graph.is_directed():
        ins = {d for _, d in graph.in_degree()}
        outs = {d for _, d in graph.out_degree()}
        if len(ins) != 1 or ins != outs:
            raise TopologyError(
                "uniform mixing needs every node to have the same in- and out-degree"
            )
        d = ins.pop()
        senders, receivers = _edge_arrays(graph)
        rows, cols = receivers, senders
    else:
        degs = {d for _, d in graph.degree()}
        if len(degs) != 1:
            raise TopologyError(
                f"uniform mixing needs a regular graph; degrees range {min(degs)}..{max(degs)}"
            )
        d = degs.pop()
        u, v = _edge_arrays(graph)
        rows, cols = np.concatenate([u, v]), np.concatenate([v, u])
    w = 1.0 / (d + 1.0)
    vals = np.full(len(rows), w)
    return validate_mixing(_from_parts(n, rows, cols, vals, np.full(n, w)), graph)


def from_edge_weights(graph: nx.Graph, attr: str = "weight") -> sp.csr_array:
    """Use the graph's own edge weights; the diagonal takes what each row leaves over."""
    n = graph.number_of_nodes()
    rows, cols, vals = [], [], []
    for a, b, data in graph.edges(data=True):
        if attr not in data:
            raise TopologyError(f"edge ({a}, {b}) has no {attr!r} while other edges have one")
        w = float(data[attr])
        if graph.is_directed():
            rows.append(b)
            cols.append(a)
            vals.append(w)
        else:
            rows += [a, b]
            cols += [b, a]
            vals += [w, w]
    r, c, v = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(vals)
    diag = 1.0 - np.bincount(r, weights=v, minlength=n)
    if n and diag.min() < -_TOL:
        bad = int(diag.argmin())
        raise TopologyError(f"edge weights into node {bad} sum to {1.0 - diag[bad]:.6g}, over 1")
    return validate_mixing(_from_parts(n, r, c, v, diag), graph)


def lazy(mixing: sp.csr_array, beta: float = 0.5) -> sp.csr_array:
    """``beta·I + (1−beta)·W``: slower but never oscillates (all eigenvalues ≥ 2·beta − 1)."""
    if not 0.0 <= beta < 1.0:
        raise TopologyError(f"lazy weight beta must be in [0, 1), got {beta}")
    n = mixing.shape[0]
    return sp.csr_array(beta * sp.identity(n, format="csr") + (1.0 - beta) * mixing)


def validate_mixing(mixing: sp.csr_array, graph: nx.Graph | None = None) -> sp.csr_array:
    """Check non-negativity, double stochasticity and (given a graph) support; return it."""
    w = sp.csr_array(mixing, dtype=np.float64)
    n = w.shape[0]
    if w.shape != (n, n):
        raise TopologyError(f"a mixing matrix must be square, got shape {w.shape}")
    if w.nnz and not np.all(np.isfinite(w.data)):
        raise TopologyError("mixing matrix has a NaN or infinite entry")
    if w.nnz and w.data.min() < -_TOL:
        raise TopologyError(f"mixing matrix has a negative entry ({w.data.min():.3g})")
    rows = np.asarray(w.sum(axis=1)).ravel()
    cols = np.asarray(w.sum(axis=0)).ravel()
    if np.abs(rows - 1.0).max(initial=0.0) > _TOL:
        bad = int(np.abs(rows - 1.0).argmax())
        raise TopologyError(f"mixing matrix row {bad} sums to {rows[bad]:.12g}, not 1")
    if np.abs(cols - 1.0).max(initial=0.0) > _TOL:
        bad = int(np.abs(cols - 1.0).argmax())
        raise TopologyError(f"mixing matrix column {bad} sums to {cols[bad]:.12g}, not 1")
    if graph is not None:
        coo = w.tocoo()
        for i, j, val in zip(coo.row, coo.col, coo.data, strict=True):
            if i == j or val == 0.0:
                continue
            allowed = (
                graph.has_edge(int(j), int(i))
                if graph.is_directed()
                else graph.has_edge(int(i), int(j))
            )
            if not allowed:
                raise TopologyError(f"mixing matrix gives weight to ({i}, {j}), not an edge")
    w.data[w.data < 0.0] = 0.0  # clear round-off negatives within tolerance
    return w


def _require_undirected(graph: nx.Graph, rule: str) -> None:
    if graph.is_directed():
        raise TopologyError(f"{rule} weights need an undirected graph; use uniform mixing")


MIXING_RULES = {
    "metropolis": metropolis_hastings,
    "max_degree": max_degree,
    "uniform": uniform,
    "weights": from_edge_weights,
}
"""Mixing rules by name, as accepted by ``topologies.build(..., mixing=NAME)``."""
