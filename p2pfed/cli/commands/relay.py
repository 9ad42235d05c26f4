"""``p2pfed relay``: run a consortium relay for members behind NAT (circuit relay v2).

The relay is a roster entry with role ``relay`` and a public address. It admits only the
members of the current roster (Noise handshake, then again on every hop stream), carries
circuits between them, and sees only Noise ciphertext: each circuit's secure channel is
between the two members. It re-reads the roster file every few seconds and drops peers a
newer roster removed. It holds no data and takes no part in rounds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

NAME = "relay"
HELP = "Run a roster-gated relay for members behind NAT (sees only encrypted traffic)."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``p2pfed relay``."""
    parser.add_argument("--key", required=True, help="the relay's key file (p2pfed keygen)")
    parser.add_argument("--roster", required=True, help="the consortium's signed roster.json")
    parser.add_argument(
        "--state", default="relay-state", help="folder for the accepted-roster state file"
    )
    parser.add_argument(
        "--listen", default="/ip4/0.0.0.0/tcp/4001", help="multiaddr to listen on (public)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; a refused setup ends with one sentence (exit status 2)."""
    import trio

    from p2pfed.daemon.relay import check_relay, serve

    identity, gate = check_relay(args.key, args.roster, args.state)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        trio.run(serve, identity, gate, args.listen, Path(args.roster))
    except KeyboardInterrupt:
        print("relay stopped", file=sys.stderr)
    return 0
