"""``p2pfed keygen PATH``: create this peer's Ed25519 key and print its peer ID.

The key file holds the 32-byte seed with mode 0600; an existing key is never replaced
unless ``--force`` is given (replacing it changes the peer's identity, so the roster must
be updated too).
"""

from __future__ import annotations

import argparse
import sys

NAME = "keygen"
HELP = "Create an Ed25519 key file (mode 0600) and print its libp2p peer ID."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``p2pfed keygen``."""
    parser.add_argument("path", metavar="PATH", help="where to write the key file")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing key file (a new identity)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the key; print the peer ID on stdout and what was done on stderr."""
    from p2pfed.identity import Identity

    identity = Identity.generate()
    identity.save(args.path, overwrite=args.force)
    print(identity.peer_id)
    print(
        f"wrote a new Ed25519 key to {args.path} (mode 0600); keep a backup in a safe place "
        f"and give the peer ID above to your consortium's admins",
        file=sys.stderr,
    )
    return 0
