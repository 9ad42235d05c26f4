"""``p2pfed bench secagg``: masking speed, whole-protocol cost, bytes and memory per peer.

Theory of operation: all figures come from one process on one machine in one run, so they
compare against each other, never against other runs. For each case (n peers, dimension d):

- ``keystream_gb_s``: raw ChaCha20 keystream rate into a reusable buffer — the speed limit
  of masking. Top level: measured once at the start. Per case: producing exactly the
  keystream the masking needs, (neighbours + 1) × 4d bytes, interleaved with the masking
  repeats (best of each; ``--repeats`` × min(30, max(1, 10^7 / d)) of them, since short kernels
  are mostly noise on a shared machine), so both see the same load; mask_bound_s uses the
  per-case rate.
- ``mask_s``: one representative peer's masking at the full d, timed around exactly the call
  the protocol makes (``primitives.mask_vector``) plus deriving its keys (X25519 agreements
  and HKDF for its neighbours); best of ``--repeats``. ``mask_bound_s`` = 1.5 × (neighbours
  + 1) × 4d bytes / the case's keystream rate; ``mask_ok`` says whether mask_s ≤ bound.
- ``protocol_s``: the whole protocol (keys, shares, receipts, masking of *every* peer, the
  masked sum, reveals, share recovery) for all n peers run one after another in this
  process, always at the d asked for (``protocol_d`` = d; a case whose memory need exceeds
  ``--memory-budget-mb`` is refused with one sentence naming it, never downsized). Memory
  stays at a few vectors whatever n: each input is made only when its peer masks it, each
  masked vector is added to one running total as soon as it exists (``run_cohort(...,
  stream_sum=True)``) and every peer shares that total. Making the bench's inputs is timed
  and subtracted (``input_making_s_subtracted``). Because peers run serially here,
  protocol_s is roughly n times what one peer computes. The final unmasking (identical at
  every survivor, one keystream pass per survivor) is run for ``unmask_peers`` peers inside
  protocol_s — all of them up to 16 peers, one otherwise — and ``unmask_s`` is one peer's
  unmasking time. ``plain_sum_s`` adds the same n plaintext vectors into one accumulator
  (the no-privacy anchor, same run); ``protocol_vs_plain_sum_x`` is their ratio. The
  ``*_cpu_*`` twins are this process's CPU seconds for the same windows: on a shared
  machine wall time is mostly waiting for a core, so compare CPU with CPU.
- ``multiprocess`` (``--procs`` k > 1): the same round with the peers spread over k worker
  processes (``bench/_secagg_procs.py``): ``wall_s`` of the whole round, and per peer the
  CPU seconds of its own calls (median, max), one unmasking, and ``peer_round_cpu_s`` — what
  one peer computes in a round on its own machine — and ``vs_plain_sum_cpu_x``, its ratio
  to ``plain_sum_cpu_s`` (the whole cohort's plain vectors summed in one place).
- ``bytes_per_peer``: the largest number of protocol-message bytes any peer sent (encoded
  by the real codec) plus its masked vector (4d, sent once to the in-memory sum; a ring
  all-reduce sends 2(n−1)/n of it instead). Message bytes do not depend on d.
- ``peer_peak_bytes``: one peer's peak memory, measured by the harness probe (vectors held
  + tracemalloc peak inside each call + its input and the incoming sum); bound 3 × 4d +
  100 MB. ``memory_needed_bytes``: this process's estimate for the case (``memory_needed``).

The unmasked sum is checked against the plaintext sum in every case (``exact``); a mismatch
is an error, not a figure.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from p2pfed.bench._secagg_procs import base_vector, make_input, peer_names, run_procs
from p2pfed.bench._timing import timed
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.output import print_json
from p2pfed.secagg.harness import run_cohort
from p2pfed.secagg.params import SecAggConfig, plan_cohort
from p2pfed.secagg.primitives import (
    AgreementKeyPair,
    MaskExpander,
    UIntVector,
    agree,
    keystream_rate,
    keystream_seconds,
    mask_vector,
    pair_mask_key,
    self_mask_key,
)

NAME = "secagg"
HELP = "Benchmark secure aggregation: masking vs ChaCha20 speed, protocol, bytes, memory."

FULL_N = (8, 32, 128)
FULL_D = (10**6, 10**7)
QUICK_N = (8, 32)
QUICK_D = (10**5, 10**6)
MB = 1 << 20


def register(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    parser.add_argument("--quick", action="store_true", help="small sizes (n 8, 32; d 1e5, 1e6)")
    parser.add_argument("--n", type=int, nargs="+", help="cohort sizes (overrides the default)")
    parser.add_argument("--d", type=int, nargs="+", help="dimensions (overrides the default)")
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=2048,
        help="refuse a case whose whole-protocol run would need more memory (MiB)",
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=4,
        help="worker processes of the multi-process run (0 or 1: skip it)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of timed kernels (best)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input vectors")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print one JSON document."""
    ns = tuple(args.n or (QUICK_N if args.quick else FULL_N))
    ds = tuple(args.d or (QUICK_D if args.quick else FULL_D))
    if any(n < 3 for n in ns):
        raise ConfigError("every --n must be at least 3")
    if any(d < 1 for d in ds):
        raise ConfigError("every --d must be at least 1")
    if args.repeats < 1 or args.memory_budget_mb < 1 or args.procs < 0:
        raise ConfigError("--repeats and --memory-budget-mb must be positive, --procs ≥ 0")
    budget = args.memory_budget_mb * MB
    print_json(bench(ns, ds, budget, args.repeats, args.seed, args.procs))
    return 0


