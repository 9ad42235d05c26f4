"""``p2pfed bench ddp``: no DP vs central Gaussian vs distributed discrete Gaussian, one run.

Theory of operation: for each task, three copies of the same simulator (``sim.engine``,
same seed, so the same data, partition, initial model and minibatches) play FedAvg rounds:
every peer trains locally (``Simulator.local_phase``), then the round's mean update is

- *no DP*: the plain mean of the updates;
- *central*: updates clipped to L2 ≤ S, summed, plus one N(0, (zS)²) per coordinate drawn by
  a trusted curator (``SecureGaussian``), divided by n;
- *distributed*: updates clipped, each encoded by its own ``DiscreteGaussianEncoder``
  (randomised rounding + insider-calibrated N_Z noise, mod 2^k), the words summed mod 2^k as
  secure aggregation reveals them, decoded (centred) and divided by n;
- *distributed, outsiders only*: the same with c = 0 and m = n (each peer adds z²Δ₂²/n, the
  sum carries the central noise): what the discrete mechanism itself costs, apart from the
  price of holding ε against an insider, whose share the others must replace (the sum then
  carries n/(m − c) times the central variance).

Each mechanism gets the noise multiplier whose ε after all rounds is the target, as a node
would charge it: the central Gaussian by the PLD accountant (exact for a Gaussian), the
distributed one by RDP (the zCDP bound that governs distributed releases), with z held
against c = 1 colluding member of the guaranteed m = ⌊(n + 1)/2⌋ + 1 contributors (the
daemon's rule); the outsiders-only variant uses the same RDP z with c = 0. Accuracy is the
averaged model's on the held-out test set, the mean over ``--repeats`` seeds. ``wraps``
(coordinates whose centred ring sum differs from the true integer sum) and ``noise_clipped``
(peer coordinates whose word differs from rounded signal + noise) are counted over the
training run plus a stress batch in which every peer sends the worst-case update S·e_j on
the same coordinate, until ``--coordinates`` per-peer coordinates were sampled. Counts are
measured, never assumed.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.bench._timing import timed
from p2pfed.errors import ConfigError
from p2pfed.output import print_json
from p2pfed.secagg.params import guaranteed_contributors
from p2pfed.settings import comma_list

# torch, trio, libp2p and the modules that load them are imported inside functions: every
# benchmark module is imported when `p2pfed --help` builds its parser.
NAME = "ddp"
HELP = "Accuracy: no DP vs central Gaussian vs distributed discrete Gaussian at one ε (JSON)."

MECHANISMS = ("none", "central", "distributed", "distributed_outsiders")


@dataclass
class Counts:
    """Coordinates sampled, sums that wrapped, noise coordinates clipped."""

    coordinates: int = 0
    wraps: int = 0
    noise_clipped: int = 0


def register(parser: argparse.ArgumentParser) -> None:
    """Add the task, ε, δ, rounds, repeats and coordinate-count options."""
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    parser.add_argument(
        "--tasks",
        type=comma_list(str, "a task name", bool),
        default=["demo", "sim"],
        help="comma-separated: demo (4 hospitals), sim (64 peers)",
    )
    parser.add_argument("--epsilon", type=float, default=8.0, help="target ε after all rounds")
    parser.add_argument("--delta", type=float, default=1e-5, help="δ")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (0: the task's default)")
    parser.add_argument("--repeats", type=int, default=10, help="seeds averaged per accuracy")
    parser.add_argument(
        "--coordinates", type=int, default=1_000_000, help="per-peer coordinates to sample"
    )
    parser.set_defaults(func=run)


def _scenario(task: str, rounds: int, seed: int) -> Any:
    if task == "demo":  # p2pfed demo: 4 hospitals, Dirichlet α = 0.5, lr 0.5, batch 16
        raw: dict[str, Any] = {
            "n": 4,
            "rounds": rounds or 10,
            "partition": {"scheme": "dirichlet", "alpha": 0.5},
            "training": {"lr": 0.5, "local_epochs": 1, "local_steps": 0, "batch_size": 16},
        }
    elif task == "sim":  # the simulator's workload: many peers, IID draws of 32 samples
        raw = {
            "n": 64,
            "rounds": rounds or 20,
            "partition": {"scheme": "iid", "samples_per_peer": 32},
            "training": {"lr": 0.5, "local_steps": 2, "batch_size": 16},
        }
    else:
        raise ConfigError(f"unknown bench ddp task {task!r}; use demo or sim")
    raw |= {"name": f"ddp-{task}", "seed": seed, "dtype": "float64"}
    raw |= {"data": {"name": "breast_cancer"}, "model": {"name": "logreg"}}
    # Here, not at the top: the CLI imports this module to list its options, and the
    # simulator's scenario loads torch (4 s of CPU for every `p2pfed --help`).
    from sim.scenario import scenario_from_dict

    return scenario_from_dict(raw)


def _clip(rows: NDArray[np.float64], s: float) -> NDArray[np.float64]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    scale = np.minimum(1.0, s / np.maximum(norms, 1e-300)) * (1 - 1e-12)
    out: NDArray[np.float64] = rows * scale
    return out


def _ring_sum(encoders: list[Any], clipped: NDArray[np.float64], counts: Counts) -> Any:
    """Encode each row, sum mod 2^k, decode; count wraps and clipped noise on the way."""
    enc0 = encoders[0]
    bits = enc0.ring_bits
    total = np.zeros(clipped.shape[1], dtype=np.uint64)
    true = np.zeros(clipped.shape[1], dtype=np.int64)
    for enc, row in zip(encoders, clipped, strict=True):
        rounded, noise, words = enc.encode_parts(row)
        counts.noise_clipped += int(np.count_nonzero(enc.centred(words) != rounded + noise))
        total += words.astype(np.uint64)
        true += rounded + noise
        counts.coordinates += row.size
    total &= np.uint64((1 << bits) - 1)
    centred = enc0.centred(total)
    counts.wraps += int(np.count_nonzero(centred != true))
    return enc0.decode_sum(total, len(encoders))


def _stress(encoders: list[Any], want: int, counts: Counts) -> None:
    """Worst-case signal (S·e_0 at every peer) plus fresh noise until ``want`` coordinates."""
    enc0 = encoders[0]
    d, s = enc0.plan.dimension, enc0.plan.clip_norm
    worst = np.zeros(d)
    worst[0] = s * (1 - 1e-12)
    reps = max(1, math.ceil((want - counts.coordinates) / (len(encoders) * d)))
    total = np.zeros(reps * d, dtype=np.uint64)
    true = np.zeros(reps * d, dtype=np.int64)
    for enc in encoders:  # the steps of encode_parts, over many rounds' worth at once
        rounded = np.tile(enc.round(worst), reps)
        noise = enc.noise(rounded.size)
        words = enc.wrap(rounded + noise)
        counts.noise_clipped += int(np.count_nonzero(enc.centred(words) != rounded + noise))
        total += words.astype(np.uint64)
        true += rounded + noise
        counts.coordinates += rounded.size
    total &= np.uint64((1 << enc0.ring_bits) - 1)
    counts.wraps += int(np.count_nonzero(enc0.centred(total) != true))


def _play(
    task: str, rounds: int, seed: int, z: dict[str, float], clip: float, counts: Counts
) -> dict[str, float]:
    """Accuracy of the averaged model after all rounds, per mechanism (same seed for all)."""
    import torch

    from p2pfed.privacy.ddg import DiscreteGaussianEncoder, plan_ddg
    from p2pfed.privacy.sampling import SecureGaussian
    from sim.engine import Simulator

    torch.set_num_threads(1)
    accuracy: dict[str, float] = {}
    for mech in MECHANISMS:
        sim = Simulator(_scenario(task, rounds, seed))
        n, d = sim.theta.shape
        encoders: list[Any] = []
        if mech.startswith("distributed"):
            outsiders = mech == "distributed_outsiders"
            plan = plan_ddg(
                n_peers=n,
                min_contributors=n if outsiders else guaranteed_contributors(n),
                collusion=0 if outsiders else 1,
                dimension=d,
                clip_norm=clip,
                noise_multiplier=z["rdp"],
            )
            encoders = [DiscreteGaussianEncoder(plan) for _ in range(n)]
        gaussian = SecureGaussian()
        for _ in range(sim.scenario.rounds):
            start = sim.theta
            local = sim.local_phase(start, sim.base_steps, None, 0.0)
            updates = (local.theta - start).numpy().astype(np.float64)
            if mech == "none":
                mean = updates.mean(axis=0)
            elif mech == "central":
                noisy = _clip(updates, clip).sum(axis=0) + gaussian.normal(0.0, z["pld"] * clip, d)
                mean = noisy / n
            else:
                mean = _ring_sum(encoders, _clip(updates, clip), counts) / n
            new = start[0] + torch.from_numpy(mean).to(start.dtype)
            sim.theta = new[None, :].expand(n, -1).clone()
        accuracy[mech] = sim.evaluate().average_model_accuracy
    return accuracy


def run_case(
    task: str, epsilon: float, delta: float, rounds: int, repeats: int, coordinates: int
) -> dict[str, Any]:
    """One row of the JSON: accuracies (mean over seeds) and the wrap/clip counts."""
    from p2pfed.privacy import noise_multiplier_for, validate

    validate.epsilon(epsilon)
    validate.delta(delta)
    validate.count("repeats", repeats)
    total_rounds = _scenario(task, rounds, 0).rounds
    z = {
        kind: noise_multiplier_for(epsilon, delta, 1.0, total_rounds, kind)
        for kind in ("pld", "rdp")
    }
    counts = Counts()
    runs = [_play(task, rounds, seed, z, 1.0, counts) for seed in range(repeats)]
    if counts.coordinates < coordinates:
        _stress_more(task, rounds, z["rdp"], coordinates, counts)
    mean = {m: float(np.mean([r[m] for r in runs])) for m in MECHANISMS}
    return {
        "task": task,
        "epsilon": epsilon,
        "delta": delta,
        "rounds": total_rounds,
        "central_noise_multiplier": z["pld"],
        "distributed_noise_multiplier": z["rdp"],
        "repeats": repeats,
        "no_dp_accuracy": mean["none"],
        "central_accuracy": mean["central"],
        "distributed_accuracy": mean["distributed"],
        "distributed_outsiders_only_accuracy": mean["distributed_outsiders"],
        "wraps": counts.wraps,
        "noise_clipped": counts.noise_clipped,
        "coordinates": counts.coordinates,
    }


def _stress_more(task: str, rounds: int, z: float, want: int, counts: Counts) -> None:
    """Top the sampled coordinates up to ``want`` with worst-case stress rounds."""
    from p2pfed.privacy.ddg import DiscreteGaussianEncoder, plan_ddg
    from sim.engine import Simulator

    sim = Simulator(_scenario(task, rounds, 0))
    n, d = sim.theta.shape
    plan = plan_ddg(
        n_peers=n,
        min_contributors=guaranteed_contributors(n),
        collusion=1,
        dimension=d,
        clip_norm=1.0,
        noise_multiplier=z,
    )
    _stress([DiscreteGaussianEncoder(plan) for _ in range(n)], want, counts)


def run(args: argparse.Namespace) -> int:
    """Run every task and print one JSON document."""
    with timed() as wall:
        cases = [
            run_case(t, args.epsilon, args.delta, args.rounds, args.repeats, args.coordinates)
            for t in args.tasks
        ]
    print_json({"bench": "ddp", "cases": cases, "seconds": wall.wall})
    return 0
