"""``p2pfed privacy report|plan|recover``: what a node has spent, and what a plan will cost.

``report`` reads a ledger (read-only, so it works beside a running node) given either
``--config FILE`` (its ``[privacy]`` table) or ``--ledger PATH --budget E --delta D``, and
prints ε spent with each accountant, budget left, and rounds left at the current settings
(from the config or flags, else the last release's); with ``--config`` the ledger is also
checked against its anchors (checkpoint, audit log), so a cut ledger is not reported as a
small spend. ``plan`` finds the noise multiplier that keeps R rounds of T steps at rate q
within (ε, δ), with each accountant. ``recover --config FILE`` rebuilds a refused ledger
from what it still holds, the audit log and the checkpoint, never lowering the spend.

Distributed DP is charged against c colluding members (``[secagg] collusion``): the ledger
holds that figure. Given the guaranteed contributors m (``--min-contributors``), both commands
also show ε against an outsider, whom all m noise shares protect: per round ρ scales by
(m − c)/m (the τ term of the discrete Gaussian is negligible at planned variances, and
``plan --peers`` computes it exactly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from p2pfed.output import print_json

NAME = "privacy"
HELP = "Differential-privacy budget: report what a ledger has spent, or plan a noise level."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` and ``plan`` sub-commands."""
    from p2pfed.cli import add_group

    sub = add_group(parser)
    report = sub.add_parser("report", help="ε spent per accountant, budget and rounds left.")
    report.add_argument("--config", type=Path, help="TOML file with a [privacy] table")
    report.add_argument("--ledger", type=Path, help="ledger file (instead of --config)")
    report.add_argument("--budget", type=float, help="ε budget (with --ledger)")
    report.add_argument("--delta", type=float, help="δ (with --ledger)")
    report.add_argument("--accountant", choices=["pld", "rdp"], help="accountant that governs")
    report.add_argument("--noise-multiplier", type=float, help="σ per release, for rounds left")
    report.add_argument("--sample-rate", type=float, help="q per step, for rounds left")
    report.add_argument("--steps-per-round", type=int, help="steps per release, for rounds left")
    report.add_argument(
        "--min-contributors", type=int, help="m: inputs in every sum (distributed mode)"
    )
    report.add_argument("--collusion", type=int, help="c the ledger's ε holds against")
    report.add_argument("--json", action="store_true", help="print one JSON document")
    report.set_defaults(func=run_report)

    plan = sub.add_parser("plan", help="Noise multiplier for a target (ε, δ) over R rounds.")
    plan.add_argument("--epsilon", type=float, required=True, help="target ε after all rounds")
    plan.add_argument("--delta", type=float, required=True, help="δ")
    plan.add_argument("--rounds", type=int, required=True, help="number of rounds R")
    plan.add_argument("--sample-rate", type=float, default=1.0, help="q per step (default 1)")
    plan.add_argument("--steps-per-round", type=int, default=1, help="steps per round (default 1)")
    plan.add_argument("--peers", type=int, help="n members: plan the distributed discrete Gaussian")
    plan.add_argument(
        "--min-contributors", type=int, help="m inputs per sum (default: the secagg floor)"
    )
    plan.add_argument("--collusion", type=int, default=1, help="c colluding members (default 1)")
    plan.add_argument("--dimension", type=int, help="model parameters d (with --peers)")
    plan.add_argument("--clip-norm", type=float, default=1.0, help="S (with --peers)")
    plan.add_argument("--json", action="store_true", help="print one JSON document")
    plan.set_defaults(func=run_plan)

    recover = sub.add_parser(
        "recover", help="Rebuild a refused ledger from the audit log; never lowers the spend."
    )
    recover.add_argument("--config", type=Path, required=True, help="the node's config.toml")
    recover.add_argument("--json", action="store_true", help="print one JSON document")
    recover.set_defaults(func=run_recover)


