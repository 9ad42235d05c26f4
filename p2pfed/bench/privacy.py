"""``p2pfed bench privacy``: time to ε after 10^4 and 10^5 steps, per accountant.

Theory of operation: for each accountant and step count, a fresh accountant records T
Poisson-subsampled Gaussian steps (q = 0.04, σ = 1.5, the setting of the golden values) and
computes ε at δ = 1e-5, cold (the RDP per-step cache is cleared first). The baseline is
dp-accounting's own RDP and PLD accountants on the same event in the same run (figures from
different runs on a shared machine are not comparable). Each timing is the best of three.
Targets from the issue: RDP < 50 ms; PLD < 2 s at 10^4 steps. The load average is reported
with the figures, as the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Any

from p2pfed.bench._timing import best_of
from p2pfed.errors import ConfigError
from p2pfed.output import print_json

# torch, trio, libp2p and the modules that load them are imported inside functions: every
# benchmark module is imported when `p2pfed --help` builds its parser.
NAME = "privacy"
HELP = "Time to ε after 10^4 and 10^5 steps for the RDP and PLD accountants (JSON)."

_Q, _SIGMA, _DELTA = 0.04, 1.5, 1e-5
_TARGETS: dict[tuple[str, int], float] = {
    ("rdp", 10_000): 0.05,
    ("rdp", 100_000): 0.05,
    ("pld", 10_000): 2.0,
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` (output is JSON either way) and ``--repeats``."""
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per cell (best kept)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print one JSON document."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    from p2pfed.privacy import make_accountant
    from p2pfed.privacy.accountants import _subsampled_gaussian_pld
    from p2pfed.privacy.rdp import DEFAULT_ORDERS, _rdp_vector_cached

    if args.repeats < 1:
        raise ConfigError(f"--repeats must be ≥ 1, got {args.repeats}")
    load_before = os.getloadavg()

    def ours(kind: str, steps: int) -> float:
        _rdp_vector_cached.cache_clear()
        _subsampled_gaussian_pld.cache_clear()
        acc = make_accountant(kind)
        acc.step(noise_multiplier=_SIGMA, sample_rate=_Q, steps=steps)
        return acc.get_epsilon(_DELTA)

    def reference(kind: str, steps: int) -> float:
        event = dp_accounting.PoissonSampledDpEvent(_Q, dp_accounting.GaussianDpEvent(_SIGMA))
        acc: Any = (
            rdp_privacy_accountant.RdpAccountant(list(DEFAULT_ORDERS))
            if kind == "rdp"
            else pld_privacy_accountant.PLDAccountant()
        )
        acc.compose(event, steps)
        return float(acc.get_epsilon(_DELTA))

    results = []
    for kind in ("rdp", "pld"):
        for steps in (10_000, 100_000):
            print(f"timing {kind} at {steps} steps…", file=sys.stderr, flush=True)
            seconds, eps = best_of(args.repeats, partial(ours, kind, steps))
            base_seconds, base_eps = best_of(args.repeats, partial(reference, kind, steps))
            target = _TARGETS.get((kind, steps))
            results.append(
                {
                    "accountant": kind,
                    "steps": steps,
                    "seconds": seconds,
                    "epsilon": eps,
                    "baseline": "dp-accounting "
                    + ("RdpAccountant" if kind == "rdp" else "PLDAccountant"),
                    "baseline_seconds": base_seconds,
                    "baseline_epsilon": base_eps,
                    "epsilon_vs_baseline": eps / base_eps,
                    "target_seconds": target,
                    "meets_target": None if target is None else seconds < target,
                }
            )
    print_json(
        {
            "benchmark": "privacy",
            "setting": {"sample_rate": _Q, "noise_multiplier": _SIGMA, "delta": _DELTA},
            "timing": f"best of {args.repeats}, cold caches, seconds",
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": list(load_before),
                "loadavg_after": list(os.getloadavg()),
            },
            "results": results,
        }
    )
    return 0
