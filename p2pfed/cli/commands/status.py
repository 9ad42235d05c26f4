"""``p2pfed status --config FILE``: what a daemon is doing, from its state folder.

Quick on purpose (a container's HEALTHCHECK calls ``--health``): it reads ``status.json`` through
``p2pfed.governance.status_file`` and imports neither torch nor libp2p.
"""

from __future__ import annotations

import argparse
from typing import Any

from p2pfed.output import print_json

NAME = "status"
HELP = "Show a node's state, members, rounds, privacy spent and model version."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments."""
    parser.add_argument("--config", required=True, help="the institution's config.toml")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--health",
        action="store_true",
        help="one line; exit 0 if the daemon's pid is alive and its status fresh, else 1",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=None,
        metavar="S",
        help="with --health: the oldest status still fresh, in seconds (default 600)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read status.json, check the daemon's pid is alive, and print them."""
    import time

    from p2pfed.governance.status_file import node_state, read_status, with_liveness

    if args.health:
        return _health(args)
    name, state_dir = node_state(args.config)
    raw = read_status(state_dir)
    if raw is None:
        print(f"{name}: no status yet (the daemon has not started here)")
        return 1
    status = with_liveness(raw, time.time())
    if args.json:
        print_json(status)
        return 0
    rows = _rows(status)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    members = _members(status)
    if members:
        print("members")
        width = max(len(k) for k, _ in members)
        for key, value in members:
            print(f"  {key:<{width}}  {value}")
    return 0


def _health(args: argparse.Namespace) -> int:
    """A container's HEALTHCHECK: one line; 0 healthy, 1 not (Docker reserves 2)."""
    import time

    from p2pfed.errors import P2PFedError
    from p2pfed.governance.status_file import HEALTH_MAX_AGE_S, health, node_state, read_status

    max_age = HEALTH_MAX_AGE_S if args.max_age is None else args.max_age
    try:
        ok, line = health(read_status(node_state(args.config)[1]), time.time(), max_age)
    except P2PFedError as exc:  # a missing config or a torn status file: unhealthy too
        ok, line = False, f"unhealthy: {exc}"
    print(line)
    return 0 if ok else 1


def _rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    pid = status.get("pid", "—")
    rows = [
        ("node", f"{status.get('name')} ({status.get('peer_id')})"),
        ("state", f"{status['shown_state']} (updated {status['age_s']} s ago)"),
        ("daemon pid", f"{pid} ({'alive' if status['running'] else 'not running'})"),
        ("rounds done", f"{int(status.get('completed_round', -1)) + 1} of {status.get('rounds')}"),
        ("connected peers", str(status.get("connected_peers", 0))),
        ("test accuracy", _fmt(status.get("test_accuracy"))),
        (
            "ε spent",
            _fmt(status.get("epsilon"))
            + f" of {status.get('epsilon_budget', '—')}, left {_fmt(status.get('epsilon_left'))}",
        ),
        ("bytes sent", str(status.get("bytes_sent", 0))),
        ("model version", str(status.get("model_version", "—"))),
        (
            "roster",
            f"version {status.get('roster_version', '—')}, expires "
            f"{status.get('roster_expires_at', '—')}"
            + (f"; {status['roster_warning']}" if status.get("roster_warning") else ""),
        ),
    ]
    if status.get("reachability"):
        rows.append(("dialable", _reachability(status["reachability"])))
    if status.get("waiting") and status["shown_state"] == "running":
        w = status["waiting"]
        missing = f" for {', '.join(w['missing'])}" if w.get("missing") else ""
        rows.append(("waiting", f"round {w.get('round')}{missing}: {w.get('reason')}"))
    why = status.get("error") or status.get("stop_reason")
    if why and status.get("state") not in ("running", "starting", "finished"):
        rows.append(("stopped because", str(why)))
    return rows


def _reachability(r: dict[str, Any]) -> str:
    """Whether other members could dial this node at its roster addresses (dial-back)."""
    by_addr: dict[str, dict[str, str]] = r.get("addresses") or {}
    if r.get("state") == "dialable":
        ok = [a for a, by in by_addr.items() if "ok" in by.values()]
        who = sorted({h for a in ok for h, why in by_addr[a].items() if why == "ok"})
        return f"yes, at {', '.join(ok)} (dialled back by {', '.join(who)})"
    if r.get("state") == "not dialable":
        why = "; ".join(
            f"{a}: " + ", ".join(f"{h}: {w}" for h, w in by.items()) for a, by in by_addr.items()
        )
        return f"NO ({why}): check the port forwarding and the firewall's inbound rule"
    return "not checked yet (waits for a connected member)"


def _members(status: dict[str, Any]) -> list[tuple[str, str]]:
    """Per member: connected now, the last round it was in, its last error."""
    members = status.get("members")
    rows = []
    for member, row in sorted(members.items() if isinstance(members, dict) else []):
        seen = row.get("last_round")
        line = "connected" if row.get("connected") else "not connected"
        if row.get("reached"):
            opened, rtt = row.get("open_s"), row.get("rtt_s")
            line += f" ({row['reached']}"
            line += f", stream open {opened * 1000:.0f} ms" if opened else ""
            line += f", round trip {rtt * 1000:.1f} ms" if rtt else ""
            rate = row.get("throughput_mbps")
            line += f", receiving {rate:.1f} Mbit/s" if rate else ""
            line += f"; hole punch failed: {row['hole_punch']}" if row.get("hole_punch") else ""
            line += ")"
        elif row.get("unreachable"):
            line += f" (unreachable: {row['unreachable']})"
        line += f", last round {'—' if seen is None else seen}"
        if row.get("last_error"):
            line += f", last error: {row['last_error']}"
        rows.append((str(member), line))
    return rows


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—"
