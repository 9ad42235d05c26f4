"""One complete simulation job, timed end to end in a fresh process (``p2pfed bench sim``).

Theory of operation: a researcher's job is short (20 rounds), so its wall time is mostly
one-off costs — imports, loading and partitioning the data, the first round, evaluation —
which a steady per-round rate after warm-up hides. ``measure_job`` runs in a fresh Python
process and splits the job into those phases, from the first line the child executes
(interpreter start-up itself excluded) to the final evaluation:

- ``vectorized``: ``sim.engine`` (all peers as one ``[N, P]`` tensor);
- ``loop``: the same data and partition (built by the simulator: same set-up code), then the
  plain per-peer loop ``sim.reference.loop_round`` and a plain evaluation.

Task (issue 17's): FedAvg of logistic regression on breast cancer, N sites holding a
Dirichlet(0.5) label split of the training set, one local epoch in batches of 16, lr 0.1.
"""

from __future__ import annotations

import time
from typing import Any

from sim.overrides import with_overrides
from sim.scenario import Scenario

ALPHA = 0.5


def job_scenario(n: int, rounds: int) -> Scenario:
    """The benchmarked job: issue 17's task at N sites for ``rounds`` rounds."""
    return with_overrides(
        Scenario(),
        {
            "name": f"job-{n}",
            "n": n,
            "rounds": rounds,
            "eval_every": rounds,
            "algorithm": "fedavg",
            "data": "breast_cancer",
            "model": "logreg",
            "partition.scheme": "dirichlet",
            "partition.alpha": ALPHA,
            "training.local_epochs": 1,
            "training.batch_size": 16,
            "training.lr": 0.1,
        },
    )


def measure_job(n: int, rounds: int, side: str, started: float) -> dict[str, Any]:
    """Time one job by ``side`` (vectorized or loop); ``started``: the child's first clock."""
    clock = time.perf_counter
    import torch

    from sim.engine import Simulator

    torch.set_num_threads(1)
    imported = clock()
    sim = Simulator(job_scenario(n, rounds))
    if side == "vectorized":
        sim.evaluate()  # round 0's record, as a run writes it (set-up)
    ready = clock()
    if side == "vectorized":
        sim.step(0)
        first = clock()
        for t in range(1, rounds):
            sim.step(t)
        rest = clock()
        accuracy = float(sim.evaluate().accuracy.mean())
    else:
        from sim.reference import loop_round

        peers = [sim.indices[i, : sim.counts[i]] for i in range(n)]
        gen = torch.Generator().manual_seed(0)
        theta = sim.theta[0].clone()
        classes = sim.dataset.classes
        theta = loop_round(theta, sim.x_train, sim.y_train, peers, classes, 16, 0.1, gen)
        first = clock()
        for _ in range(1, rounds):
            theta = loop_round(theta, sim.x_train, sim.y_train, peers, classes, 16, 0.1, gen)
        rest = clock()
        logits = sim.model.forward(theta, sim.x_test)
        accuracy = float((logits.argmax(-1) == sim.y_test).to(torch.float64).mean())
    done = clock()
    return {
        "side": side,
        "total_s": round(done - started, 3),
        "imports_s": round(imported - started, 3),
        "setup_s": round(ready - imported, 3),
        "first_round_s": round(first - ready, 3),
        "later_rounds_s": round(rest - first, 3),
        "evaluation_s": round(done - rest, 3),
        "steady_peer_rounds_s": round(n * (rounds - 1) / max(rest - first, 1e-9), 1),
        "final_accuracy": round(accuracy, 4),
    }
