"""``p2pfed bench nat``: a demo round behind NAT via a relay at WAN-like RTT, beside loopback.

Theory of operation: the demo consortium (``p2pfed.demo``, secure aggregation on) runs twice
in one go: all daemons on 127.0.0.1, then each behind its own NAT router in network
namespaces (``_netns.harness``: nftables masquerade out, new inbound connections dropped),
reached only through ``p2pfed relay`` behind the userspace delay/bandwidth proxy
(``--one-way`` seconds per pass, so 4 × that between two hospitals; ``--mbit`` per
direction). Needs root with the ``ip`` and ``nft`` commands; without them it stops with one
sentence saying which is missing. Prints one JSON document: per setting the duration of each
round as the members report it (``last.duration_s``, the median over members) and the wall
time, and the load average before and after. Round 0 includes connection set-up: compare
the medians of the later rounds. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pfed.errors import ConfigError, LocalError
from p2pfed.output import print_json

NAME = "nat"
HELP = "A round of the demo behind NAT via a relay at 40 ms RTT, beside loopback (root; JSON)."


def _follow(states: list[Path], rounds: int, timeout: float) -> dict[int, list[float]]:
    """Each round's duration per member, polled from status files until all finished."""
    from p2pfed.governance.status_file import read_status

    seen: dict[int, dict[int, float]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [read_status(p) or {} for p in states]
        for i, s in enumerate(statuses):
            last = s.get("last") or {}
            if "round" in last and last.get("committed"):
                seen.setdefault(last["round"], {})[i] = last["duration_s"]
        if all(s.get("state") == "finished" for s in statuses):
            return {r: sorted(d.values()) for r, d in sorted(seen.items())}
        time.sleep(0.05)
    raise LocalError(f"the consortium did not finish {rounds} rounds in {timeout:g} s")


def _summary(per_round: dict[int, list[float]], wall: float) -> dict[str, Any]:
    medians = {r: statistics.median(v) for r, v in per_round.items()}
    later = [m for r, m in medians.items() if r > 0]
    return {
        "round_s": {str(r): round(m, 3) for r, m in medians.items()},
        "median_round_s_after_first": round(statistics.median(later), 3) if later else None,
        "wall_s": round(wall, 1),
    }


def register(parser: argparse.ArgumentParser) -> None:
    """Add the consortium and link options."""
    parser.add_argument("--peers", type=int, default=4, help="hospitals (4)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per setting (6)")
    parser.add_argument(
        "--one-way",
        type=float,
        default=0.01,
        help="seconds the proxy delays each pass; 4 × this is the hospitals' RTT (0.01)",
    )
    parser.add_argument("--mbit", type=float, default=100.0, help="Mbit/s per direction (100)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per setting (600)")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry; JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Both settings, one after the other, and the JSON document."""
    from p2pfed.bench._netns.consortium_nat import nat_consortium, start_hospitals, start_relay
    from p2pfed.bench._netns.harness import Topology, skip_reason, sweep_stale
    from p2pfed.consortium import launch, stop
    from p2pfed.demo import DemoSettings, build_consortium

    if args.peers < 3 or args.rounds < 2:
        raise ConfigError(f"--peers must be ≥ 3 and --rounds ≥ 2, got {args.peers}, {args.rounds}")
    if args.one_way < 0 or args.mbit <= 0 or args.timeout <= 0:
        raise ConfigError("--one-way must be ≥ 0, and --mbit and --timeout positive")
    if reason := skip_reason():
        raise LocalError(f"bench nat cannot run here: {reason}")
    sweep_stale()
    settings = DemoSettings(peers=args.peers, rounds=args.rounds)
    out: dict[str, Any] = {
        "bench": "nat",
        "peers": args.peers,
        "rounds": args.rounds,
        "secagg": True,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        loop = build_consortium(Path(tmp) / "loopback", settings)
        start = time.monotonic()
        try:
            launch(loop)
            per_round = _follow([h.state for h in loop.hospitals], args.rounds, args.timeout)
        finally:
            stop(loop)
        out["loopback"] = _summary(per_round, time.monotonic() - start)
        nat = nat_consortium(Path(tmp) / "nat", settings)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        topo = Topology(args.peers, logs)
        try:
            topo.build()
            start_relay(topo, nat, args.one_way, args.mbit * 1e6 / 8)
            start = time.monotonic()
            start_hospitals(topo, nat)
            states = [h.state for h in nat.demo.hospitals]
            per_round = _follow(states, args.rounds, args.timeout)
        finally:
            topo.close()
        out["nat_relay"] = _summary(per_round, time.monotonic() - start) | {
            "rtt_s": 4 * args.one_way,
            "mbit_per_direction": args.mbit,
        }
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print_json(out)
    return 0
