"""The statistics drift monitoring rests on: quantile bins, PSI, noise floors, label shares.

Theory of operation: pure functions of arrays (no state, no I/O), so the monitor in
``drift`` is a thin history over them and each can be checked against known values and
properties (PSI is non-negative and zero on itself). ``noise_floor`` is how large a PSI
two samples of one distribution reach by chance, which small sites need.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import DataError


def quantile_edges(reference: NDArray[np.floating], bins: int) -> NDArray[np.float64]:
    """Interior bin edges at the reference's quantiles (duplicates merged for discrete data)."""
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.unique(np.quantile(np.asarray(reference, np.float64), qs))


def bin_shares(values: NDArray[np.floating], edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins the edges define."""
    index = np.searchsorted(edges, np.asarray(values, np.float64), side="right")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def psi_from_shares(
    reference: NDArray[np.float64], current: NDArray[np.float64], epsilon: float = 1e-4
) -> float:
    """Population stability index of two share vectors, ``epsilon``-smoothed."""
    r = (reference + epsilon) / (1.0 + epsilon * len(reference))
    c = (current + epsilon) / (1.0 + epsilon * len(current))
    return float(np.sum((c - r) * np.log(c / r)))


def psi(
    reference: NDArray[np.floating],
    current: NDArray[np.floating],
    bins: int = 10,
    epsilon: float = 1e-4,
) -> float:
    """PSI of one feature: bins from the reference's quantiles, applied to both samples."""
    edges = quantile_edges(reference, bins)
    return psi_from_shares(bin_shares(reference, edges), bin_shares(current, edges), epsilon)


def noise_floor(
    reference_share: NDArray[np.float64], n_ref: int, n_cur: int, alpha: float
) -> float:
    """PSI that two samples of one distribution exceed with probability about ``alpha``.

    Under no drift, PSI (a symmetrised KL divergence) is about χ²_{k−1} · (1/n_ref + 1/n_cur)
    for ``k`` occupied bins, so small samples make large PSIs by chance alone; the
    conventional cut-offs assume thousands of rows.
    """
    from scipy.stats import chi2  # lazily: scipy.stats takes a second to import

    dof = max(int(np.count_nonzero(reference_share)) - 1, 1)
    return float(chi2.ppf(1.0 - alpha, dof) * (1.0 / n_ref + 1.0 / n_cur))


def label_shares(labels: NDArray[np.integer], classes: int) -> NDArray[np.float64]:
    """Share of each class ``0 … classes-1``."""
    if labels.size and int(labels.max()) >= classes:
        raise DataError(f"label {int(labels.max())} is outside the {classes} known classes")
    counts = np.bincount(np.asarray(labels, np.int64), minlength=classes).astype(np.float64)
    return counts / max(labels.size, 1)


def total_variation(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Total-variation distance ½‖p − q‖₁, in [0, 1]."""
    return float(0.5 * np.abs(p - q).sum())
