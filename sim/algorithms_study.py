"""The non-IID study of docs/simulation.md: every algorithm × Dirichlet α × topology × seed.

Theory of operation: one base scenario (digits, 10 classes, logistic regression, N sites,
Dirichlet label skew) is played for each Dirichlet α, each seed and each method. The exact-mean
methods (``fedavg``, ``fedprox``, ``scaffold`` and FedAvg with quality selection of half the
sites) take no graph, so they run once per (α, seed); the decentralised ones (``gossip``,
``gradient_tracking``) run on each topology. Every point goes through ``sim.sweep.run_point``
(the same code as ``p2pfed sim sweep``), and the table reports, as mean over seeds:

- final accuracy: mean over sites of each site's model on the shared test set;
- worst site: the lowest site's accuracy on that test set (then averaged over seeds);
- rounds to 0.9 of final: first evaluated round whose mean accuracy reaches 0.9 × the final.

Run: ``python -m sim.algorithms_study [--n 32] [--rounds 40] [--seeds 3] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sim.overrides import with_overrides
from sim.results import RunResult
from sim.scenario import Scalar, Scenario, scenario_from_dict
from sim.sweep import markdown_table, run_point

ALPHAS = (0.1, 0.5, 1.0)
TOPOLOGIES = ("ring", "exponential", "complete")
#: (label, overrides) of the exact-mean methods (no graph).
EXACT: tuple[tuple[str, dict[str, Scalar]], ...] = (
    ("fedavg", {"algorithm": "fedavg"}),
    ("fedprox μ=0.1", {"algorithm": "fedprox", "algorithm.mu": 0.1}),
    ("scaffold", {"algorithm": "scaffold"}),
    (
        "fedavg, quality ½",
        {"algorithm": "fedavg", "selection.mode": "quality", "selection.fraction": 0.5},
    ),
)
DECENTRALISED = ("gossip", "gradient_tracking")


def base_scenario(n: int, rounds: int) -> Scenario:
    """The study's fixed part: digits, logistic regression, 5 local steps of 16 per round."""
    return scenario_from_dict(
        {
            "name": "algorithms_study",
            "n": n,
            "rounds": rounds,
            "eval_every": 1,
            "data": {"name": "digits"},
            "partition": {"scheme": "dirichlet"},
            "model": {"name": "logreg"},
            "training": {"lr": 0.05, "local_steps": 5, "batch_size": 16},
        }
    )


def rounds_to(result: RunResult, share: float) -> int:
    """First evaluated round whose mean accuracy reaches ``share`` of the final one."""
    goal = share * result.records[-1].accuracy_mean
    return next(r.round for r in result.records if r.accuracy_mean >= goal)


def methods() -> list[tuple[str, str, dict[str, Scalar]]]:
    """(method, topology, overrides) of every study row."""
    rows = [(label, "—", over) for label, over in EXACT]
    for algorithm in DECENTRALISED:
        rows += [(algorithm, t, {"algorithm": algorithm, "topology": t}) for t in TOPOLOGIES]
    return rows


def study(n: int, rounds: int, seeds: int) -> list[dict[str, Scalar]]:
    """One table row per (method, topology, α), statistics over ``seeds`` seeds."""
    base = base_scenario(n, rounds)
    rows: list[dict[str, Scalar]] = []
    for method, topology, overrides in methods():
        for alpha in ALPHAS:
            results = [
                run_point(
                    with_overrides(base, {**overrides, "partition.alpha": alpha, "seed": seed})
                )
                for seed in range(seeds)
            ]
            finals = [r.records[-1] for r in results]
            rows.append(
                {
                    "method": method,
                    "topology": topology,
                    "alpha": alpha,
                    "final_accuracy": round(statistics.mean(f.accuracy_mean for f in finals), 3),
                    "worst_site": round(statistics.mean(f.accuracy_min for f in finals), 3),
                    "rounds_to_0.9": round(statistics.mean(rounds_to(r, 0.9) for r in results), 1),
                    "empty_sites": max(r.empty_sites for r in results),
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def pivot(rows: Sequence[dict[str, Scalar]]) -> str:
    """The table of docs/simulation.md: one line per method and graph, one column per α."""
    cells: dict[tuple[Scalar, Scalar], dict[Scalar, str]] = {}
    for row in rows:
        text = (
            f"{float(row['final_accuracy']):.3f} / {float(row['worst_site']):.3f} / "
            f"{float(row['rounds_to_0.9']):.1f}"
        )
        cells.setdefault((row["method"], row["topology"]), {})[row["alpha"]] = text
    head = ["| method | graph | " + " | ".join(f"α = {a}" for a in ALPHAS) + " |"]
    head.append("|---|---|" + "---|" * len(ALPHAS))
    body = [
        f"| {method} | {graph} | " + " | ".join(by_alpha[a] for a in ALPHAS) + " |"
        for (method, graph), by_alpha in cells.items()
    ]
    return "\n".join(head + body) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study and print (or write) its Markdown tables: every row, then the pivot."""
    parser = argparse.ArgumentParser(prog="python -m sim.algorithms_study", description=__doc__)
    parser.add_argument("--n", type=int, default=32, help="sites (32)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds (40)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..k-1 (3)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = study(args.n, args.rounds, args.seeds)
    table = markdown_table(rows) + "\n" + pivot(rows)
    print(table, end="")
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
