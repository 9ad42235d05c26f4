"""``p2pfed study``: studies on real multi-site data, run end to end (``p2pfed study lung``)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.output import print_json

NAME = "study"
HELP = "Run a study on naturally federated patients (lung: federated Cox on NCCTG lung data)."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``lung`` sub-command."""
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    lung = sub.add_parser(
        "lung",
        help="federated Cox model over the NCCTG lung cohort's institutions",
        description="Federated Cox proportional hazards across the NCCTG lung-cancer "
        "institutions (lifelines' load_lung), one daemon per site on 127.0.0.1 with secure "
        "aggregation and distributed DP; compared with local-only and pooled models.",
    )
    lung.add_argument("--rounds", type=int, default=30, help="federated rounds (default 30)")
    lung.add_argument("--seed", type=int, default=0, help="train/test split and noise seed")
    lung.add_argument("--sim", action="store_true", help="run the rounds in one process")
    lung.add_argument("--json", action="store_true", help="print the figures as JSON")
    lung.add_argument("--dir", help="keep the sites' folders here (default: a temp dir)")
    lung.add_argument("--plot", help="write the Kaplan–Meier risk-group figure (PNG) here")
    lung.add_argument("--timeout", type=float, default=300.0, help="give up after this many s")
    lung.set_defaults(func=run_lung)


def _folder(arg: str | None) -> tuple[Path, bool]:
    if arg is None:
        return Path(tempfile.mkdtemp(prefix="p2pfed-lung-")), True
    folder = Path(arg).resolve()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"--dir {folder} must be an empty folder or not exist yet")
    return folder, False


def run_lung(args: argparse.Namespace) -> int:
    """Run the study, print its figures; 0 when the federation committed every round."""
    from p2pfed.studies.lung import LungSettings
    from p2pfed.studies.lung_net import run_study

    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    settings = LungSettings(rounds=args.rounds, seed=args.seed)
    folder, temporary = _folder(args.dir)
    try:
        figures, sites, federated = run_study(
            settings, sim=args.sim, folder=folder, timeout=args.timeout
        )
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    if args.plot:
        import numpy as np

        from p2pfed.studies.lung_plot import plot_risk_groups

        pooled = np.array(figures["coefficients"]["pooled"])
        models = {"federated": federated, "pooled": pooled}
        plot_risk_groups(sites, models, Path(args.plot), "NCCTG lung: held-out patients")
    if args.json:
        print_json(figures)
    else:
        _print(figures)
    return 0


def _print(f: dict[str, Any]) -> None:
    print(f"lung study ({f['mode']}): {f['rounds_committed']} rounds, ε = {f['epsilon']:.3g}")
    for r, why in f["rounds_missed"].items():
        print(f"  round {r} committed by no site (model unchanged): {'; '.join(why)}")
    print(
        f"C-index on {f['test_patients']} held-out patients: federated "
        f"{f['federated_c_index']:.3f}, pooled {f['pooled_c_index']:.3f}, median local-only "
        f"{f['median_local_c_index']:.3f}"
    )
    for name, s in f["sites"].items():
        print(
            f"  {name} (institutions {s['institutions']}, {s['train_patients']} train): "
            f"local {f['local_c_index'][name]:.3f} overall; on own held-out: local "
            f"{s['local_c_index']:.3f}, federated {s['federated_c_index']:.3f}, pooled "
            f"{s['pooled_c_index']:.3f}"
        )
    print("hazard ratios per unit (federated vs lifelines pooled):")
    for name, hr in f["hazard_ratios"].items():
        print(f"  {name:10s} {hr['federated']:.3f}  {hr['pooled_lifelines']:.3f}")
