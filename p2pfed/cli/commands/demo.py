"""``p2pfed demo``: a consortium of hospitals on this machine, trained end to end."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "Run the demo consortium: N hospital daemons over libp2p, secure aggregation and DP on."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments."""
    from p2pfed.demo import DemoSettings

    d = DemoSettings()
    parser.add_argument("--peers", type=int, default=d.peers, help=f"hospitals (default {d.peers})")
    parser.add_argument("--rounds", type=int, default=d.rounds, help=f"rounds (default {d.rounds})")
    parser.add_argument(
        "--alpha", type=float, default=d.alpha, help=f"Dirichlet label skew α (default {d.alpha})"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="data split seed")
    parser.add_argument("--dir", help="keep the consortium in this folder (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many s")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, launch, watch, and compare against local-only and centralized training."""
    import json
    import shutil
    import sys
    import tempfile
    import time
    from pathlib import Path
    from typing import Any

    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from p2pfed.demo import (
        DemoSettings,
        build_consortium,
        check_audit_logs,
        federated_accuracy,
        launch,
        references,
        stop,
        watch,
    )
    from p2pfed.errors import ConfigError

    if args.peers < 3 or args.peers > 16:
        raise ConfigError(f"--peers must be between 3 and 16, got {args.peers}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be ≥ 1, got {args.rounds}")
    if not args.alpha > 0:
        raise ConfigError(f"--alpha must be positive, got {args.alpha}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    settings = DemoSettings(peers=args.peers, rounds=args.rounds, alpha=args.alpha, seed=args.seed)
    console = Console(stderr=True)
    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="p2pfed-demo-"))
    if keep and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"--dir {root} must be an empty folder or not exist yet")
    started = time.monotonic()
    console.print(f"building a consortium of {args.peers} hospitals in {root}")
    consortium = build_consortium(root, settings)
    for h in consortium.hospitals:
        console.print(
            f"  {h.name}: {h.rows} patients, peer {h.identity.peer_id[:16]}…, port {h.port}"
        )

    def table(current: list[dict[str, Any]]) -> Table:
        t = Table(
            title=f"p2pfed demo — {args.peers} hospitals, {args.rounds} rounds, α={args.alpha}"
        )
        for col in ("hospital", "state", "round", "test acc.", "ε", "bytes sent"):
            t.add_column(col, justify="right" if col != "hospital" else "left")
        for h, s in zip(consortium.hospitals, current, strict=True):
            eps = s.get("epsilon")
            acc = s.get("test_accuracy")
            t.add_row(
                h.name,
                str(s.get("state", "starting")),
                f"{s.get('completed_round', -1) + 1}/{args.rounds}",
                "—" if acc is None else f"{acc:.3f}",
                "—" if eps is None else f"{eps:.2f}",
                str(s.get("bytes_sent", 0)),
            )
        return t

    try:
        launch(consortium)
        with Live(table([{}] * args.peers), console=console, refresh_per_second=4) as live:
            final = watch(consortium, args.timeout, lambda cur: live.update(table(cur)))
        console.line()  # the live table leaves the cursor on its last line
    except BaseException:
        stop(consortium)
        raise
    wall = time.monotonic() - started
    stop(consortium)
    centralized, local = references(consortium)
    federated = [federated_accuracy(consortium, h) for h in consortium.hospitals]
    digests = {s.get("model_digest") for s in final}
    audit_verified, audit_agree = check_audit_logs(consortium)
    epsilon = max(float(s.get("epsilon") or 0.0) for s in final)
    sent = [int(s.get("bytes_sent", 0)) for s in final]
    summary = {
        "peers": args.peers,
        "rounds": args.rounds,
        "federated_accuracy": float(sum(federated) / len(federated)),
        "centralized_accuracy": centralized,
        "local_only_accuracy": float(sum(local) / len(local)),
        "epsilon": epsilon,
        "delta": settings.delta,
        # DP-SGD noise is added inside each hospital before anything leaves it, so the ε
        # needs no trust in other members or in secure aggregation.
        "epsilon_holds_against": "every observer, any coalition of members included",
        "secure_aggregation": True,
        "bytes_sent_per_peer": float(sum(sent) / len(sent)),
        "wall_s": round(wall, 2),
        "models_agree": len(digests) == 1,
        "audit_logs_verify": audit_verified,
        "audit_logs_agree": audit_agree,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        out = Console()
        if not out.is_terminal:
            out = Console(width=120)  # piped: rich's 80-column default would fold the table
        t = Table(title="results on the held-out test set (patients no hospital saw)")
        for col in (
            "hospital",
            "patients",
            "local only",
            "federated",
            "centralized",
            "ε",
            "bytes sent",
        ):
            t.add_column(col, justify="right" if col != "hospital" else "left")
        for h, lo, fe, s in zip(consortium.hospitals, local, federated, final, strict=True):
            t.add_row(
                h.name,
                str(h.rows),
                f"{lo:.3f}",
                f"{fe:.3f}",
                f"{centralized:.3f}",
                f"{float(s.get('epsilon') or 0):.2f}",
                str(s.get("bytes_sent", 0)),
            )
        out.print(t)
        out.print(
            f"ε = {epsilon:.2f} at δ = {settings.delta:g} per patient (DP-SGD, worst hospital; "
            "holds against every observer, any coalition of members included), "
            f"secure aggregation on, all models identical: {summary['models_agree']}, "
            f"audit logs verify: {audit_verified} and agree: {audit_agree}, wall time {wall:.1f} s"
        )
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if summary["models_agree"] and audit_verified and audit_agree else 1
