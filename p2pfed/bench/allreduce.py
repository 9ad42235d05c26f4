"""``p2pfed bench allreduce``: ring all-reduce between peer processes over libp2p on loopback.

Theory of operation: for each peer count n, n peer processes start (``ProcessGroup``), each
with its own libp2p host on 127.0.0.1. For each vector size M the same processes then

1. open their ring connections (a small probe to each peer's ring successor),
2. measure the link rate B *in the same run with the same processes*: every peer streams
   S = 2(n−1)/n·M bytes to its ring successor at once, so CPU sharing among the n processes
   on this machine's cores is inside B; bound_s = S/B is the slowest peer's streaming time,
   i.e. the bandwidth lower bound 2(n−1)M/(nB) of ring all-reduce (Patarasuk & Yuan),
3. time the ring all-reduce of an M-byte float32 vector over the same ring (time_s is the
   slowest peer's time), with its bytes sent per peer (payload + framing) against the ideal
   2(n−1)/n·M,
4. with ``--secure``, time a whole secure-aggregation round (key exchange, shares, masking
   of M bytes of uint32 words, the masked ring, unmasking) against the same bound,
5. run the anchors for the same n and M in fresh processes (``_baseline``): gloo's
   ``all_reduce`` (``gloo_s``: what users would otherwise run, with neither authentication
   nor encryption) and the ring's bound on raw TCP (``tcp_bound_s``).

Every timed task starts at one instant shared by all processes (``time.monotonic`` is one
clock per machine), so the skew of handing tasks to n processes is not timed; a peer's time
runs from that instant to its own finish, and the case's time is the slowest peer's. Probe
and all-reduce alternate; each figure is the best of ``--repeats`` runs. The load average is
reported with the figures, as the machine is shared. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from p2pfed.errors import BrokenError, ConfigError
from p2pfed.output import print_json
from p2pfed.settings import comma_list

if TYPE_CHECKING:  # the harness loads libp2p: imported by run() only
    from p2pfed.testing.process import ProcessGroup

# torch, trio, libp2p and the modules that load them are imported inside functions: every
# benchmark module is imported when `p2pfed --help` builds its parser.
NAME = "allreduce"
_START_DELAY = 0.5  # seconds between handing out a timed task and its common start instant
HELP = "Ring all-reduce between peer processes over libp2p vs the bandwidth bound (JSON)."


_int_list = comma_list(int, "a positive whole number", lambda n: n >= 1)


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``--peers``, ``--mb``, ``--secure``, ``--repeats`` and ``--json``."""
    parser.add_argument("--peers", type=_int_list, default=[4, 8], help="peer counts (4,8)")
    parser.add_argument("--mb", type=_int_list, default=[16, 64], help="vector sizes in MB")
    parser.add_argument("--secure", action="store_true", help="also time secure rounds")
    parser.add_argument("--repeats", type=int, default=2, help="timings per case (best kept)")
    parser.add_argument(
        "--chunk-kb", type=int, default=256, help="ring pipeline chunk size in KiB (256)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    parser.set_defaults(func=run)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _progress(message: str) -> None:
    print(f"allreduce: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run every case and print one JSON document."""
    from p2pfed.testing.process import ProcessGroup

    if not 1 <= args.chunk_kb <= 8192:
        raise ConfigError(f"--chunk-kb must lie in 1..8192, got {args.chunk_kb}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
    if min(args.peers) < 2 or max(args.peers) > 32:
        raise ConfigError(f"--peers must lie in 2..32, got {args.peers}")
    cases: list[dict[str, Any]] = []
    load_before = _load()
    rounds = itertools.count(2)  # every timed task runs a round of its own, never reused
    for n in args.peers:
        _progress(f"starting {n} peer processes")
        with ProcessGroup(n, tag=f"bench-{n}", start_timeout=120) as group:
            for mb in args.mb:
                ring, bound = _ring_case(group, n, mb, args, rounds)
                found = [ring]
                if args.secure:
                    found.append(_secure_case(group, n, mb, args.repeats, rounds, bound))
                _progress(f"n={n} M={mb} MB: gloo all-reduce and raw-TCP ring (anchors)")
                anchors = _anchors(n, mb, args.repeats)
                cases += [case | anchors | _over(case, anchors) for case in found]
    print_json(
        {
            "bench": "allreduce",
            "transport": "libp2p (Noise, Yamux) on 127.0.0.1, one process per peer",
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": _load(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cases": cases,
        }
    )
    return 0


def _timed_run(group: ProcessGroup, task: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Run ``task`` on every peer from one common start instant."""
    return group.run(task | {"start_at": time.monotonic() + _START_DELAY}, timeout=600)


def _ring_case(
    group: ProcessGroup, n: int, mb: int, args: argparse.Namespace, rounds: Iterator[int]
) -> tuple[dict[str, Any], float]:
    """The plain ring all-reduce of ``mb`` MB among ``n`` peers, and its bandwidth bound."""
    words = mb * 1_000_000 // 4
    ideal = 2 * (n - 1) / n * words * 4
    order_round = next(rounds)
    # Connect along this case's ring first, so no timing includes a dial.
    group.run({"kind": "bandwidth", "bytes": 1 << 16, "order_round": order_round}, timeout=120)
    bound = time_best = float("inf")
    bytes_sent = 0
    # Probe and all-reduce alternate, so both see the same (shared) machine.
    for _ in range(args.repeats):
        _progress(f"n={n} M={mb} MB: link probe")
        probe = _timed_run(
            group, {"kind": "bandwidth", "bytes": int(ideal), "order_round": order_round}
        )
        if any(r is None for r in probe):
            raise BrokenError(f"a peer died during the link probe at n={n}")
        bound = min(bound, max(float(r["seconds"]) for r in probe if r))
        _progress(f"n={n} M={mb} MB: ring all-reduce")
        task = {
            "kind": "ring",
            "round": order_round,
            "words": words,
            "dtype": "float32",
            "seed": order_round,
            "chunk_bytes": args.chunk_kb * 1024,
        }
        group.run({"kind": "prepare", "task": task}, timeout=600)
        results = _timed_run(group, task)
        if any(r is None for r in results):
            raise BrokenError(f"a peer died during the all-reduce at n={n}")
        time_best = min(time_best, max(float(r["time_s"]) for r in results if r))
        bytes_sent = max(int(r["payload_sent"]) + int(r["framing_sent"]) for r in results if r)
        # A round runs once: the next repeat uses the next round (and its ring).
        order_round = next(rounds)
        group.run({"kind": "bandwidth", "bytes": 1 << 16, "order_round": order_round}, timeout=120)
    return _case(n, mb, False, time_best, bound, bytes_sent, ideal), bound


def _secure_case(
    group: ProcessGroup, n: int, mb: int, repeats: int, rounds: Iterator[int], bound: float
) -> dict[str, Any]:
    """A whole secure-aggregation round of ``mb`` MB among ``n`` peers, best of ``repeats``."""
    words = mb * 1_000_000 // 4
    ideal = 2 * (n - 1) / n * words * 4
    secure_best = float("inf")
    secure_bytes = 0
    for _ in range(repeats):
        _progress(f"n={n} M={mb} MB: secure round")
        secure_round = next(rounds)
        task = {
            "kind": "secure",
            "round": secure_round,
            "words": words,
            "dtype": "uint32",
            "seed": secure_round,
        }
        group.run({"kind": "prepare", "task": task}, timeout=600)
        results = _timed_run(group, task)
        if any(r is None or not r["ok"] or len(r["survivors"]) != n for r in results):
            raise BrokenError(f"a secure round failed or lost a peer at n={n}, M={mb} MB")
        secure_best = min(secure_best, max(float(r["time_s"]) for r in results if r))
        secure_bytes = max(int(r["bytes_sent"] or 0) for r in results if r)
    return _case(n, mb, True, secure_best, bound, secure_bytes, ideal)


def _anchors(n: int, mb: int, repeats: int) -> dict[str, float]:
    """The anchors: gloo's all-reduce and the raw-TCP ring bound, same peers and bytes."""
    from p2pfed.bench._baseline import gloo_allreduce_s, tcp_ring_bound_s

    return {
        "gloo_s": round(gloo_allreduce_s(n, mb, repeats), 4),
        "tcp_bound_s": round(tcp_ring_bound_s(n, mb, repeats), 4),
    }


def _over(case: dict[str, Any], anchors: dict[str, float]) -> dict[str, float]:
    return {
        "time_over_gloo": round(case["time_s"] / anchors["gloo_s"], 2),
        "time_over_tcp_bound": round(case["time_s"] / anchors["tcp_bound_s"], 2),
    }


def _case(
    n: int, mb: int, secure: bool, time_s: float, bound_s: float, sent: int, ideal: float
) -> dict[str, Any]:
    return {
        "peers": n,
        "mb": mb,
        "secure": secure,
        "time_s": round(time_s, 4),
        "bound_s": round(bound_s, 4),
        "time_over_bound": round(time_s / bound_s, 3),
        "bytes_sent_per_peer": sent,
        "bytes_ideal": int(ideal),
        "bytes_over_ideal": round(sent / ideal, 5),
    }
