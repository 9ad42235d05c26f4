"""Figures (PNG, matplotlib's Agg backend) from run results.

Theory of operation: each figure takes labelled groups of results (one group per curve,
several seeds per group) and plots the seed mean per round:

- ``accuracy.png``: mean test accuracy across peers vs round, one line per group;
- ``consensus.png``: consensus distance ‖X − X̄‖_F/√N vs round (log scale) with a dashed
  reference c·ρ^t of the same colour, ρ from ``topologies.analyze``, anchored at the first
  round where the distance is non-zero (gossip with gradients does not decay to 0; the
  line shows the rate mixing alone would give);
- ``accuracy_vs_epsilon.png``: accuracy against ε — per round for each DP group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim.results import RunResult


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    return fig, ax


def _mean_series(
    results: Sequence[RunResult], field: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rounds = np.array([r.round for r in results[0].records], dtype=np.float64)
    values = np.array(
        [[float(getattr(rec, field)) for rec in res.records] for res in results], dtype=np.float64
    )
    return rounds, values.mean(axis=0)


def _save(fig: Any, ax: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_plot(groups: Mapping[str, Sequence[RunResult]], path: Path) -> Path:
    """Test accuracy vs round: mean over peers (solid) and worst peer (dotted) per group."""
    fig, ax = _figure()
    floor = 1.0
    for label, results in groups.items():
        rounds, acc = _mean_series(results, "accuracy_mean")
        _, worst = _mean_series(results, "accuracy_min")
        (line,) = ax.plot(rounds, acc, label=label)
        ax.plot(rounds, worst, ":", color=line.get_color(), linewidth=1.0)
        settled = worst[len(worst) // 10 :]
        floor = min(floor, float(settled.min()) if len(settled) else 0.0)
    # Zoom on the settled part: the first rounds' climb from chance would flatten the rest.
    ax.set_ylim(max(0.0, floor - 0.03), 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (solid: peer mean, dotted: worst peer)")
    return _save(fig, ax, path)


def consensus_plot(groups: Mapping[str, Sequence[RunResult]], path: Path) -> Path:
    """Consensus distance vs round with the theoretical ρ^t reference lines."""
    fig, ax = _figure()
    low, high = np.inf, 0.0
    for label, results in groups.items():
        rounds, dist = _mean_series(results, "consensus_distance")
        shown = np.where(dist > 0, dist, np.nan)  # log scale: 0 (identical models) is off-axis
        (line,) = ax.plot(rounds, shown, label=label)
        if np.isfinite(shown).any():
            low = min(low, float(np.nanmin(shown)))
            high = max(high, float(np.nanmax(shown)))
        rho = results[0].rho
        nonzero = np.flatnonzero(dist > 0)
        if 0.0 < rho < 1.0 and len(nonzero):
            t0 = int(nonzero[0])
            ref = dist[t0] * rho ** (rounds - rounds[t0])
            ax.plot(rounds[t0:], ref[t0:], "--", color=line.get_color(), label=f"ρ^t, ρ={rho:.3f}")
    ax.set_yscale("log")
    if high > 0.0:
        # Keep the measured curves readable; reference lines may run off the bottom.
        ax.set_ylim(max(low / 10.0, high * 1e-17), high * 2.0)
    ax.set_xlabel("round")
    ax.set_ylabel("consensus distance ‖X − X̄‖_F / √N")
    return _save(fig, ax, path)


def epsilon_plot(groups: Mapping[str, Sequence[RunResult]], path: Path) -> Path | None:
    """Accuracy vs ε (per round) for the groups that ran with DP; None if none did."""
    fig, ax = _figure()
    drawn = False
    for label, results in groups.items():
        if results[0].records[-1].epsilon is None:
            continue
        eps = np.array([r.epsilon or 0.0 for r in results[0].records[1:]])
        _, acc = _mean_series(results, "accuracy_mean")
        ax.plot(eps, acc[1:], marker=".", label=label)
        drawn = True
    if not drawn:
        from matplotlib import pyplot as plt

        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("ε (δ from the scenario)")
    ax.set_ylabel("test accuracy (mean over peers)")
    return _save(fig, ax, path)


def all_plots(groups: Mapping[str, Sequence[RunResult]], out: Path) -> list[Path]:
    """Every figure for ``groups`` into directory ``out``; returns the files written."""
    written = [
        accuracy_plot(groups, out / "accuracy.png"),
        consensus_plot(groups, out / "consensus.png"),
    ]
    eps = epsilon_plot(groups, out / "accuracy_vs_epsilon.png")
    if eps is not None:
        written.append(eps)
    return written
