"""Single runs and resumable sweeps over scenario grids.

Theory of operation: a sweep is the Cartesian product of ``--set PATH=v1,v2,...`` lists
times ``seeds`` consecutive seeds (base seed, base + 1, ...). Each point is a complete
``Scenario``; its digest (SHA-256 of the canonical scenario and the engine version) names its
result file ``points/<digest>.json``. Before running a point we look for that file: if it
parses and carries the same digest, the point is done and is skipped, so an interrupted
sweep resumes where it stopped and a changed scenario is recomputed rather than mistaken for
an old one. Points run one after another (the machine's cores are better spent inside
torch than on parallel points); ``sim.raysweep`` runs them as Ray tasks into the same store.
Afterwards ``sweep.csv`` gathers every point's records and the figures are drawn with one
line per grid label, averaged over seeds (a min–max band over them).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from p2pfed.durable import atomic_write
from p2pfed.errors import ConfigError
from sim.overrides import parse_value, with_overrides
from sim.results import RunResult, read_result, records_csv, theoretical_rho
from sim.scenario import Scalar, Scenario


@dataclasses.dataclass(frozen=True, slots=True)
class SweepPoint:
    """One grid point: its overrides (for labels), seed and full scenario."""

    overrides: tuple[tuple[str, Scalar], ...]
    seed: int
    scenario: Scenario

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides) or self.scenario.name

    @property
    def digest(self) -> str:
        return self.scenario.digest()


def parse_set(items: Sequence[str]) -> list[tuple[str, list[Scalar]]]:
    """``["topology=ring,torus", "n=16,64"]`` → ``[("topology", ["ring", "torus"]), ...]``."""
    grid: list[tuple[str, list[Scalar]]] = []
    for item in items:
        path, sep, values = item.partition("=")
        if not sep or not path.strip() or not values.strip():
            raise ConfigError(f"--set {item!r} must look like PATH=VALUE[,VALUE...]")
        parsed = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        grid.append((path.strip(), parsed))
    return grid


def grid_points(
    base: Scenario, grid: Sequence[tuple[str, list[Scalar]]], seeds: int
) -> list[SweepPoint]:
    """Every point of the grid times ``seeds`` seeds, in a stable order."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, not {seeds}")
    paths = [p for p, _ in grid]
    if len(set(paths)) != len(paths):
        raise ConfigError("each --set path may be given once")
    points: list[SweepPoint] = []
    for combo in itertools.product(*(values for _, values in grid)):
        overrides = tuple(zip(paths, combo, strict=True))
        first = dict(overrides).get("seed", base.seed)  # --set seed=a,b: K seeds from each
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise ConfigError(f"--set seed values must be integers >= 0, not {first!r}")
        for k in range(seeds):
            seed = first + k
            scenario = with_overrides(base, {**dict(overrides), "seed": seed})
            points.append(SweepPoint(overrides, seed, scenario))
    return points


def run_point(
    scenario: Scenario, on_round: Callable[[int], None] | None = None, threads: int = 1
) -> RunResult:
    """Play one scenario and package its result (records and theoretical ρ)."""
    from sim.engine import Simulator  # torch: imported only when a point actually runs

    sim = Simulator(scenario)
    records = sim.run(on_round, threads)
    rho = theoretical_rho(scenario, sim.topology, sim.model.size)
    return RunResult(scenario.digest(), scenario.to_dict(), rho, tuple(records), sim.empty_sites)


def point_path(out: Path, point: SweepPoint) -> Path:
    """Where a point's result lives."""
    return out / "points" / f"{point.digest}.json"


def run_sweep(
    points: Sequence[SweepPoint],
    out: Path,
    on_point: Callable[[SweepPoint, bool], None] | None = None,
    on_round: Callable[[int], None] | None = None,
    threads: int = 1,
) -> list[RunResult]:
    """Run the points not already stored in ``out``; returns every point's result in order.

    ``on_point(point, skipped)`` is called before each point (for progress displays).
    """
    results: list[RunResult] = []
    for point in points:
        path = point_path(out, point)
        stored = read_result(path, point.digest)
        if on_point is not None:
            on_point(point, stored is not None)
        if stored is None:
            stored = run_point(point.scenario, on_round, threads)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, stored.to_json().encode(), 0o644)
        results.append(stored)
    return results


def sweep_csv(points: Sequence[SweepPoint], results: Sequence[RunResult]) -> str:
    """All points' records in one CSV: grid columns, seed and digest first."""
    parts: list[str] = []
    for i, (point, result) in enumerate(zip(points, results, strict=True)):
        extra: dict[str, Scalar] = {k: v for k, v in point.overrides}
        extra["seed"] = point.seed
        extra["rho"] = result.rho
        extra["digest"] = point.digest[:16]
        parts.append(records_csv(result.records, extra, header=i == 0))
    return "".join(parts)


def group_by_label(
    points: Sequence[SweepPoint], results: Sequence[RunResult]
) -> Mapping[str, list[RunResult]]:
    """Results grouped by grid label (seeds of one label together), in grid order."""
    groups: dict[str, list[RunResult]] = {}
    for point, result in zip(points, results, strict=True):
        groups.setdefault(point.label, []).append(result)
    return groups


def summary_rows(
    points: Sequence[SweepPoint], results: Sequence[RunResult]
) -> list[dict[str, Scalar]]:
    """One row per label: final accuracy (mean, min over seeds), consensus, bytes, ε, empty sites.

    ``empty_sites`` is the most any seed's partition left without a training example.
    """
    rows: list[dict[str, Scalar]] = []
    for label, group in group_by_label(points, results).items():
        finals = [r.records[-1] for r in group]
        eps = finals[0].epsilon
        rows.append(
            {
                "label": label,
                "seeds": len(group),
                "rho": round(group[0].rho, 6),
                "final_accuracy_mean": round(sum(f.accuracy_mean for f in finals) / len(finals), 4),
                "final_accuracy_min": round(min(f.accuracy_min for f in finals), 4),
                "final_consensus": float(
                    f"{sum(f.consensus_distance for f in finals) / len(finals):.4g}"
                ),
                "bytes_per_peer_total": round(
                    sum(f.bytes_cumulative_mean for f in finals) / len(finals)
                ),
                "epsilon": "" if eps is None else round(eps, 3),
                "empty_sites": max(r.empty_sites for r in group),
            }
        )
    return rows


def markdown_table(rows: Sequence[Mapping[str, Scalar]]) -> str:
    """Rows as a GitHub-flavoured Markdown table."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
