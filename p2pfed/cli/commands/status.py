"""``p2pfed status --config FILE``: what a daemon is doing, from its state folder."""

from __future__ import annotations

import argparse

from p2pfed.output import print_json

NAME = "status"
HELP = "Show a node's round, connected peers, privacy spent and last model hash."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments."""
    parser.add_argument("--config", required=True, help="the institution's config.toml")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read status.json and the ledger (read-only) and print them; check the pid is alive."""
    import time

    from p2pfed.config import load_config
    from p2pfed.daemon import read_status
    from p2pfed.lifecycle import process_alive

    config = load_config(args.config)
    status = read_status(config.path(config.node.state_dir))
    if status is None:
        print(f"{config.node.name}: no status yet (the daemon has not started here)")
        return 1
    ledger_path = config.path(config.privacy.ledger)
    if config.privacy.mode != "off" and ledger_path.exists():
        from p2pfed.privacy import PrivacyLedger

        p = config.privacy
        ledger = PrivacyLedger(
            ledger_path, p.epsilon_budget, p.delta, config.accountant, read_only=True
        )
        status |= {
            "epsilon": ledger.spent_epsilon(),
            "epsilon_budget": p.epsilon_budget,
            "delta": p.delta,
            "releases": len(ledger.records),
        }
    status["age_s"] = round(time.time() - float(status.get("updated", 0)), 1)
    # The file outlives its writer: a killed daemon leaves "running" behind.
    status["running"] = process_alive(status.get("pid"))
    shown = str(status.get("state"))
    if not status["running"]:
        shown = (
            f"not running (last recorded: {shown}; the daemon ended without recording a stop)"
            if shown in ("starting", "running")
            else f"{shown}, not running"
        )
    if args.json:
        print_json(status)
        return 0
    rows = [
        ("node", f"{status.get('name')} ({status.get('peer_id')})"),
        ("state", f"{shown} (updated {status['age_s']} s ago)"),
        ("rounds done", f"{int(status.get('completed_round', -1)) + 1} of {status.get('rounds')}"),
        ("connected peers", str(status.get("connected_peers", 0))),
        ("test accuracy", _fmt(status.get("test_accuracy"))),
        ("ε spent", _fmt(status.get("epsilon")) + f" of {status.get('epsilon_budget', '—')}"),
        ("bytes sent", str(status.get("bytes_sent", 0))),
        ("last model", str(status.get("model_digest", "—"))[:16]),
        (
            "roster",
            f"version {status.get('roster_version', '—')}, expires "
            f"{status.get('roster_expires_at', '—')}"
            + (f"; {status['roster_warning']}" if status.get("roster_warning") else ""),
        ),
    ]
    if status.get("error"):
        rows.append(("stopped because", str(status["error"])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—"