def _progress(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]secagg:[/dim] {message}")


def _keystream_gb_s(repeats: int) -> float:
    return max(keystream_rate(0.25) for _ in range(repeats)) / 1e9


def memory_needed(n: int, d: int, procs: int) -> int:
    """Bytes a case needs at most: a few d-vectors plus ~4 KB of messages per pair of peers.

    In process: the base, the plain sum, its input, the running total, one input being
    masked, one result; multi-process: four per worker and three in the parent.
    """
    vectors = max(6, 4 * min(procs, n) + 3 if procs > 1 else 0)
    return vectors * 4 * d + 4096 * n * n


def bench(
    ns: tuple[int, ...],
    ds: tuple[int, ...],
    budget_bytes: int,
    repeats: int,
    seed: int,
    procs: int = 4,
) -> dict[str, Any]:
    """The benchmark document for every (n, d) case."""
    load_before = os.getloadavg()
    with timed() as wall:
        _progress("measuring the raw ChaCha20 keystream rate")
        keystream = _keystream_gb_s(repeats)
        cases = [_case(n, d, budget_bytes, repeats, seed, procs) for n in ns for d in ds]
    return {
        "bench": "secagg",
        "keystream_gb_s": round(keystream, 4),
        "cases": cases,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "wall_s": round(wall.wall, 2),
        "notes": (
            "protocol_s: all peers serially in one process, at the full d; multiprocess: "
            "the same round over k worker processes, per-peer CPU seconds; see "
            "p2pfed/bench/secagg.py for exactly what each figure measures"
        ),
    }


