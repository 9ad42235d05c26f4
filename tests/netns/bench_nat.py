"""Round time of the demo behind NAT through a relay at WAN-like RTT, beside loopback.

Run as root from the repository root: ``python -m tests.netns.bench_nat --peers 4 --rounds 6``.
It runs the demo consortium (secure aggregation on) twice in one go: all daemons on
127.0.0.1, then each behind its own NAT in network namespaces, reached only through
``p2pfed relay`` behind the delay/bandwidth proxy (``--one-way`` seconds per pass, so
4 × that between two hospitals; ``--mbit`` per direction). Prints one JSON document: per
setting the duration of each round as the members report it (``last.duration_s``, the
median over members) and the wall time. Round 0 includes connection set-up; compare the
medians of the later rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pfed.consortium import launch, stop
from p2pfed.daemon import read_status
from p2pfed.demo import DemoSettings, build_consortium
from tests.netns.consortium_nat import nat_consortium, start_hospitals, start_relay
from tests.netns.harness import Topology, skip_reason, sweep_stale


def _follow(states: list[Path], rounds: int, timeout: float) -> dict[int, list[float]]:
    """Each round's duration per member, polled from status files until all finished."""
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
    raise TimeoutError(f"the consortium did not finish {rounds} rounds in {timeout} s")


def _summary(per_round: dict[int, list[float]], wall: float) -> dict[str, Any]:
    medians = {r: statistics.median(v) for r, v in per_round.items()}
    later = [m for r, m in medians.items() if r > 0]
    return {
        "round_s": {str(r): round(m, 3) for r, m in medians.items()},
        "median_round_s_after_first": round(statistics.median(later), 3) if later else None,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--one-way", type=float, default=0.01)
    parser.add_argument("--mbit", type=float, default=100.0)
    args = parser.parse_args()
    if reason := skip_reason():
        raise SystemExit(reason)
    sweep_stale()
    settings = DemoSettings(peers=args.peers, rounds=args.rounds)
    out: dict[str, Any] = {"peers": args.peers, "rounds": args.rounds, "load": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        loop = build_consortium(Path(tmp) / "loopback", settings)
        start = time.monotonic()
        try:
            launch(loop)
            per_round = _follow([h.state for h in loop.hospitals], args.rounds, 600)
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
            per_round = _follow([h.state for h in nat.demo.hospitals], args.rounds, 600)
        finally:
            topo.close()
        out["nat_relay"] = _summary(per_round, time.monotonic() - start) | {
            "rtt_s": 4 * args.one_way,
            "mbit_per_direction": args.mbit,
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
