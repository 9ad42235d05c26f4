"""Mixing matrices from ``topologies`` as torch sparse CSR tensors, with faults applied.

Theory of operation: a round of gossip is X ← W_t X with W_t the (n × n, doubly stochastic)
mixing matrix of round t; row i holds the weights node i gives to each node. We take W_t
from ``topologies`` (``topo.mixing_at(t)``, built with the scenario's weighting rule and
laziness βI + (1-β)W) and cache its torch CSR form per phase t mod period.

Faults edit W_t for one round without breaking its row sums: a dropped peer neither sends
nor receives (its row becomes e_i) and a failed link {i, j} is cut in both directions; each
removed weight moves onto the diagonal of its row. For a symmetric W the result is still
symmetric and doubly stochastic, so the average is preserved; for directed schedules
(one-peer exponential) column sums can drift while links fail — the price of a fault.

Bytes: peer i's vector is sent to every j ≠ i with W_ji ≠ 0 (column i's off-diagonal
non-zeros), which is what ``send_counts`` returns.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import NDArray

import topologies
from p2pfed.errors import ConfigError
from sim.scenario import AlgorithmSpec, TopologySpec


def to_torch_csr(matrix: Any, dtype: torch.dtype) -> torch.Tensor:
    """A scipy sparse matrix as a torch sparse CSR tensor of ``dtype``."""
    csr = sp.csr_array(matrix)
    csr.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(np.asarray(csr.data, dtype=np.float64)).to(dtype),
            size=csr.shape,
            check_invariants=True,
        )


def build_topology(spec: TopologySpec, n: int, seed: int) -> Any:
    """``topologies.build`` for the spec (or its graph file), errors as scenario errors."""
    if spec.file:
        from sim.sources import load_topology_file

        return load_topology_file(spec, n)
    try:
        return topologies.build(
            spec.name,
            n,
            seed=seed,
            mixing=spec.mixing,
            lazy_beta=spec.lazy if spec.lazy > 0.0 else None,
            **dict(spec.params),
        )
    except topologies.TopologyError as exc:
        raise ConfigError(f"scenario [topology] is invalid: {exc}") from None


class MixingSchedule:
    """W_t for every round (the topology's matrices), cached as torch CSR per phase."""

    def __init__(self, topology: Any, dtype: torch.dtype) -> None:
        self.topology = topology
        self.dtype = dtype
        self.period = max(1, int(topology.period))
        self._torch: dict[int, torch.Tensor] = {}

    def scipy_at(self, t: int) -> sp.csr_array:
        """W_t as a scipy CSR array (float64)."""
        return sp.csr_array(self.topology.mixing_at(t % self.period), dtype=np.float64)

    def torch_at(self, t: int) -> torch.Tensor:
        """W_t as a torch sparse CSR tensor (cached per phase)."""
        phase = t % self.period
        if phase not in self._torch:
            self._torch[phase] = to_torch_csr(self.scipy_at(phase), self.dtype)
        return self._torch[phase]


def with_faults(
    w: sp.csr_array,
    active: NDArray[np.bool_],
    link_failure: float,
    rng: np.random.Generator,
) -> sp.csr_array:
    """W with dropped peers isolated and each undirected link failed with the given odds."""
    coo = w.tocoo()
    rows = coo.row.astype(np.int64)
    cols = coo.col.astype(np.int64)
    vals = coo.data.astype(np.float64)
    off = rows != cols
    keep = ~off | (active[rows] & active[cols])
    if link_failure > 0.0:
        n = w.shape[0]
        pair = np.minimum(rows, cols) * n + np.maximum(rows, cols)
        unique, inverse = np.unique(pair[off], return_inverse=True)
        failed = rng.random(len(unique)) < link_failure
        keep_off = keep[off] & ~failed[inverse]
        keep[np.flatnonzero(off)] = keep_off
    removed = np.zeros(w.shape[0], dtype=np.float64)
    np.add.at(removed, rows[~keep], vals[~keep])
    diag = np.asarray(w.diagonal(), dtype=np.float64) + removed
    mask = keep & off
    n = w.shape[0]
    out = sp.coo_array(
        (
            np.concatenate([vals[mask], diag]),
            (
                np.concatenate([rows[mask], np.arange(n)]),
                np.concatenate([cols[mask], np.arange(n)]),
            ),
        ),
        shape=w.shape,
    ).tocsr()
    out.sort_indices()
    return sp.csr_array(out)


def send_counts(w: sp.csr_array) -> NDArray[np.int64]:
    """How many other peers receive peer i's vector under W (column i's off-diagonals)."""
    coo = w.tocoo()
    off = (coo.row != coo.col) & (coo.data != 0.0)
    return np.bincount(coo.col[off], minlength=w.shape[0]).astype(np.int64)


def receive_counts(w: sp.csr_array) -> NDArray[np.int64]:
    """How many other peers' vectors peer i mixes in under W (row i's off-diagonals)."""
    coo = w.tocoo()
    off = (coo.row != coo.col) & (coo.data != 0.0)
    return np.bincount(coo.row[off], minlength=w.shape[0]).astype(np.int64)


def gossip_mix(
    w: sp.csr_array, w_torch: torch.Tensor, x: torch.Tensor, spec: AlgorithmSpec
) -> torch.Tensor:
    """One gossip round: X ← W X, or ClippedGossip with ``[algorithm] robust``."""
    if spec.robust == "clipped-gossip":
        return clipped_mix(w, x, spec.byzantine_neighbours)
    return w_torch @ x


def clipped_mix(w: sp.csr_array, x: torch.Tensor, byzantine_neighbours: int) -> torch.Tensor:
    """ClippedGossip for every row of W at once (``p2pfed.collectives.robust.robust_mix``).

    Row i: x_i + Σ_j W_ij · clip(x_j − x_i, τ_i), where τ_i clips the farthest neighbours
    whose weights reach δ_i, the sum of row i's ``byzantine_neighbours`` heaviest
    off-diagonal weights. Edges are sorted per row (by weight for δ_i, by distance for τ_i)
    and the per-row sums are segment sums, so a round costs a few [E, P] tensor operations.
    """
    coo = w.tocoo()
    off = (coo.row != coo.col) & (coo.data != 0.0)
    rows = coo.row[off].astype(np.int64)
    cols = coo.col[off].astype(np.int64)
    vals = coo.data[off].astype(np.float64)
    n = w.shape[0]
    if len(rows) == 0:
        return x.clone()
    diff = (x[torch.from_numpy(cols)] - x[torch.from_numpy(rows)]).to(torch.float64)
    dist = torch.linalg.vector_norm(diff, dim=1).numpy()
    delta = _heaviest_weight_sum(rows, vals, n, byzantine_neighbours)
    tau = _adaptive_radius(rows, vals, dist, delta, n)
    scale = np.where(dist > tau[rows], tau[rows] / np.where(dist > 0, dist, 1.0), 1.0)
    coeff = torch.from_numpy(vals * scale)[:, None]
    out = x.to(torch.float64).index_add(0, torch.from_numpy(rows), coeff * diff)
    return out.to(x.dtype)


def _row_starts(rows: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Index of each sorted edge's row start (edges sorted by row)."""
    counts = np.bincount(rows, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return starts[rows].astype(np.int64)


def _heaviest_weight_sum(
    rows: NDArray[np.int64], vals: NDArray[np.float64], n: int, b: int
) -> NDArray[np.float64]:
    """δ_i: the sum of row i's b heaviest off-diagonal weights (below 1)."""
    order = np.lexsort((-vals, rows))
    r, v = rows[order], vals[order]
    rank = np.arange(len(r)) - _row_starts(r, n)
    delta = np.bincount(r, weights=np.where(rank < b, v, 0.0), minlength=n)
    return np.minimum(delta, np.nextafter(1.0, 0.0))


def _adaptive_radius(
    rows: NDArray[np.int64],
    vals: NDArray[np.float64],
    dist: NDArray[np.float64],
    delta: NDArray[np.float64],
    n: int,
) -> NDArray[np.float64]:
    """τ_i: the distance of row i's farthest neighbour left after the weight δ_i is taken."""
    order = np.lexsort((-dist, rows))
    r, v, d = rows[order], vals[order], dist[order]
    # Weight of the farther neighbours of the same row: a segment sum from one cumsum (its
    # round-off, ~1e-14 here, is far below the rule's 1e-12 slack).
    starts = _row_starts(r, n)
    total = np.cumsum(v)
    before = total - v - (total[starts] - v[starts])
    kept = before >= delta[r] - 1e-12
    tau = np.zeros(n, dtype=np.float64)
    np.maximum.at(tau, r[kept], d[kept])
    return tau