def _case(n: int, d: int, budget_bytes: int, repeats: int, seed: int, procs: int) -> dict[str, Any]:
    names = peer_names(n)
    plan = plan_cohort(SecAggConfig("bench", 1, d), frozenset(names))
    rep = names[0]
    neighbours = sorted(plan.neighbours[rep])
    rng = np.random.default_rng(seed)

    _progress(f"n={n} d={d:.0e} ({plan.graph}, {len(neighbours)} neighbours): masking one peer")
    vector = rng.integers(0, 1 << 22, d, dtype=np.uint32)
    mask_bytes = (len(neighbours) + 1) * 4 * d
    expander = MaskExpander()
    mine = AgreementKeyPair.generate(os.urandom)
    theirs = [AgreementKeyPair.generate(os.urandom).public for _ in neighbours]
    seed_bytes = os.urandom(32)
    mask_times, keystream_times = [], []
    # Short kernels get more repeats: on a shared machine a 10 ms timing is mostly noise.
    for _ in range(repeats * min(30, max(1, 10**7 // d))):
        # Interleaved with masking so both see the same load on a shared machine.
        keystream_times.append(keystream_seconds(mask_bytes))
        with timed() as masking:
            pair_keys = [
                (
                    pair_mask_key(agree(mine.secret, pub), "bench", 1, rep, peer),
                    plan.sign(rep, peer),
                )
                for peer, pub in zip(neighbours, theirs, strict=True)
            ]
            mask_vector(vector, self_mask_key(seed_bytes, "bench", 1, rep), pair_keys, expander)
        mask_times.append(masking.wall)
    del vector
    mask_s = min(mask_times)
    case_keystream = mask_bytes / min(keystream_times) / 1e9
    mask_bound_s = 1.5 * mask_bytes / (case_keystream * 1e9)

    need = memory_needed(n, d, procs)
    if need > budget_bytes:
        raise ConfigError(
            f"the whole protocol at n={n}, d={d} needs about {need // MB} MiB, more than "
            f"--memory-budget-mb {budget_bytes // MB}: raise the budget or ask for a smaller --d"
        )
    _progress(f"n={n} d={d:.0e}: whole protocol, all peers in this process")
    base = base_vector(d, seed)
    plain = np.zeros(d, dtype=np.uint32)
    plain_sum_s = plain_sum_cpu_s = 0.0
    for i in range(n):
        vector = make_input(base, i)
        with timed() as add:
            np.add(plain, vector, out=plain)
        plain_sum_s += add.wall
        plain_sum_cpu_s += add.cpu
    del vector
    making: list[float] = []
    making_cpu: list[float] = []

    def lazy(index: int) -> Callable[[], UIntVector]:
        def draw() -> UIntVector:
            with timed() as made:
                vector = make_input(base, index)
            making.append(made.wall)  # the bench's own input: subtracted from protocol_s
            making_cpu.append(made.cpu)
            return vector

        return draw

    unmaskers = names if n <= 16 else [rep]
    with timed() as protocol:
        run = run_cohort(
            SecAggConfig("bench", 1, d),
            {p: lazy(i) for i, p in enumerate(names)},
            copy_inputs=False,
            probe=rep,
            compute_results=(),
            stream_sum=True,
        )
        unmask_times = []
        for p in unmaskers:
            with timed() as unmask:
                result = run.peers[p].result()
            unmask_times.append(unmask.wall)
            if not np.array_equal(result, plain):
                raise IntegrityError(
                    f"secagg bench: the unmasked sum at {p} differs from the plain sum"
                )
            del result
    protocol_s = protocol.wall - sum(making)
    protocol_cpu_s = protocol.cpu - sum(making_cpu)
    if run.survivors != set(names):
        raise IntegrityError(f"secagg bench: only {len(run.survivors)} of {n} peers finished")
    multi: dict[str, Any] | None = None
    if procs > 1:
        _progress(f"n={n} d={d:.0e}: one round over {min(procs, n)} worker processes")
        multi = run_procs(n, d, min(procs, n), seed)
        multi["vs_plain_sum_cpu_x"] = round(multi["peer_round_cpu_s"] / plain_sum_cpu_s, 2)
    message_bytes = max(run.bytes_sent.values())
    masked_vector_bytes = 4 * d
    bytes_per_peer = message_bytes + masked_vector_bytes
    peak_bound = 3 * 4 * d + 100 * 10**6
    return {
        "n": n,
        "d": d,
        "graph": plan.graph,
        "neighbours": len(neighbours),
        "threshold": plan.threshold,
        "keystream_gb_s": round(case_keystream, 4),
        "mask_s": round(mask_s, 5),
        "mask_bound_s": round(mask_bound_s, 5),
        "mask_ok": mask_s <= mask_bound_s,
        "mask_gb_s": round(mask_bytes / mask_s / 1e9, 4),
        "protocol_d": d,
        "protocol_s": round(protocol_s, 4),
        "protocol_vs_plain_sum_x": round(protocol_s / plain_sum_s, 1),
        "protocol_cpu_s": round(protocol_cpu_s, 4),
        "protocol_vs_plain_sum_cpu_x": round(protocol_cpu_s / plain_sum_cpu_s, 1),
        "input_making_s_subtracted": round(sum(making), 4),
        "unmask_peers": len(unmaskers),
        "unmask_s": round(min(unmask_times), 5),
        # Nanoseconds: at small d the whole plain sum takes a few microseconds.
        "plain_sum_s": round(plain_sum_s, 9),
        "plain_sum_cpu_s": round(plain_sum_cpu_s, 9),
        "exact": True,
        "message_bytes_per_peer": message_bytes,
        "bytes_per_peer": bytes_per_peer,
        "masked_vector_bytes": masked_vector_bytes,
        "bytes_ok": bytes_per_peer <= 1.1 * masked_vector_bytes,
        "peer_peak_bytes": run.probe_peak_bytes,
        "peer_peak_bound_bytes": peak_bound,
        "memory_ok": run.probe_peak_bytes <= peak_bound,
        "memory_needed_bytes": need,
        "multiprocess": multi,
    }
