"""``p2pfed protocol init | sign | show``: the consortium's signed study protocol.

Theory of operation: ``init`` writes an unsigned study protocol: the model, training,
rounds and privacy settings of a config file (``--config``; else the defaults ``p2pfed
init`` writes), the label column and classes, and the features from a data file's header
(``--from-data``), from ``--feature NAME[:TYPE]`` flags, or from the config's ``[schema]``.
Centres and scales start at 0 and 1 (or the config's ``[schema]`` ones), or at one table's
means and standard deviations (``--normalise-from``): the admins agree on them and edit the
file before anyone signs. ``sign`` appends one admin's signature;
``show`` prints the document, its hash and, with ``--roster``, whether the roster's admins
signed it (exit status 2 with the one sentence saying why not).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from p2pfed.errors import ConfigError
from p2pfed.settings import comma_list

if TYPE_CHECKING:
    from p2pfed.config import Config
    from p2pfed.identity import Feature, StudyProtocol

NAME = "protocol"
HELP = "Write, sign and show the consortium's study protocol."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the protocol sub-commands."""
    from p2pfed.cli import add_group

    sub = add_group(parser)
    init = sub.add_parser("init", help="write an unsigned study protocol")
    init.add_argument("protocol", metavar="PROTOCOL", help="study protocol file to create")
    init.add_argument("--consortium", required=True, help="consortium id, as in the roster")
    init.add_argument("--config", help="take model, training, rounds and privacy from this file")
    source = init.add_mutually_exclusive_group()
    source.add_argument("--from-data", help="take the feature names from this CSV's header")
    source.add_argument(
        "--feature",
        action="append",
        default=[],
        help="a feature as NAME or NAME:TYPE (float, int, binary); repeat in order",
    )
    init.add_argument(
        "--normalise-from",
        metavar="TABLE",
        help="set each feature's center and scale to this CSV's (or Parquet's) mean and "
        "standard deviation: one site's table or a pooled one (this reveals those figures)",
    )
    init.add_argument("--label", help="the label column (default: the config's)")
    init.add_argument(
        "--classes",
        type=comma_list(int, "an integer class label"),
        help="the label classes, e.g. 0,1 (default: the config's)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(func=run_init)

    sign = sub.add_parser("sign", help="append your admin signature")
    sign.add_argument("protocol", metavar="PROTOCOL")
    sign.add_argument("--key", required=True, help="your admin key file")
    sign.add_argument("--roster", help="refuse to sign unless the key is an admin of this roster")
    sign.set_defaults(func=run_sign)

    show = sub.add_parser("show", help="print the protocol, its hash and signature status")
    show.add_argument("protocol", metavar="PROTOCOL")
    show.add_argument("--roster", help="check the signatures against this roster's admins")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run_show)


def _config(path: str | None) -> Config:
    from p2pfed.config import Config, NodeSection, load_config

    return load_config(path) if path else Config(node=NodeSection("protocol"))


def _features(args: argparse.Namespace, config: Config, label: str) -> tuple[Feature, ...]:
    from p2pfed.identity import Feature
    from p2pfed.training.data import table_columns

    s = config.schema
    if args.from_data:
        columns = table_columns(args.from_data)
        if label not in columns:
            raise ConfigError(f"{args.from_data} has no label column {label!r} (set --label)")
        return tuple(Feature(n) for n in columns if n != label)
    if args.feature:
        parts = [text.split(":", 1) for text in args.feature]
        return tuple(Feature(p[0], p[1] if len(p) > 1 else "float") for p in parts)
    if not s.features:
        raise ConfigError("name the features with --from-data, --feature or the config's [schema]")
    types = s.types or ("float",) * len(s.features)
    center = s.center or (0.0,) * len(s.features)
    scale = s.scale or (1.0,) * len(s.features)
    return tuple(map(Feature, s.features, types, center, scale))