def _settings(args: argparse.Namespace) -> tuple[Any, float | None, float, int, int | None]:
    """(ledger, σ, q, T, c) from --config or the flags; flags override the config."""
    from p2pfed.config import load_config
    from p2pfed.errors import ConfigError
    from p2pfed.privacy.ledger import PrivacyLedger

    if args.config is not None:
        if args.ledger is not None or args.budget is not None or args.delta is not None:
            raise ConfigError("give either --config or --ledger/--budget/--delta, not both")
        config = load_config(args.config)  # the daemon's own parser: the same keys, checked
        cfg = config.privacy
        path, budget, delta = config.path(cfg.ledger), cfg.epsilon_budget, cfg.delta
        anchors = _anchors(config)
        if not path.exists():
            anchors.refuse_missing(path)
        heads = anchors.heads
        kind, sigma, q, t = (
            config.accountant,
            cfg.noise_multiplier,
            cfg.sample_rate,
            cfg.steps_per_round,
        )
        collusion = config.secagg.collusion if cfg.mode == "distributed" else None
    else:
        if args.ledger is None or args.budget is None or args.delta is None:
            raise ConfigError("give --config FILE, or all of --ledger, --budget and --delta")
        path, budget, delta, kind = args.ledger, args.budget, args.delta, "pld"
        sigma, q, t, heads, collusion = None, None, None, None, None
    kind = args.accountant or kind
    collusion = args.collusion or collusion
    ledger = PrivacyLedger(path, budget, delta, kind, read_only=True, anchors=heads)
    last = ledger.records[-1].release if ledger.records else None
    sigma = args.noise_multiplier or sigma or (last.noise_multiplier if last else None)
    q = args.sample_rate or q or (last.sample_rate if last else 1.0)
    t = args.steps_per_round or t or (last.steps if last else 1)
    return ledger, sigma, q, t, collusion


def _outsider_epsilon(kind: str, ledger: Any, m: int, c: int) -> float:
    """ε of the ledger's releases seen by an outsider: distributed ones at ρ·(m − c)/m."""
    from p2pfed.privacy import make_accountant
    from p2pfed.privacy.mechanisms import NoiseMode

    if not 1 <= c < m:
        from p2pfed.errors import ConfigError

        raise ConfigError(f"--collusion must lie in 1..m − 1 = {m - 1}, got {c}")
    acc = make_accountant(kind)
    for rec in ledger.records:
        r = rec.release
        scale = (m / (m - c)) ** 0.5 if r.mode is NoiseMode.DISTRIBUTED else 1.0
        acc.step(
            noise_multiplier=r.noise_multiplier * scale, sample_rate=r.sample_rate, steps=r.steps
        )
    return acc.get_epsilon(ledger.delta)


def _anchors(config: Any) -> Any:
    """The ledger heads the node's checkpoint and audit log record."""
    from p2pfed.daemon import AUDIT_FILE
    from p2pfed.governance.ledger_anchors import collect
    from p2pfed.node.files import CHECKPOINT

    state = config.path(config.node.state_dir)
    return collect(state / CHECKPOINT, state / AUDIT_FILE)


