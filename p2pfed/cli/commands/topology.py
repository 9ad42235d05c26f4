"""``p2pfed topology list | analyze``: the topology library from the command line."""

from __future__ import annotations

import argparse
import ast
from typing import Any

from p2pfed.output import print_json

NAME = "topology"
HELP = "List topologies and analyse their spectral gap, consensus speed and traffic."


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``list`` and ``analyze``."""
    from p2pfed.cli import add_group

    sub = add_group(parser)
    lst = sub.add_parser("list", help="List the generators (with --n, analyse each).")
    lst.add_argument("--n", type=int, help="also analyse every topology at this size")
    lst.add_argument("--seed", type=int, default=0)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)

    ana = sub.add_parser("analyze", help="Analyse one topology (a generator name or a file).")
    ana.add_argument("name", help="generator name, or a .json/.graphml/edge-list file path")
    ana.add_argument("--n", type=int, help="number of peers (not for files)")
    ana.add_argument("--seed", type=int, default=0, help="seed for random generators")
    ana.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="generator parameter, e.g. --param degree=6 (repeatable)",
    )
    ana.add_argument(
        "--mixing",
        default="auto",
        help="auto, metropolis, max_degree, uniform or weights (default: auto)",
    )
    ana.add_argument("--lazy", type=float, metavar="BETA", help="use beta·I + (1−beta)·W")
    ana.add_argument(
        "--model-mb", type=float, default=1.0, help="model size for traffic figures (MB)"
    )
    ana.add_argument("--json", action="store_true", help="print JSON")
    ana.add_argument("--plot", metavar="FILE.png", help="write the graph and ρ^t curve")
    ana.set_defaults(func=_analyze)


def _parse_params(items: list[str]) -> dict[str, Any]:
    from p2pfed.errors import ConfigError

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r} must look like KEY=VALUE")
        try:
            params[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            params[key] = raw
    return params


def _analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    import topologies
    from p2pfed.errors import ConfigError

    model_bytes = round(args.model_mb * 1_000_000)
    if args.name in topologies.GENERATORS:
        if args.n is None:
            raise ConfigError(f"topology {args.name!r} needs --n, the number of peers")
        topo = topologies.build(
            args.name,
            args.n,
            seed=args.seed,
            mixing=args.mixing,
            lazy_beta=args.lazy,
            **_parse_params(args.param),
        )
    elif Path(args.name).suffix or Path(args.name).exists():
        if args.n is not None or args.param:
            raise ConfigError("--n and --param apply to generators, not to topology files")
        topo = topologies.load(args.name, mixing=args.mixing)
        if args.lazy is not None:
            topo = topo.with_mixing(args.mixing, args.lazy)
    else:
        known = ", ".join(topologies.GENERATORS)
        raise ConfigError(f"unknown topology {args.name!r}; choose one of {known}, or a file")
    result = topologies.analyze(topo, model_bytes=model_bytes)
    out = {**result.to_dict(), "mixing": topo.params.get("mixing", args.mixing)}
    if args.plot:
        from topologies.plot import plot

        out["plot"] = str(plot(topo, result, args.plot))
    if args.json:
        print_json(out)
        return 0
    from rich.table import Table

    table = Table(title=f"{topo.name}, n={topo.n}", show_header=False)
    for key, value in out.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    _console().print(table)
    return 0


def _list(args: argparse.Namespace) -> int:
    import topologies

    rows = []
    for gen in topologies.GENERATORS.values():
        row: dict[str, Any] = {"name": gen.name, "purpose": gen.purpose, "params": gen.params()}
        if args.n is not None:
            try:
                a = topologies.analyze(topologies.build(gen.name, args.n, seed=args.seed))
            except topologies.TopologyError as exc:
                row["error"] = str(exc)
            else:
                row |= {
                    "spectral_gap": a.spectral_gap,
                    "rounds_to_1e-3": a.rounds_to(1e-3),
                    "degree_max": a.degree_max,
                    "diameter": a.diameter,
                }
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    from rich.table import Table

    table = Table(title="topologies" + (f" at n={args.n}" if args.n else ""))
    for col in ["name", "purpose", "params"]:
        table.add_column(col)
    if args.n is not None:
        for col in ["gap", "rounds to 1e-3", "max degree", "diameter"]:
            table.add_column(col, justify="right")
    for row in rows:
        cells = [
            row["name"],
            row["purpose"],
            ", ".join(f"{k}={v}" for k, v in row["params"].items()),
        ]
        if args.n is not None:
            if "error" in row:
                cells += ["n/a", "", "", ""]
            else:
                cells += [
                    f"{row['spectral_gap']:.4g}",
                    str(row["rounds_to_1e-3"]),
                    str(row["degree_max"]),
                    str(row["diameter"]),
                ]
        table.add_row(*cells)
    _console().print(table)
    return 0


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped output gets rich's 80-column default, which folds wide tables into slivers.
    return console if console.is_terminal else Console(width=160)
