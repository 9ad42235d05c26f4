"""``p2pfed bench nat``: a demo round behind NAT via a relay at WAN-like RTT, beside loopback.

Theory of operation: the demo consortium (``p2pfed.demo``, secure aggregation on) runs twice
in one go: all daemons on 127.0.0.1, then each behind its own NAT router in network
namespaces (``_netns.harness``: nftables masquerade out, new inbound connections dropped),
reached only through ``p2pfed relay`` behind the userspace delay/bandwidth proxy
(``--one-way`` seconds per pass, so 4 × that between two hospitals; ``--mbit`` per
direction). Needs root with the ``ip`` and ``nft`` commands; without them it stops with one
sentence saying which is missing. Prints one JSON document: per setting the duration of each
round as the members report it (``last.duration_s``, the median over members) and the wall
time, the seconds per stage (the median over members and rounds after the first, from
their audit logs), how the members reached each other at the end and the throughput they
measured (``links``: min, median and max over the member pairs whose rate is known), the
relay process's CPU seconds over the NAT run, and the load average before and after.
Round 0 includes connection set-up: compare the medians of the later rounds. Nothing here
asserts a time.

``--params N`` replaces the demo's logistic model with an MLP of N parameters declared by
reference (``p2pfed.training.sized:mlp``, as ``bench round`` does), privacy off, secure
aggregation on; the JSON then adds ``bandwidth_bound_s``: the ring bytes one member sends
per round, 2(n−1)/n × N words of 4 bytes, over ``--mbit``. Each member's connection to the
relay passes the proxy, which paces each direction of each connection at ``--mbit``, so no
relayed round can be faster than that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfed.bench._timing import process_cpu_s, round_ends, stage_pairs
from p2pfed.errors import ConfigError, LocalError
from p2pfed.output import print_json

if TYPE_CHECKING:  # loaded by run() only: `p2pfed --help` imports every bench module
    from p2pfed.demo import DemoConsortium

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


def _summary(per_round: dict[int, list[float]], wall: float, states: list[Path]) -> dict[str, Any]:
    medians = {r: statistics.median(v) for r, v in per_round.items()}
    later = [m for r, m in medians.items() if r > 0]
    return {
        "round_s": {str(r): round(m, 3) for r, m in medians.items()},
        "median_round_s_after_first": round(statistics.median(later), 3) if later else None,
        "stages_s_after_first": _stages(states),
        "links": _links(states),
        "wall_s": round(wall, 1),
    }


def _links(states: list[Path]) -> dict[str, Any]:
    """How the members reached each other at the end, and the rates they measured (status)."""
    from p2pfed.governance.status_file import read_status

    via: dict[str, int] = {}
    rates = []
    for state in states:
        for name, row in ((read_status(state) or {}).get("members") or {}).items():
            if name == "relay":  # the relay's own link carries only circuits' ciphertext
                continue
            via[str(row.get("reached"))] = via.get(str(row.get("reached")), 0) + 1
            if row.get("throughput_mbps"):
                rates.append(row["throughput_mbps"])
    return {
        "via": via,
        "measured": len(rates),
        "throughput_mbps": (
            {"min": min(rates), "median": statistics.median(rates), "max": max(rates)}
            if rates
            else None
        ),
    }


def _stages(states: list[Path]) -> dict[str, float]:
    """Per stage, the median over members and rounds after the first (audit ``round_end``)."""
    seconds: dict[str, list[float]] = {}
    for state in states:
        for entry in round_ends(state):
            body = entry["body"]
            if body.get("round", 0) > 0 and body.get("outcome") == "completed":
                for name, took in stage_pairs(body.get("stages_s")):
                    seconds.setdefault(name, []).append(took)
    return {name: round(statistics.median(v), 3) for name, v in seconds.items()}


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
    parser.add_argument(
        "--params",
        type=float,
        default=0.0,
        help="an MLP of this many parameters instead of the demo model, privacy off (0: demo)",
    )
    parser.add_argument("--json", action="store_true", help="accepted for symmetry; JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Both settings, one after the other, and the JSON document."""
    from p2pfed.bench._netns.consortium_nat import nat_consortium, start_hospitals, start_relay
    from p2pfed.bench._netns.harness import Topology, skip_reason, sweep_stale
    from p2pfed.bench.round import model_words
    from p2pfed.consortium import launch, stop
    from p2pfed.demo import DemoSettings, build_consortium

    if args.peers < 3 or args.rounds < 2:
        raise ConfigError(f"--peers must be ≥ 3 and --rounds ≥ 2, got {args.peers}, {args.rounds}")
    if args.one_way < 0 or args.mbit <= 0 or args.timeout <= 0:
        raise ConfigError("--one-way must be ≥ 0, and --mbit and --timeout positive")
    if args.params and not 1e3 <= args.params <= 1e9:
        raise ConfigError(
            f"--params must be 0 (the demo model) or lie in 1e3..1e9, got {args.params:g}"
        )
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
    if args.params:
        words = model_words("mlp", args.params)
        ring_bytes = 2 * (args.peers - 1) / args.peers * words * 4
        out |= {
            "model": "mlp",
            "params": words,
            "privacy": "off",
            "bandwidth_bound_s": round(ring_bytes / (args.mbit * 1e6 / 8), 3),
        }
    with tempfile.TemporaryDirectory() as tmp:
        loop = build_consortium(Path(tmp) / "loopback", settings)
        if args.params:
            _sized(loop, args.params)
        start = time.monotonic()
        try:
            launch(loop)
            states = [h.state for h in loop.hospitals]
            per_round = _follow(states, args.rounds, args.timeout)
        finally:
            stop(loop)
        out["loopback"] = _summary(per_round, time.monotonic() - start, states)
        nat = nat_consortium(Path(tmp) / "nat", settings)
        if args.params:
            _sized(nat.demo, args.params)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        topo = Topology(args.peers, logs)
        try:
            topo.build()
            relay = start_relay(topo, nat, args.one_way, args.mbit * 1e6 / 8)
            relay_cpu = process_cpu_s(relay.pid) or 0.0
            start = time.monotonic()
            start_hospitals(topo, nat)
            states = [h.state for h in nat.demo.hospitals]
            per_round = _follow(states, args.rounds, args.timeout)
            relay_cpu = (process_cpu_s(relay.pid) or relay_cpu) - relay_cpu
        finally:
            topo.close()
        wall = time.monotonic() - start
        out["nat_relay"] = _summary(per_round, wall, states) | {
            "rtt_s": 4 * args.one_way,
            "mbit_per_direction": args.mbit,
            # Every relayed byte passes the relay's Python process: its CPU share is the
            # first place to look when rounds stay far above the bandwidth bound.
            "relay_cpu_s": round(relay_cpu, 2),
        }
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print_json(out)
    return 0


def _sized(demo: DemoConsortium, params: float) -> None:
    """Every member's config: an MLP of ``params`` by reference, privacy off."""
    import tomllib

    from p2pfed.bench.round import model_tables, privacy_table
    from p2pfed.consortium import render_toml

    for h in demo.hospitals:
        tables = tomllib.loads(h.config.read_text())
        tables |= model_tables("mlp", params) | {"privacy": privacy_table("off")}
        tables["training"]["learning_rate"] = 0.05  # the demo's 0.5 suits its logistic model
        # A big model's stages may need more than the default ceiling (the round timeout):
        # measured here are rounds that commit, not failure detection.
        tables["rounds"] |= {"stage_timeout_max_s": 600.0, "round_timeout_s": 600.0}
        h.config.write_text(render_toml(tables, f"bench nat, {params:g} parameters, {h.name}"))