def run_recover(args: argparse.Namespace) -> int:
    """Rebuild the ledger; print what was kept, added and padded, and ε before and after."""
    from p2pfed.config import load_config
    from p2pfed.daemon import AUDIT_FILE
    from p2pfed.errors import ConfigError
    from p2pfed.governance.ledger_recovery import recover
    from p2pfed.node.files import CHECKPOINT
    from p2pfed.privacy.mechanisms import NoiseMode

    config = load_config(args.config)
    p = config.privacy
    if p.mode == "off":
        raise ConfigError(f"{args.config}: [privacy] mode is off, there is no ledger to recover")
    state = config.path(config.node.state_dir)
    done = recover(
        config.path(p.ledger),
        state / AUDIT_FILE,
        state / CHECKPOINT,
        delta=p.delta,
        accountant=p.accountant,
        mode=NoiseMode(p.mode),
    )
    doc = {
        "ledger": str(config.path(p.ledger)),
        "releases": done.releases,
        "epsilon": done.epsilon,
        "highest_recorded_epsilon": done.floor,
        "kept_from_old_ledger": done.salvaged,
        "added_from_audit_log": done.from_audit,
        "padded": done.padded,
        "old_ledger_kept_at": str(done.kept_aside) if done.kept_aside else None,
    }
    if args.json:
        print_json(doc)
        return 0
    print(
        f"rebuilt {doc['ledger']}: {done.releases} release(s), ε {done.epsilon:.4f} "
        f"(highest recorded {done.floor:.4f}); {done.salvaged} kept, {done.from_audit} from the "
        f"audit log, {done.padded} padded"
        + (f"; the old file is at {done.kept_aside}" if done.kept_aside else "")
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Print what the ledger has spent, per accountant."""
    from p2pfed.privacy import ACCOUNTANT_KINDS, make_accountant, releases_within_budget

    ledger, sigma, q, t, collusion = _settings(args)
    m = args.min_contributors
    per: dict[str, Any] = {}
    for kind in ACCOUNTANT_KINDS:
        acc = make_accountant(kind)
        for rec in ledger.records:
            r = rec.release
            acc.step(noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate, steps=r.steps)
        spent = acc.get_epsilon(ledger.delta)
        left = None
        if sigma is not None:
            left = releases_within_budget(acc, ledger.budget_epsilon, ledger.delta, sigma, q, t)
        per[kind] = {
            "epsilon_spent": spent,
            "budget_left": max(0.0, ledger.budget_epsilon - spent),
            "rounds_left": left,
            "epsilon_against_outsiders": (
                _outsider_epsilon(kind, ledger, m, collusion) if m and collusion else None
            ),
        }
    doc = {
        "ledger": str(ledger.path),
        "releases": len(ledger.records),
        "last_round": ledger.records[-1].release.round if ledger.records else None,
        "budget_epsilon": ledger.budget_epsilon,
        "delta": ledger.delta,
        "governing_accountant": ledger.accountant_kind,
        "settings": {"noise_multiplier": sigma, "sample_rate": q, "steps_per_round": t},
        "torn_tail_bytes": len(ledger.torn_tail) if ledger.torn_tail else 0,
        "epsilon_holds_against": (
            f"{collusion} colluding member(s)" if collusion else "anyone who sees a release"
        ),
        "accountants": per,
    }
    if args.json:
        print_json(doc)
        return 0
    print(f"ledger {doc['ledger']}: {doc['releases']} release(s), last round {doc['last_round']}")
    print(f"budget ε = {ledger.budget_epsilon:g} at δ = {ledger.delta:g}")
    print(f"ε spent holds against {doc['epsilon_holds_against']}")
    where = f"σ={sigma:g}, q={q:g}, {t} step(s)/round" if sigma else "no settings known"
    for name, v in per.items():
        mark = " (governs)" if name == ledger.accountant_kind else ""
        rounds = "?" if v["rounds_left"] is None else v["rounds_left"]
        print(
            f"  {name}{mark}: ε spent {v['epsilon_spent']:.4f}, left {v['budget_left']:.4f}, "
            f"rounds left {rounds} ({where})"
        )
        if v["epsilon_against_outsiders"] is not None:
            outside = v["epsilon_against_outsiders"]
            print(f"    against outsiders (all {m} noise shares): ε {outside:.4f}")
    if doc["torn_tail_bytes"]:
        print(f"note: a torn final record ({doc['torn_tail_bytes']} bytes) is not counted")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """Print the noise multiplier needed with each accountant and the ε it gives."""
    from p2pfed.privacy import ACCOUNTANT_KINDS, epsilon_for, noise_multiplier_for, validate

    eps = validate.epsilon(args.epsilon)
    delta = validate.delta(args.delta)
    rounds = validate.count("rounds", args.rounds)
    q = validate.sample_rate(args.sample_rate)
    t = validate.count("steps per round", args.steps_per_round)
    steps = rounds * t
    sigma: dict[str, float] = {}
    for kind in ACCOUNTANT_KINDS:
        if not args.json:
            print(f"searching σ with the {kind} accountant…", file=sys.stderr, flush=True)
        sigma[kind] = noise_multiplier_for(eps, delta, q, steps, kind)
    best = min(sigma, key=lambda k: sigma[k])
    after = {kind: epsilon_for(sigma[best], delta, q, steps, kind) for kind in ACCOUNTANT_KINDS}
    doc: dict[str, Any] = {
        "target": {"epsilon": eps, "delta": delta},
        "rounds": rounds,
        "sample_rate": q,
        "steps_per_round": t,
        "total_steps": steps,
        "noise_multiplier": sigma,
        "recommended": {"accountant": best, "noise_multiplier": sigma[best]},
        "epsilon_after_rounds": after,
    }
    if args.peers is not None:
        # A node governs distributed releases with RDP (the zCDP bound): plan σ with it.
        doc["distributed"] = _distributed_plan(args, sigma["rdp"], "rdp", delta, steps)
    if args.json:
        print_json(doc)
        return 0
    print(f"target ε = {eps:g}, δ = {delta:g}; {rounds} rounds × {t} step(s) at q = {q:g}")
    for kind in ACCOUNTANT_KINDS:
        print(f"  noise multiplier needed ({kind}): σ = {sigma[kind]:.4f}")
    print(f"with σ = {sigma[best]:.4f} ({best}), ε after {rounds} rounds:")
    for kind in ACCOUNTANT_KINDS:
        print(f"  {kind}: ε = {after[kind]:.4f}")
    if "distributed" in doc:
        dd = doc["distributed"]
        print(
            f"distributed discrete Gaussian at σ = {dd['noise_multiplier']:.4f} (rdp governs): "
            f"{dd['ring_bits']}-bit ring, γ = {dd['gamma']:.3g}, per-member variance "
            f"{dd['local_variance']} (integer units)"
        )
        print(
            f"  ε against {dd['collusion']} colluding member(s): "
            f"{dd['epsilon_against_insiders']:.4f}; against outsiders: "
            f"{dd['epsilon_against_outsiders']:.4f}"
        )
    return 0


def _distributed_plan(
    args: argparse.Namespace, sigma: float, kind: str, delta: float, steps: int
) -> dict[str, Any]:
    """The discrete Gaussian plan at σ, and ε against c insiders and against outsiders."""
    from p2pfed.errors import ConfigError
    from p2pfed.privacy import epsilon_for
    from p2pfed.privacy.ddg import noise_multiplier_of, plan_ddg
    from p2pfed.secagg.params import guaranteed_contributors

    if args.dimension is None:
        raise ConfigError("--peers needs --dimension (the number of model parameters)")
    n = args.peers
    m = args.min_contributors or guaranteed_contributors(n, args.collusion)
    plan = plan_ddg(
        n_peers=n,
        min_contributors=m,
        collusion=args.collusion,
        dimension=args.dimension,
        clip_norm=args.clip_norm,
        noise_multiplier=sigma,
    )
    z_in = plan.release_noise_multiplier()
    z_out = noise_multiplier_of(plan.rho(against_insiders=False))
    return {
        "accountant": kind,
        "noise_multiplier": sigma,
        "peers": n,
        "min_contributors": m,
        "collusion": args.collusion,
        "ring_bits": plan.ring_bits,
        "gamma": plan.gamma,
        "local_variance": int(plan.local_variance),
        "epsilon_against_insiders": epsilon_for(z_in, delta, 1.0, steps, kind),
        "epsilon_against_outsiders": epsilon_for(z_out, delta, 1.0, steps, kind),
    }
