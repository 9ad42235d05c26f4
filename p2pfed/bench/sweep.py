"""``p2pfed bench sweep``: per-point overhead of Ray sweeps against the thread engine.

Theory of operation: one grid of small points (the cost we measure is the engine's, not the
simulation's) is run twice into fresh stores in this process: by the thread engine
(``sim.sweep.run_sweep``, after the simulator is imported, so neither side pays that in the
timed window) and through a local Ray cluster of ``--cpus`` CPUs (``sim.raysweep``). Ray's
time includes its workers' start-up and imports (``warm_up``), the tasks and the result
transfer, but not ``ray.init`` (reported apart: paid once per session, or never when
joining a running cluster). Overhead per point = (Ray − thread) / points; with ``--cpus``
above 1 the points also run in parallel, so it can be negative. Both stores must hold
byte-identical results, which the benchmark checks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.output import print_json

NAME = "sweep"
HELP = "Sweep engines: per-point overhead of Ray tasks vs local threads (needs p2pfed[ray])."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument("--json", action="store_true", help="print only the JSON document")
    parser.add_argument("--points", type=int, default=32, help="grid points (32)")
    parser.add_argument("--n", type=int, default=16, help="peers per point (16)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per point (10)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of the local Ray cluster (1)")
    parser.set_defaults(func=_main)


def measure(points_count: int, n: int, rounds: int, cpus: int) -> dict[str, Any]:
    """Run the grid on both engines; timings, overhead per point, and the equality check."""
    from sim.overrides import with_overrides
    from sim.raysweep import connect, require_ray, run_sweep_ray
    from sim.scenario import Scenario
    from sim.sweep import grid_points, run_sweep

    ray = require_ray()
    import sim.engine  # noqa: F401  (imported outside both timed windows)

    base = with_overrides(Scenario(), {"n": n, "rounds": rounds, "eval_every": rounds})
    points = grid_points(base, [], points_count)  # one point per seed
    with tempfile.TemporaryDirectory(prefix="p2pfed-bench-sweep-") as tmp:
        started = time.perf_counter()
        threads = run_sweep(points, Path(tmp) / "thread")
        thread_s = time.perf_counter() - started
        started = time.perf_counter()
        if not connect(None, cpus):
            raise ConfigError("bench sweep starts its own Ray cluster; call it outside Ray")
        init_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            remote = run_sweep_ray(points, Path(tmp) / "ray")
            ray_s = time.perf_counter() - started
        finally:
            ray.shutdown()
    identical = [a.to_json() for a in threads] == [b.to_json() for b in remote]
    return {
        "points": points_count,
        "n": n,
        "rounds": rounds,
        "ray_cpus": cpus,
        "thread_s": round(thread_s, 3),
        "ray_s": round(ray_s, 3),
        "ray_init_s": round(init_s, 3),
        "thread_per_point_s": round(thread_s / points_count, 4),
        "ray_overhead_per_point_s": round((ray_s - thread_s) / points_count, 4),
        "results_identical": identical,
    }


def _main(args: argparse.Namespace) -> int:
    if min(args.points, args.n, args.rounds, args.cpus) < 1:
        raise ConfigError("--points, --n, --rounds and --cpus must be at least 1")
    payload = {"bench": "sweep", **measure(args.points, args.n, args.rounds, args.cpus)}
    payload["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print_json(payload)
    return 0
