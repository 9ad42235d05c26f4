"""Figures (PNG, matplotlib's Agg backend) from run results.

Theory of operation: each figure takes labelled groups of results (one group per curve,
several seeds per group) and plots the seed mean per round with a shaded band from the
smallest to the largest seed; its title says N, the partition (α for Dirichlet) and the
number of seeds, so a figure read alone says what was run.

- ``accuracy.png``: mean test accuracy across peers vs round, one line per group, and the
  worst peer (dotted) as the *minimum over seeds* of each seed's worst peer — the statistic
  of the summary's ``final_accuracy_min``, so the figure and the table agree;
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


def _seed_values(
    results: Sequence[RunResult], field: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Rounds and a ``[seeds, rounds]`` table of ``field``."""
    rounds = np.array([r.round for r in results[0].records], dtype=np.float64)
    values = np.array(
        [[float(getattr(rec, field)) for rec in res.records] for res in results], dtype=np.float64
    )
    return rounds, values


def _mean_series(
    results: Sequence[RunResult], field: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rounds, values = _seed_values(results, field)
    return rounds, values.mean(axis=0)


def accuracy_series(results: Sequence[RunResult]) -> dict[str, NDArray[np.float64]]:
    """What ``accuracy.png`` draws for one group: rounds, seed mean, band, worst peer."""
    rounds, values = _seed_values(results, "accuracy_mean")
    _, worst = _seed_values(results, "accuracy_min")
    return {
        "rounds": rounds,
        "mean": values.mean(axis=0),
        "low": values.min(axis=0),
        "high": values.max(axis=0),
        "worst": worst.min(axis=0),  # as summary_rows' final_accuracy_min
    }


def _values(results: Sequence[RunResult], table: str, key: str) -> list[Any]:
    return [r.scenario.get(table, {}).get(key) if table else r.scenario.get(key) for r in results]


def figure_title(groups: Mapping[str, Sequence[RunResult]], what: str) -> str:
    """``what`` with N, the partition (α for Dirichlet and quantity skew) and the seeds."""
    everything = [r for group in groups.values() for r in group]

    def listed(values: list[Any]) -> str:
        distinct = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in distinct)

    schemes = _values(everything, "partition", "scheme")
    skewed = [r for r, s in zip(everything, schemes, strict=True) if s in ("dirichlet", "quantity")]
    parts = [f"N = {listed(_values(everything, '', 'n'))}"]
    if skewed:
        parts.append(f"{listed(schemes)} α = {listed(_values(skewed, 'partition', 'alpha'))}")
    else:
        parts.append(f"{listed(schemes)} split")
    parts.append(f"seeds per curve: {listed([len(g) for g in groups.values()])}")
    return f"{what}\n" + ", ".join(parts)


def _save(fig: Any, ax: Any, path: Path, title: str) -> Path:
    from matplotlib import pyplot as plt

    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_plot(groups: Mapping[str, Sequence[RunResult]], path: Path) -> Path:
    """Test accuracy vs round: peer mean (solid, seed band) and worst peer (dotted) per group."""
    fig, ax = _figure()
    floor = 1.0
    for label, results in groups.items():
        series = accuracy_series(results)
        rounds, acc, worst = series["rounds"], series["mean"], series["worst"]
        (line,) = ax.plot(rounds, acc, label=label)
        ax.fill_between(rounds, series["low"], series["high"], color=line.get_color(), alpha=0.2)
        ax.plot(rounds, worst, ":", color=line.get_color(), linewidth=1.0)
        settled = worst[len(worst) // 10 :]
        floor = min(floor, float(settled.min()) if len(settled) else 0.0)
    # Zoom on the settled part: the first rounds' climb from chance would flatten the rest.
    ax.set_ylim(max(0.0, floor - 0.03), 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (solid: peer mean, dotted: worst peer)")
    title = "test accuracy: seed mean, band min–max over seeds, dotted: worst peer of any seed"
    return _save(fig, ax, path, figure_title(groups, title))


def consensus_plot(groups: Mapping[str, Sequence[RunResult]], path: Path) -> Path:
    """Consensus distance vs round with the theoretical ρ^t reference lines."""
    fig, ax = _figure()
    low, high = np.inf, 0.0
    for label, results in groups.items():
        rounds, values = _seed_values(results, "consensus_distance")
        dist = values.mean(axis=0)
        shown = np.where(dist > 0, dist, np.nan)  # log scale: 0 (identical models) is off-axis
        (line,) = ax.plot(rounds, shown, label=label)
        band_low, band_high = values.min(axis=0), values.max(axis=0)
        band = (band_low > 0) & (band_high > 0)
        if band.any() and len(results) > 1:
            ax.fill_between(
                rounds,
                np.where(band, band_low, np.nan),
                np.where(band, band_high, np.nan),
                color=line.get_color(),
                alpha=0.2,
            )
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
    title = "consensus distance: seed mean, band min–max over seeds; dashed: ρ^t"
    return _save(fig, ax, path, figure_title(groups, title))


def epsilon_plot(groups: Mapping[str, Sequence[RunResult]], path: Path) -> Path | None:
    """Accuracy vs ε (per round) for the groups that ran with DP; None if none did."""
    fig, ax = _figure()
    drawn = False
    deltas = set()
    for label, results in groups.items():
        if results[0].records[-1].epsilon is None:
            continue
        eps = np.array([r.epsilon or 0.0 for r in results[0].records[1:]])
        _, acc = _mean_series(results, "accuracy_mean")
        ax.plot(eps, acc[1:], marker=".", label=label)
        deltas.update(_values(results, "privacy", "delta"))
        drawn = True
    if not drawn:
        from matplotlib import pyplot as plt

        plt.close(fig)
        return None
    ax.set_xscale("log")
    delta = ", ".join(f"{d:g}" for d in sorted(d for d in deltas if d is not None))
    ax.set_xlabel(f"ε after each round (δ = {delta})")
    ax.set_ylabel("test accuracy (mean over peers and seeds)")
    return _save(fig, ax, path, figure_title(groups, "test accuracy vs privacy spent"))


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
