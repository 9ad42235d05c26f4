"""``p2pfed sim``: run simulation scenarios and sweeps (see docs/simulation.md).

Theory of operation: ``run`` plays one scenario and writes ``metrics.csv``, ``result.json``
and figures into ``--out``; ``sweep`` expands ``--set`` grids and ``--seeds`` into points,
skipping points whose result file is already stored (resume), and writes ``sweep.csv``,
``summary.md`` and figures. A scenario argument is a TOML path, or the name of a scenario
shipped in ``sim/scenarios`` (``p2pfed sim list`` shows them). torch and the simulator are
imported inside the command functions so ``p2pfed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

from p2pfed.cli import add_group
from p2pfed.errors import ConfigError

NAME = "sim"
HELP = "Simulate many virtual peers: run a scenario, sweep a grid, list shipped scenarios."


def bundled_scenarios() -> dict[str, Path]:
    """Scenario files shipped in ``sim/scenarios``, by stem."""
    folder = resources.files("sim") / "scenarios"
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name[: -len(".toml")]] = Path(str(entry))
    return dict(sorted(found.items()))


def resolve_scenario(text: str) -> Path:
    """A scenario argument as a file path: an existing path, or a shipped scenario's name."""
    path = Path(text)
    if path.exists():
        return path
    shipped = bundled_scenarios()
    if text in shipped:
        return shipped[text]
    raise ConfigError(
        f"scenario {text!r} is neither a file nor a shipped scenario "
        f"({', '.join(shipped) or 'none shipped'})"
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``run``, ``sweep`` and ``list``."""
    sub = add_group(parser)

    run = sub.add_parser("run", help="Run one scenario and write metrics and figures.")
    run.add_argument("scenario", help="scenario TOML file, or a shipped scenario's name")
    run.add_argument("--out", type=Path, default=None, help="output folder (out/sim/NAME)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override one scenario value, e.g. --set training.lr=0.05 (repeatable)",
    )
    run.add_argument("--threads", type=_positive, default=1, help="torch threads (1)")
    run.set_defaults(func=_run)

    sweep = sub.add_parser("sweep", help="Run a grid of scenarios (resumable).")
    sweep.add_argument("scenario", help="scenario TOML file, or a shipped scenario's name")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=V1,V2",
        help="sweep a scenario value over a list, e.g. --set topology=ring,torus,my.graphml "
        "or --set topology.params.p=0.05,0.1 (repeatable)",
    )
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per grid point (1)")
    sweep.add_argument("--out", type=Path, default=None, help="output folder (out/sweeps/NAME)")
    sweep.add_argument("--threads", type=_positive, default=1, help="torch threads (1)")
    sweep.add_argument(
        "--engine",
        choices=("thread", "ray"),
        default="thread",
        help="run points here one after another (thread) or as Ray tasks (ray; p2pfed[ray])",
    )
    sweep.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto or HOST:PORT (default: start a local one)",
    )
    sweep.set_defaults(func=_sweep)

    emu = sub.add_parser(
        "emulate",
        help="Run a scenario (N ≤ 8) on real daemons over libp2p and compare with the simulator.",
    )
    emu.add_argument("scenario", help="scenario TOML file, or a shipped scenario's name")
    emu.add_argument("--out", type=Path, default=None, help="output folder (out/emulate/NAME)")
    emu.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE", help="override a value"
    )
    emu.add_argument("--timeout", type=float, default=600.0, help="give up after this many s")
    emu.set_defaults(func=_emulate)

    lst = sub.add_parser("list", help="List the scenarios shipped with p2pfed.")
    lst.set_defaults(func=_list)


def _prepare_directory(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)


def _list(args: argparse.Namespace) -> int:
    for name, path in bundled_scenarios().items():
        print(f"{name}\t{path}")
    return 0


def _scenario(args: argparse.Namespace) -> Any:
    from sim.overrides import parse_value, with_overrides
    from sim.specs import load_checked, preflight

    path = resolve_scenario(args.scenario)
    scenario = load_checked(path)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--set {item!r} must look like PATH=VALUE")
        overrides[key.strip()] = parse_value(value.strip())
    scenario = with_overrides(scenario, overrides)
    preflight([scenario], f"scenario {scenario.name}")
    return scenario


def _emulate(args: argparse.Namespace) -> int:
    import tempfile

    from p2pfed.consortium import run_to_end
    from p2pfed.durable import atomic_write
    from sim import emulate
    from sim.results import records_csv
    from sim.sweep import run_point

    scenario = _scenario(args)
    emulate.check_emulable(scenario)
    out: Path = (args.out or Path("out") / "emulate" / scenario.name).resolve()
    _prepare_directory(out)
    print(f"scenario {scenario.name}: simulating {scenario.n} peers, then emulating", flush=True)
    simulated = run_point(scenario).records
    root = Path(tempfile.mkdtemp(prefix="p2pfed-emulate-", dir=out))
    consortium, data = emulate.build(scenario, root)
    run_to_end(consortium, args.timeout)
    emulated = emulate.records(consortium, data, scenario)
    atomic_write(out / "metrics-simulated.csv", records_csv(simulated).encode(), 0o644)
    atomic_write(out / "metrics-emulated.csv", records_csv(emulated).encode(), 0o644)
    sim_by_round = {r.round: r for r in simulated}
    print(
        f"{'round':>5}  {'sim acc':>8}  {'real acc':>8}  {'sim bytes/peer':>14}  "
        f"{'real bytes/peer':>15}  {'real ε':>7}"
    )
    for r in emulated:
        s_rec = sim_by_round.get(r.round)
        s_acc = f"{s_rec.accuracy_mean:.4f}" if s_rec else "—"
        s_bytes = f"{s_rec.bytes_sent_mean:.0f}" if s_rec else "—"
        eps = "—" if r.epsilon is None else f"{r.epsilon:.3f}"
        print(
            f"{r.round:>5}  {s_acc:>8}  {r.accuracy_mean:>8.4f}  {s_bytes:>14}  "
            f"{r.bytes_sent_mean:>15.0f}  {eps:>7}"
        )
    print(
        f"wrote {out / 'metrics-simulated.csv'} and {out / 'metrics-emulated.csv'}; "
        f"daemons' folders in {root}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    out: Path = args.out or Path("out") / "sim" / scenario.name
    _prepare_directory(out)
    print(
        f"scenario {scenario.name}: {scenario.n} peers, {scenario.algorithm.name} on "
        f"{scenario.topology.name}, {scenario.rounds} rounds, data {scenario.data.name}",
        flush=True,
    )
    # Heavy imports (torch, matplotlib) only after the first line is out.
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from p2pfed.durable import atomic_write
    from sim.plots import all_plots
    from sim.results import maybe_parquet, records_csv
    from sim.sweep import run_point

    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task(scenario.name, total=scenario.rounds)
        result = run_point(scenario, lambda r: progress.update(task, completed=r), args.threads)
    wall = time.perf_counter() - started
    atomic_write(out / "result.json", result.to_json().encode(), 0o644)
    atomic_write(out / "metrics.csv", records_csv(result.records).encode(), 0o644)
    maybe_parquet(out / "metrics.csv")
    figures = all_plots({scenario.name: [result]}, out)
    last = result.records[-1]
    eps = "" if last.epsilon is None else f", ε = {last.epsilon:.3f}"
    print(
        f"round {last.round}: accuracy mean {last.accuracy_mean:.4f} "
        f"(min {last.accuracy_min:.4f}, max {last.accuracy_max:.4f}), consensus distance "
        f"{last.consensus_distance:.3g}, ρ = {result.rho:.4f}{eps}; {wall:.1f} s"
        + (" (ρ not computed above 4096 peers)" if math.isnan(result.rho) else "")
    )
    if result.empty_sites:
        print(
            f"{result.empty_sites} of {scenario.n} sites hold no training example: left out "
            "of every mean ([partition] min_examples redraws instead)"
        )
    print(f"wrote {out / 'metrics.csv'}, {out / 'result.json'}, " + ", ".join(map(str, figures)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from sim.specs import load_checked, preflight
    from sim.sweep import SweepPoint, grid_points, parse_set

    scenario = load_checked(resolve_scenario(args.scenario))
    points = grid_points(scenario, parse_set(args.set), args.seeds)
    preflight([p.scenario for p in points], f"sweep {scenario.name}")
    if args.engine == "ray":
        from sim.raysweep import require_ray

        require_ray()  # before any output: say how to install it
    elif args.address is not None:
        raise ConfigError("--address needs --engine ray")
    out: Path = args.out or Path("out") / "sweeps" / scenario.name
    _prepare_directory(out)
    print(f"sweep {scenario.name}: {len(points)} points into {out}", flush=True)
    # Heavy imports (torch, matplotlib) only after the first line is out.
    from p2pfed.durable import atomic_write
    from sim.plots import all_plots
    from sim.results import maybe_parquet
    from sim.sweep import group_by_label, markdown_table, run_sweep, summary_rows, sweep_csv

    skipped = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as progress:
        overall = progress.add_task("points", total=len(points))
        rounds = progress.add_task("rounds", total=None)

        def on_point(point: SweepPoint, was_stored: bool) -> None:
            nonlocal skipped
            if was_stored:
                skipped += 1
                progress.advance(overall)
            progress.update(
                rounds,
                description=f"{point.label} seed={point.seed}",
                total=point.scenario.rounds,
                completed=point.scenario.rounds if was_stored else 0,
            )

        def on_round(r: int) -> None:
            progress.update(rounds, completed=r)
            if r == progress.tasks[rounds].total:
                progress.advance(overall)

        if args.engine == "ray":
            from sim.raysweep import run_sweep_ray

            progress.update(rounds, visible=False)  # rounds run on the workers

            def on_done(point: SweepPoint, was_stored: bool) -> None:
                nonlocal skipped
                skipped += was_stored
                progress.advance(overall)

            results = run_sweep_ray(points, out, on_done, args.threads, args.address)
        else:
            results = run_sweep(points, out, on_point, on_round, args.threads)
    atomic_write(out / "sweep.csv", sweep_csv(points, results).encode(), 0o644)
    maybe_parquet(out / "sweep.csv")
    rows = summary_rows(points, results)
    atomic_write(out / "summary.md", markdown_table(rows).encode(), 0o644)
    figures = all_plots(group_by_label(points, results), out)
    print(markdown_table(rows), end="")
    print(f"{len(points) - skipped} points run, {skipped} already stored (skipped)")
    print(f"wrote {out / 'sweep.csv'}, {out / 'summary.md'}, " + ", ".join(map(str, figures)))
    return 0
