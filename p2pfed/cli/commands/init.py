"""``p2pfed init DIR --name NAME``: create an institution's folder."""

from __future__ import annotations

import argparse

NAME = "init"
HELP = "Create an institution folder: identity key and audit salt (0600), config.toml, state."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments."""
    parser.add_argument("dir", metavar="DIR", help="folder to create (may exist, if empty)")
    parser.add_argument("--name", required=True, help="this institution's name in the roster")
    parser.add_argument("--force", action="store_true", help="replace an existing config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the key, the config and the state folder; print the peer ID and next steps."""
    from pathlib import Path

    from p2pfed.config import render_default
    from p2pfed.durable import atomic_write
    from p2pfed.errors import ConfigError
    from p2pfed.governance.audit import SALT_FILE, create_salt_file
    from p2pfed.identity import Identity

    folder = Path(args.dir)
    config = folder / "config.toml"
    key = folder / "identity.key"
    if config.exists() and not args.force:
        raise ConfigError(f"{config} already exists; pass --force to replace it")
    if not args.name.strip() or '"' in args.name:
        raise ConfigError(f"--name {args.name!r} must be non-empty and contain no quotes")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir(exist_ok=True, mode=0o700)
    identity = Identity.load(key) if key.exists() else Identity.generate()
    if not key.exists():
        identity.save(key)
    salt = folder / SALT_FILE
    if not salt.exists():  # secret, per node: never in the config operators share
        create_salt_file(salt)
    atomic_write(config, render_default(args.name).encode(), 0o644)
    print(f"created {folder}/ for {args.name}")
    print(f"  identity  {key} (peer ID {identity.peer_id})")
    print(f"  salt      {salt} (secret, 0600: hashes peer IDs in the audit log)")
    print(f"  config    {config}")
    print("next: send your peer ID and address to the consortium admins, e.g.")
    print(
        f"  p2pfed roster add roster.json --name {args.name.replace(' ', '-')} "
        f"--peer-id {identity.peer_id} --address /ip4/<your address>/tcp/4001"
    )
    print(f"then put the signed roster at {folder}/roster.json and run:")
    print(f"  p2pfed run --config {config}")
    return 0
