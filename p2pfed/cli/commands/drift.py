"""``p2pfed drift check``: compare a data set with the one a node joined with."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from p2pfed.output import print_json

if TYPE_CHECKING:
    from p2pfed.training.data import Dataset

NAME = "drift"
HELP = "Check input drift (PSI per feature, label shift) between two data sets."


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``check``."""
    from p2pfed.cli import add_group

    sub = add_group(parser)
    chk = sub.add_parser(
        "check", help="PSI per feature and label shift of CURRENT against REFERENCE."
    )
    chk.add_argument("reference", help="the join-time data: a CSV file or a built-in data set")
    chk.add_argument("current", help="the data now: a CSV file or a built-in data set")
    chk.add_argument("--label-column", default="label", help="label column of CSV files")
    chk.add_argument("--bins", type=int, default=10, help="quantile bins (default 10)")
    chk.add_argument("--psi-warning", type=float, default=0.1)
    chk.add_argument("--psi-major", type=float, default=0.2)
    chk.add_argument(
        "--significance",
        type=float,
        default=0.01,
        help="noise floor probability; 0 for the plain cut-offs (default 0.01)",
    )
    chk.add_argument("--top", type=int, default=10, help="features to list (default 10)")
    chk.add_argument("--json", action="store_true", help="print JSON")
    chk.set_defaults(func=_check)


def _load(spec: str, label_column: str) -> Dataset:
    from p2pfed.training.data import BUILTIN_DATASETS, load_builtin, load_csv

    if spec in BUILTIN_DATASETS:
        return load_builtin(spec)
    return load_csv(spec, label_column)


def _check(args: argparse.Namespace) -> int:
    from p2pfed.errors import DataError
    from p2pfed.governance.drift import DriftConfig, DriftMonitor

    reference = _load(args.reference, args.label_column)
    current = _load(args.current, args.label_column)
    classes = int(max(reference.y.max(initial=0), current.y.max(initial=0))) + 1
    if classes < 2:
        raise DataError("drift check needs labels of at least two classes")
    config = DriftConfig(
        rules=(),
        psi_bins=args.bins,
        psi_warning=args.psi_warning,
        psi_major=args.psi_major,
        significance=args.significance or None,
    )
    monitor = DriftMonitor(config, classes)
    monitor.set_reference(reference)
    alerts = monitor.check_inputs(0, current)
    report = monitor.last_inputs
    if report is None:
        raise DataError(
            f"{current.name}: {len(current)} rows are fewer than the {config.min_samples} "
            "needed for a drift check"
        )
    if args.json:
        print_json({**report.to_dict(), "alerts": [a.to_dict() for a in alerts]})
        return 1 if alerts else 0
    worst = sorted(report.feature_psi.items(), key=lambda kv: -kv[1])[: args.top]
    print(f"{len(reference)} reference rows, {len(current)} current rows")
    for name, value in worst:
        print(f"  PSI {value:8.4f}  {name}")
    print(f"  labels: PSI {report.label_psi:.4f}, total variation {report.label_tv:.4f}")
    for alert in alerts:
        print(f"{alert.severity.value.upper()}: {alert.message}")
    if not alerts:
        print("no drift beyond the thresholds")
    return 1 if alerts else 0
