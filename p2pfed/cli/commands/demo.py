"""``p2pfed demo``: a consortium of hospitals on this machine, trained end to end.

Project modules that load torch or the daemon are imported inside ``run`` (as in every
command module), so ``p2pfed --help`` stays fast; ``p2pfed.demo`` itself is light.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2pfed.demo import DemoConsortium, DemoSettings
from p2pfed.errors import ConfigError
from p2pfed.output import print_json

NAME = "demo"
HELP = "Run the demo consortium: N hospital daemons over libp2p, secure aggregation and DP on."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments."""
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
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="serve every hospital's dashboard side by side on 127.0.0.1, print its URL, "
        "and keep serving after the run until Ctrl-C",
    )
    parser.add_argument(
        "--dashboard-port", type=int, default=0, help="its port (default: a free one)"
    )
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.peers < 3 or args.peers > 16:
        raise ConfigError(f"--peers must be between 3 and 16, got {args.peers}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be ≥ 1, got {args.rounds}")
    if not args.alpha > 0:
        raise ConfigError(f"--alpha must be positive, got {args.alpha}")
    if not 0 <= args.dashboard_port <= 65535:
        raise ConfigError(
            f"--dashboard-port must be a TCP port (0-65535), got {args.dashboard_port}"
        )
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")


def _root(args: argparse.Namespace) -> Path:
    if args.dir is None:
        return Path(tempfile.mkdtemp(prefix="p2pfed-demo-"))
    root = Path(args.dir).resolve()  # daemons run elsewhere: a relative path would move
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"--dir {root} must be an empty folder or not exist yet")
    return root


def run(args: argparse.Namespace) -> int:
    """Build, launch, watch, and compare against local-only and centralized training."""
    from rich.console import Console

    from p2pfed.demo import build_consortium

    _check(args)
    settings = DemoSettings(peers=args.peers, rounds=args.rounds, alpha=args.alpha, seed=args.seed)
    console = Console(stderr=True)
    root = _root(args)
    started = time.monotonic()
    console.print(f"building a consortium of {args.peers} hospitals in {root}")
    consortium = build_consortium(root, settings)
    for h in consortium.hospitals:
        console.print(
            f"  {h.name}: {h.rows} patients, peer {h.identity.peer_id[:16]}…, port {h.port}"
        )
    with contextlib.ExitStack() as stack:
        if args.dashboard:
            stack.enter_context(_dashboard(consortium, args.dashboard_port, console))
        final = _run_live(consortium, args.timeout, console)
        summary = _summary(consortium, final, time.monotonic() - started)
        if args.json:
            print_json(summary["figures"])
        else:
            _print_results(consortium, summary)
        if args.dashboard:
            _serve_until_interrupted(console)
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    figures = summary["figures"]
    ok = figures["models_agree"] and figures["audit_logs_verify"] and figures["audit_logs_agree"]
    return 0 if ok else 1


@contextlib.contextmanager
def _dashboard(consortium: DemoConsortium, port: int, console: Any) -> Iterator[None]:
    """The side-by-side dashboard, its URL printed, served until the block ends."""
    from p2pfed.demo import dashboard_server

    server = dashboard_server(consortium, port)
    host, bound = server.address
    console.print(f"dashboard: http://{host}:{bound}/")
    try:
        yield
    finally:
        server.close()


def _serve_until_interrupted(console: Any) -> None:
    console.print("the dashboard stays up for a look at the final state; Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        console.print("stopped")


def _status_table(consortium: DemoConsortium, current: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    s = consortium.settings
    t = Table(title=f"p2pfed demo — {s.peers} hospitals, {s.rounds} rounds, α={s.alpha}")
    for col in ("hospital", "state", "round", "test acc.", "ε", "bytes sent"):
        t.add_column(col, justify="right" if col != "hospital" else "left")
    for h, status in zip(consortium.hospitals, current, strict=True):
        eps = status.get("epsilon")
        acc = status.get("test_accuracy")
        t.add_row(
            h.name,
            str(status.get("state", "starting")),
            f"{status.get('completed_round', -1) + 1}/{s.rounds}",
            "—" if acc is None else f"{acc:.3f}",
            "—" if eps is None else f"{eps:.2f}",
            str(status.get("bytes_sent", 0)),
        )
    return t


def _run_live(consortium: DemoConsortium, timeout: float, console: Any) -> list[dict[str, Any]]:
    """Run the daemons to the end under a live status table; their final statuses."""
    from rich.live import Live

    from p2pfed.consortium import run_to_end

    blank: list[dict[str, Any]] = [{}] * len(consortium.hospitals)
    with Live(_status_table(consortium, blank), console=console, refresh_per_second=4) as live:
        final = run_to_end(
            consortium, timeout, lambda cur: live.update(_status_table(consortium, cur))
        )
    console.line()  # the live table leaves the cursor on its last line
    return final


def _summary(
    consortium: DemoConsortium, final: list[dict[str, Any]], wall: float
) -> dict[str, Any]:
    """The JSON figures, plus the per-hospital accuracies the table shows."""
    from p2pfed.demo import check_audit_logs, federated_accuracy, references

    s = consortium.settings
    centralized, local = references(consortium)
    federated = [federated_accuracy(consortium, h) for h in consortium.hospitals]
    audit_verified, audit_agree = check_audit_logs(consortium)
    sent = [int(status.get("bytes_sent", 0)) for status in final]
    figures = {
        "peers": s.peers,
        "rounds": s.rounds,
        "federated_accuracy": float(sum(federated) / len(federated)),
        "centralized_accuracy": centralized,
        "local_only_accuracy": float(sum(local) / len(local)),
        "epsilon": max(float(status.get("epsilon") or 0.0) for status in final),
        "delta": s.delta,
        # DP-SGD noise is added inside each hospital before anything leaves it, so the ε
        # needs no trust in other members or in secure aggregation.
        "epsilon_holds_against": "every observer, any coalition of members included",
        "secure_aggregation": True,
        "bytes_sent_per_peer": float(sum(sent) / len(sent)),
        "wall_s": round(wall, 2),
        "models_agree": len({status.get("model_digest") for status in final}) == 1,
        "audit_logs_verify": audit_verified,
        "audit_logs_agree": audit_agree,
    }
    return {
        "figures": figures,
        "wall": wall,
        "local": local,
        "federated": federated,
        "final": final,
    }


def _print_results(consortium: DemoConsortium, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = summary["figures"]
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # piped: rich's 80-column default would fold the table
    t = Table(title="results on the held-out test set (patients no hospital saw)")
    columns = ("hospital", "patients", "local only", "federated", "centralized", "ε", "bytes sent")
    for col in columns:
        t.add_column(col, justify="right" if col != "hospital" else "left")
    rows = zip(
        consortium.hospitals, summary["local"], summary["federated"], summary["final"], strict=True
    )
    for h, lo, fe, status in rows:
        t.add_row(
            h.name,
            str(h.rows),
            f"{lo:.3f}",
            f"{fe:.3f}",
            f"{f['centralized_accuracy']:.3f}",
            f"{float(status.get('epsilon') or 0):.2f}",
            str(status.get("bytes_sent", 0)),
        )
    out.print(t)
    out.print(
        f"ε = {f['epsilon']:.2f} at δ = {f['delta']:g} per patient (DP-SGD, worst hospital; "
        "holds against every observer, any coalition of members included), "
        f"secure aggregation on, all models identical: {f['models_agree']}, "
        f"audit logs verify: {f['audit_logs_verify']} and agree: {f['audit_logs_agree']}, "
        f"wall time {summary['wall']:.1f} s"
    )
