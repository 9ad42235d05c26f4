"""``p2pfed bench sim``: simulator peer-rounds per second against a per-peer Python loop.

Theory of operation: for each N, a fresh Python subprocess builds the same workload —
logistic regression on breast cancer, every peer drawing 32 samples (IID, with replacement
across peers, so N may exceed the data set), one local epoch in batches of 16 (two SGD
steps), then exact averaging (FedAvg) — and times

- the vectorised simulator (``sim.engine``: vmap over peers, one ``[N, P]`` tensor), and
- the straightforward loop (``sim.reference.loop_round``: per peer, copy the weights into an
  ``nn.Linear``, train with ``torch.optim.SGD``, then average),

both on one torch thread, after warm-up rounds (3 for the simulator, 1 for the loop), as
the best of several timings each (the machine is shared; the minimum is the least disturbed).
Peak RSS is the child's ``ru_maxrss`` read after the vectorised run and before the loop
starts, so it is the simulator's high-water mark (interpreter, torch and data included).
The loop is timed on fewer rounds than the simulator; rates are per peer-round either way.

Then, because a short job's wall time is mostly one-off costs, ``jobs`` times a complete
20-round job end to end for each of ``--job-sizes`` (issue 17's task: FedAvg, logistic
regression, breast cancer, Dirichlet(0.5) sites; ``p2pfed.bench._simjob``), each side in its
own fresh process: imports, set-up, round 1, rounds 2..R, evaluation, and the steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from p2pfed.bench._timing import best_of
from p2pfed.errors import ConfigError
from p2pfed.output import print_json
from p2pfed.settings import comma_list

# torch, trio, libp2p and the modules that load them are imported inside functions: every
# benchmark module is imported when `p2pfed --help` builds its parser.
NAME = "sim"
HELP = "Simulator peer-rounds/s for N in {64, 256, 1024} vs a per-peer Python loop, and peak RSS."


_sizes = comma_list(int, "a positive whole number of peers", lambda n: n >= 1)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument("--json", action="store_true", help="print only the JSON document")
    parser.add_argument(
        "--sizes", type=_sizes, default=[64, 256, 1024], help="N values (64,256,1024)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="simulator rounds per timing (10)")
    parser.add_argument("--loop-rounds", type=int, default=1, help="loop rounds per timing (1)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per side; best kept (5)")
    parser.add_argument(
        "--loop-max-n", type=int, default=4096, help="skip the loop above this N (4096)"
    )
    parser.add_argument(
        "--job-sizes", type=_sizes, default=[256, 1024], help="N of the end-to-end jobs"
    )
    parser.add_argument("--job-rounds", type=int, default=20, help="rounds of a job (20)")
    parser.set_defaults(func=_main)


def measure_case(
    n: int, rounds: int, loop_rounds: int, run_loop: bool, repeats: int = 3
) -> dict[str, Any]:
    """Time one N in this process (meant to run in a fresh subprocess)."""
    import resource

    import torch

    from sim.engine import Simulator
    from sim.overrides import with_overrides  # the simulator loads torch: not at the top,
    from sim.reference import loop_round  # where the CLI imports this module for its options
    from sim.scenario import Scenario

    torch.set_num_threads(1)
    warmup_rounds = 3
    scenario = with_overrides(
        Scenario(),
        {
            "name": f"bench-{n}",
            "n": n,
            "rounds": warmup_rounds + rounds * repeats,
            "algorithm": "fedavg",
            "data": "breast_cancer",
            "model": "logreg",
            "partition.scheme": "iid",
            "partition.samples_per_peer": 32,
            "training.local_epochs": 1,
            "training.batch_size": 16,
            "training.lr": 0.1,
        },
    )
    sim = Simulator(scenario)
    warmup = warmup_rounds  # first-call costs of vmap, the allocator and the caches
    for t in range(warmup):
        sim.step(t)
    # Best of `repeats` timings for both sides: the machine is shared, and the minimum is
    # the least disturbed estimate of each implementation's own cost.
    clock = iter(range(warmup, warmup + rounds * repeats))  # each timing plays new rounds

    def play() -> None:
        for _ in range(rounds):
            sim.step(next(clock))

    vector_s = best_of(repeats, play).seconds
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loop_rate: float | None = None
    if run_loop:
        peers = [sim.indices[i, : sim.counts[i]] for i in range(n)]
        gen = torch.Generator().manual_seed(0)
        theta = sim.theta[0].clone()
        theta = loop_round(theta, sim.x_train, sim.y_train, peers, 2, 16, 0.1, gen)  # warm-up

        def loop() -> None:
            nonlocal theta
            for _ in range(loop_rounds):
                theta = loop_round(theta, sim.x_train, sim.y_train, peers, 2, 16, 0.1, gen)

        loop_s = best_of(repeats, loop).seconds
        loop_rate = n * loop_rounds / loop_s
    return {
        "n": n,
        "vectorized_peer_rounds_s": round(n * rounds / vector_s, 1),
        "loop_peer_rounds_s": None if loop_rate is None else round(loop_rate, 1),
        "speedup": None if loop_rate is None else round(n * rounds / vector_s / loop_rate, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "vectorized_rounds": rounds,
        "loop_rounds": loop_rounds if run_loop else 0,
        "repeats": repeats,
    }


def _in_child(code: str, what: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; the JSON object its last line prints."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"benchmark {what} failed: {tail[0]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _child(n: int, rounds: int, loop_rounds: int, run_loop: bool, repeats: int) -> dict[str, Any]:
    code = (
        "import json, sys\n"
        "from p2pfed.bench.sim import measure_case\n"
        f"print(json.dumps(measure_case({n}, {rounds}, {loop_rounds}, {run_loop}, {repeats})))\n"
    )
    return _in_child(code, f"case n={n}")


def _job(n: int, rounds: int, side: str) -> dict[str, Any]:
    code = (
        "import time\n"
        "started = time.perf_counter()\n"
        "import json\n"
        "from p2pfed.bench._simjob import measure_job\n"
        f"print(json.dumps(measure_job({n}, {rounds}, {side!r}, started)))\n"
    )
    return _in_child(code, f"job n={n} ({side})")


def jobs(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """End-to-end jobs, simulator and loop each in a fresh process, per N."""
    out = []
    for n in sizes:
        vector = _job(n, rounds, "vectorized")
        loop = _job(n, rounds, "loop")
        speedup = loop["total_s"] / vector["total_s"]
        out.append(
            {
                "n": n,
                "rounds": rounds,
                "vectorized": vector,
                "loop": loop,
                "end_to_end_speedup": round(speedup, 2),
            }
        )
    return out


def _main(args: argparse.Namespace) -> int:
    if min(args.rounds, args.loop_rounds, args.repeats, args.job_rounds) < 1:
        raise ConfigError("--rounds, --loop-rounds, --repeats and --job-rounds must be at least 1")
    cases = []
    for n in args.sizes:
        if not args.json:
            print(f"n = {n} ...", file=sys.stderr)
        cases.append(_child(n, args.rounds, args.loop_rounds, n <= args.loop_max_n, args.repeats))
    payload = {
        "bench": "sim",
        "workload": "logreg, breast_cancer, 32 samples/peer, 1 local epoch, batch 16, fedavg",
        "threads": 1,
        "cases": cases,
        "job_workload": "fedavg, logreg, breast_cancer, dirichlet alpha 0.5, 1 local epoch, "
        "batch 16, lr 0.1; each side in a fresh process",
        "jobs": jobs(args.job_sizes, args.job_rounds),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print_json(payload)
    return 0
