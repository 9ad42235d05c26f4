"""``p2pfed model list | show | export | check``: the node's model versions and lineage."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from p2pfed.output import print_json

if TYPE_CHECKING:
    from p2pfed.governance.models import ModelCard

NAME = "model"
HELP = "List, inspect and export the aggregated model of each round, with its lineage."


def register(parser: argparse.ArgumentParser) -> None:
    """Add ``list``, ``show``, ``export`` and ``check``."""
    from p2pfed.cli import add_group

    sub = add_group(parser)

    def registry_arg(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--config", help="the node's config.toml: its state folder's models")
        where.add_argument("--registry", help="model registry folder (default: ./models)")
        p.add_argument("--json", action="store_true", help="print JSON")

    lst = sub.add_parser("list", help="One line per stored model version.")
    registry_arg(lst)
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", help="A version's manifest and its chain of parents.")
    show.add_argument("version", help="'latest', a round number, or a model-hash prefix")
    registry_arg(show)
    show.set_defaults(func=_show)

    exp = sub.add_parser(
        "export",
        help="Write a version's weights and a manifest with its architecture, feature order, "
        "normalisation, rounds, ε/δ and lineage (with --config), for `load_model`.",
    )
    exp.add_argument("version", help="'latest', a round number, or a model-hash prefix")
    exp.add_argument("--out", required=True, help="file to write (its manifest goes next to it)")
    # safetensors is offered only where the optional package is installed.
    exp.add_argument("--format", choices=_formats(), default="torch")
    registry_arg(exp)
    exp.set_defaults(func=_export)

    chk = sub.add_parser("check", help="Check an exported file against its manifest's hash.")
    chk.add_argument("file", help="the exported model file")
    chk.add_argument("--manifest", help="its manifest (default: FILE.manifest.json)")
    chk.add_argument(
        "--roster", help="roster file: verify the commit certificate (FILE.certificate.json)"
    )
    chk.set_defaults(func=_check)


def _formats() -> list[str]:
    import importlib.util

    return ["torch"] + (["safetensors"] if importlib.util.find_spec("safetensors") else [])


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _registry_folder(args: argparse.Namespace) -> str:
    """``--registry``, else the models folder in ``--config``'s state folder, else ./models."""
    if args.config is None:
        return str(args.registry or "models")
    from p2pfed.governance.models import MODELS_DIR
    from p2pfed.governance.status_file import node_state

    return str(node_state(args.config)[1] / MODELS_DIR)


def _list(args: argparse.Namespace) -> int:
    from p2pfed.governance.models import ModelRegistry

    args.registry = _registry_folder(args)
    versions = ModelRegistry.open_existing(args.registry).versions()
    if args.json:
        print_json([m.to_dict() for m in versions])
        return 0
    if not versions:
        print(f"no models in {args.registry}")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models in {args.registry}")
    for col in ("round", "version", "parent", "peers", "ε", "metrics", "created"):
        table.add_column(col)
    for m in versions:
        eps = m.dp.get("epsilon")
        table.add_row(
            str(m.round),
            m.version,
            m.parent_hash[:16] if m.parent_hash else "-",
            str(len(m.participants)),
            "-" if eps is None else str(eps),
            ", ".join(f"{k}={v:.4g}" for k, v in m.metrics.items()),
            _when(m.created),
        )
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from p2pfed.governance.models import ModelManifest, ModelRegistry

    registry = ModelRegistry.open_existing(_registry_folder(args))
    manifest = registry.resolve(args.version)
    chain = registry.lineage(manifest.model_hash)
    hashes = [c.model_hash if isinstance(c, ModelManifest) else c for c in chain]
    if args.json:
        print_json({"manifest": manifest.to_dict(), "lineage": hashes})
        return 0
    doc: dict[str, Any] = manifest.to_dict()
    print(f"model {manifest.model_hash}")
    print(f"  round        {manifest.round}")
    print(f"  created      {_when(manifest.created)}")
    print(f"  parameters   {manifest.parameters} in {len(manifest.tensors)} tensors")
    print(f"  participants {len(manifest.participants)} (salted hashes)")
    print(f"  dp           {doc['dp']}")
    print(f"  metrics      {doc['metrics']}")
    print("lineage (newest first):")
    for item in chain:
        if isinstance(item, ModelManifest):
            print(f"  round {item.round:>6}  {item.model_hash}")
        else:
            print(f"  (not in this registry) {item}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from p2pfed.governance.models import ModelRegistry

    registry = ModelRegistry.open_existing(_registry_folder(args))
    card = None if args.config is None else _card(args.config)
    out, manifest = registry.export(args.version, args.out, args.format, card)
    print(f"wrote {out} ({args.format}) and {manifest}")
    if card is None:
        print("no --config: the manifest has no architecture or preprocessing for load_model")
    return 0


def _card(config_path: str) -> ModelCard:
    """The node's architecture, feature order and normalisation, as the daemon derives them."""
    import numpy as np

    from p2pfed.config import load_config
    from p2pfed.daemon.prepare import load_data, normalisation
    from p2pfed.daemon.study import model_reference
    from p2pfed.governance.models import ModelCard
    from p2pfed.training.data import train_test_split

    config = load_config(config_path)
    data = load_data(config)
    # The daemon's own split (seeded by [model] seed): local statistics are of these rows.
    train, _ = train_test_split(
        data, config.data.test_fraction, np.random.default_rng(config.model.seed)
    )
    center, scale = normalisation(train, config.schema.center, config.schema.scale)
    labels = config.schema.labels
    return ModelCard(
        kind=model_reference(config),  # a factory call or a TorchScript digest, or the kind
        hidden=config.model.hidden,
        seed=config.model.seed,
        n_classes=max(len(labels), int(train.y.max()) + 1),  # as daemon.build.class_count
        features=data.feature_names,
        labels=labels,
        center=tuple(float(c) for c in center),
        scale=tuple(float(v) for v in scale),
        normalisation="agreed" if config.schema.center else "local",
        configured_rounds=config.rounds.rounds,
        privacy_mode=config.privacy.mode,
    )


def _check(args: argparse.Namespace) -> int:
    from p2pfed.governance.certified import certificate_path_for, check_certificate
    from p2pfed.governance.models import flat_from_tensors, import_model

    manifest, tensors = import_model(args.file, args.manifest)
    print(f"OK: {args.file} matches its manifest")
    print(f"model {manifest.model_hash}, round {manifest.round}")
    certificate = certificate_path_for(args.file)
    if not certificate.exists():
        print("no commit certificate next to it: nothing proves the consortium agreed on it")
        return 1 if args.roster else 0
    if not args.roster:
        print(f"commit certificate {certificate} not verified: pass --roster")
        return 0
    # IntegrityError (one sentence) if it is forged, short of the quorum or for other weights.
    line = check_certificate(certificate, args.roster, flat_from_tensors(tensors), manifest.round)
    print(f"OK: {line}")
    return 0