def _normalised(features: tuple[Feature, ...], path: str, label: str) -> tuple[Feature, ...]:
    """``features`` with centre and scale set to ``path``'s mean and std (missing cells skipped)."""
    import dataclasses

    import numpy as np

    from p2pfed.training.data import load_table

    x = load_table(path, label, [f.name for f in features]).x.astype(np.float64)
    out = []
    for i, feature in enumerate(features):
        column = x[np.isfinite(x[:, i]), i]
        if column.size < 2:
            raise ConfigError(
                f"{path}: feature {feature.name!r} has fewer than 2 values to normalise from"
            )
        std = float(column.std())
        # A constant column keeps scale 1: centring alone makes it 0 everywhere.
        scale = std if std > 0 else 1.0
        out.append(dataclasses.replace(feature, center=float(column.mean()), scale=scale))
    return tuple(out)


def _classes(given: list[int] | None, config: Config) -> tuple[int, ...]:
    return config.schema.labels if given is None else tuple(given)


def run_init(args: argparse.Namespace) -> int:
    """Write the unsigned protocol."""
    from p2pfed.daemon.study import model_reference
    from p2pfed.identity import StudyProtocol

    config = _config(args.config)
    label = args.label or config.data.label_column
    t, p = config.training, config.privacy
    features = _features(args, config, label)
    if args.normalise_from:
        features = _normalised(features, args.normalise_from, label)
    document = StudyProtocol(
        args.consortium,
        features,
        label,
        _classes(args.classes, config),
        model=model_reference(config),
        hidden=config.model.hidden,
        seed=config.model.seed,
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        optimizer=t.optimizer,
        rounds=config.rounds.rounds,
        privacy_mode=p.mode,
        epsilon=p.epsilon_budget,
        delta=p.delta,
    )
    document.save(args.protocol, overwrite=args.force)
    todo = (
        f"centers and scales from {args.normalise_from}; check them"
        if args.normalise_from
        else "set each feature's center and scale"
    )
    print(
        f"{args.protocol}: study protocol {document.short} of {document.consortium_id} with "
        f"{len(document.features)} features, unsigned ({todo}, then have the admins sign it)"
    )
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """Append a signature."""
    from p2pfed.identity import Identity, Roster, StudyProtocol

    document = StudyProtocol.load(args.protocol)
    identity = Identity.load(args.key)
    if args.roster:
        admins = Roster.load(args.roster).admins
        if identity.public_key not in admins:
            raise ConfigError(f"key {args.key} is not an admin of roster {args.roster}")
    document = document.signed_by(identity)
    document.save(args.protocol)
    print(f"{args.protocol}: signed {document.short}; {len(document.signatures)} signature(s)")
    return 0


def _status(document: StudyProtocol, roster_path: str | None) -> tuple[bool | None, str]:
    from p2pfed.identity import Roster, RosterError, check_protocol

    if roster_path is None:
        return None, f"{len(document.signatures)} signature(s), not checked (give --roster)"
    roster = Roster.load(roster_path)
    valid = len(document.valid_signers(roster.admins))
    try:
        check_protocol(document, roster)
    except RosterError as exc:
        return False, str(exc)
    return True, f"signed by {valid} of {len(roster.admins)} admins (threshold {roster.threshold})"


def run_show(args: argparse.Namespace) -> int:
    """Print the protocol and whether it is signed."""
    from p2pfed.identity import StudyProtocol
    from p2pfed.output import print_json

    document = StudyProtocol.load(args.protocol)
    valid, detail = _status(document, args.roster)
    if args.json:
        summary: dict[str, Any] = {
            "hash": document.digest(),
            "valid": valid,
            "status": detail,
            "signers": [s.public_key.hex() for s in document.signatures],
            "protocol": document.body(),
        }
        print_json(summary)
    else:
        b = document.body()
        print(f"study protocol of {document.consortium_id}")
        print(f"  hash      sha256:{document.digest()}")
        print(f"  label     {document.label_column} classes {list(document.classes)}")
        for key in ("model", "training", "privacy"):
            print(f"  {key:<9} " + ", ".join(f"{k} {v}" for k, v in b[key].items()))
        print(f"  rounds    {document.rounds}")
        print(f"  features  {len(document.features)}")
        for f in document.features:
            print(f"    {f.name:<24} {f.kind:<7} center {f.center:g} scale {f.scale:g}")
        print(f"  signed    {detail}")
    if valid is False:
        print(f"p2pfed: error: {detail}", file=sys.stderr)
    return 2 if valid is False else 0
