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
  in-memory masked sum, reveals, share recovery) for all n peers run one after another in
  this process, at dimension ``protocol_d``: the full d when n·4d fits ``--memory-budget-mb``,
  else the largest power of ten that does (honestly smaller; the JSON says which). Because
  peers run serially here, protocol_s is roughly n times what one peer waits in a real
  deployment. The final unmasking (identical at every survivor, one keystream pass per
  survivor) is run for ``unmask_peers`` peers inside protocol_s — all of them up to 16 peers,
  one otherwise — and ``unmask_s`` is one peer's unmasking time. ``plain_sum_s`` sums the
  same plaintext vectors with the same in-memory summation (the no-privacy baseline).
- ``bytes_per_peer``: the largest number of protocol-message bytes any peer sent (encoded
  by the real codec) plus its masked vector (4d, sent once to the in-memory sum; a ring
  all-reduce sends 2(n−1)/n of it instead). Message bytes do not depend on d.
- ``peer_peak_bytes``: one peer's peak memory at protocol_d, measured by the harness probe
  (vectors held + tracemalloc peak inside each call + its input and the incoming sum);
  bound 3 × 4·protocol_d + 100 MB.

The unmasked sum is checked against the plaintext sum in every case (``exact``); a mismatch
is an error, not a figure.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from p2pfed.bench._timing import timed
from p2pfed.errors import ConfigError, IntegrityError
from p2pfed.output import print_json
from p2pfed.secagg.harness import run_cohort
from p2pfed.secagg.params import SecAggConfig, plan_cohort
from p2pfed.secagg.primitives import (
    AgreementKeyPair,
    MaskExpander,
    agree,
    keystream_rate,
    keystream_seconds,
    mask_vector,
    pair_mask_key,
    self_mask_key,
)
from p2pfed.secagg.summation import DirectMaskedSum

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
        help="largest n·4d (MiB) for which the whole protocol runs at the full dimension",
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
    if args.repeats < 1 or args.memory_budget_mb < 1:
        raise ConfigError("--repeats and --memory-budget-mb must be positive")
    print_json(bench(ns, ds, args.memory_budget_mb * MB, args.repeats, args.seed))
    return 0


def _progress(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]secagg:[/dim] {message}")


def _keystream_gb_s(repeats: int) -> float:
    return max(keystream_rate(0.25) for _ in range(repeats)) / 1e9


def bench(
    ns: tuple[int, ...], ds: tuple[int, ...], budget_bytes: int, repeats: int, seed: int
) -> dict[str, Any]:
    """The benchmark document for every (n, d) case."""
    load_before = os.getloadavg()
    with timed() as wall:
        _progress("measuring the raw ChaCha20 keystream rate")
        keystream = _keystream_gb_s(repeats)
        cases = [_case(n, d, budget_bytes, repeats, seed) for n in ns for d in ds]
    return {
        "bench": "secagg",
        "keystream_gb_s": round(keystream, 4),
        "cases": cases,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "wall_s": round(wall.wall, 2),
        "notes": (
            "all peers in one process on one core; protocol_s is serial over peers; "
            "see p2pfed/bench/secagg.py for exactly what each figure measures"
        ),
    }


def _case(n: int, d: int, budget_bytes: int, repeats: int, seed: int) -> dict[str, Any]:
    names = [f"peer-{i:04d}" for i in range(n)]
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

    protocol_d = d
    while n * 4 * protocol_d > budget_bytes and protocol_d > 1000:
        protocol_d = max(1000, 10 ** (len(str(protocol_d)) - 2))
    _progress(f"n={n} d={d:.0e}: whole protocol at d={protocol_d:.0e}")
    inputs = {p: rng.integers(0, 1 << 22, protocol_d, dtype=np.uint32) for p in names}
    with timed() as plain_sum:
        plain, _ = DirectMaskedSum().sum(inputs, 32)
    unmaskers = names if n <= 16 else [rep]
    with timed() as protocol:
        run = run_cohort(
            SecAggConfig("bench", 1, protocol_d),
            inputs,
            copy_inputs=False,
            probe=rep,
            compute_results=(),
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
    protocol_s, plain_sum_s = protocol.wall, plain_sum.wall
    if run.survivors != set(names):
        raise IntegrityError(f"secagg bench: only {len(run.survivors)} of {n} peers finished")
    message_bytes = max(run.bytes_sent.values())
    masked_vector_bytes = 4 * d
    bytes_per_peer = message_bytes + masked_vector_bytes
    peak_bound = 3 * 4 * protocol_d + 100 * 10**6
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
        "protocol_d": protocol_d,
        "protocol_s": round(protocol_s, 4),
        "unmask_peers": len(unmaskers),
        "unmask_s": round(min(unmask_times), 5),
        "plain_sum_s": round(plain_sum_s, 5),
        "exact": True,
        "message_bytes_per_peer": message_bytes,
        "bytes_per_peer": bytes_per_peer,
        "masked_vector_bytes": masked_vector_bytes,
        "bytes_ok": bytes_per_peer <= 1.1 * masked_vector_bytes,
        "peer_peak_bytes": run.probe_peak_bytes,
        "peer_peak_bound_bytes": peak_bound,
        "memory_ok": run.probe_peak_bytes <= peak_bound,
    }
