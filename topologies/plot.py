"""Pictures of a topology: the graph and its predicted consensus curve (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

from topologies.analysis import Analysis
from topologies.graphs import Topology

MAX_DRAWN_NODES = 512
"""Larger graphs get a degree histogram instead of a drawing (a hairball says nothing)."""


def plot(topology: Topology, analysis: Analysis, path: str | Path) -> Path:
    """Write a PNG: the graph (or its degree histogram) beside ρ^t against rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    union = topology.union_graph()
    if topology.n <= MAX_DRAWN_NODES:
        layout = (
            nx.circular_layout(union)
            if topology.name in {"ring", "exponential", "one_peer_exponential"}
            else nx.spring_layout(union, seed=0)
        )
        nx.draw_networkx(
            union,
            pos=layout,
            ax=left,
            node_size=max(10, 300 - topology.n),
            with_labels=topology.n <= 32,
            arrows=topology.directed,
            width=0.5,
        )
        left.set_title(f"{topology.name}, n={topology.n} (union over {topology.period} round(s))")
        left.set_axis_off()
    else:
        degs = [d for _, d in union.degree()]
        left.hist(degs, bins=min(50, max(degs) - min(degs) + 1))
        left.set_xlabel("degree")
        left.set_ylabel("nodes")
        left.set_title(f"{topology.name}, n={topology.n}: degree histogram")
    horizon = max(10, min(analysis.rounds_to(1e-6), 10_000))
    t = np.arange(horizon + 1)
    with np.errstate(divide="ignore"):
        curve = analysis.rho**t if analysis.rho > 0 else np.where(t < analysis.period, 1.0, 0.0)
    right.semilogy(t, np.maximum(curve, 1e-12))
    right.axhline(1e-3, linestyle=":", color="grey")
    right.set_xlabel("round t")
    right.set_ylabel("predicted disagreement ρ^t")
    right.set_title(f"ρ = {analysis.rho:.4g}, gap = {analysis.spectral_gap:.4g}")
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
