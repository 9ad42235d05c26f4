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
RELOAD_EVERY = 5.0

log = logging.getLogger(__name__)


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
    from datetime import UTC, datetime

    import trio

    from p2pfed.daemon.prepare import parse_listen
    from p2pfed.errors import ConfigError
    from p2pfed.identity import Identity, Role, RosterGate

    identity = Identity.load(args.key)
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    gate = RosterGate.open(
        args.roster, state=state / "roster-state.json", clock=lambda: datetime.now(UTC)
    )
    entry = gate.roster.member(identity.peer_id)
    if entry is None or entry.role is not Role.RELAY:
        raise ConfigError(
            f"this relay ({identity.peer_id}) is not listed with role relay in roster version "
            f"{gate.roster.version}; ask the admins: p2pfed roster add --role relay"
        )
    host, port = parse_listen(args.listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        trio.run(_serve, identity.seed, gate, host, port, Path(args.roster))
    except KeyboardInterrupt:
        print("relay stopped", file=sys.stderr)
    return 0


async def _serve(seed: bytes, gate: object, host: str, port: int, roster_path: Path) -> None:
    import trio

    from p2pfed.identity import Roster, RosterGate
    from p2pfed.transport.libp2p_relayed import RelayedTransport
    from p2pfed.transport.relay import serve_relay

    assert isinstance(gate, RosterGate)
    transport = RelayedTransport(seed, gate, host=host, port=port)
    async with transport, serve_relay(transport, gate):
        addrs = ", ".join(transport.listen_addrs)
        print(f"relay {transport.local_peer} listening on {addrs}", flush=True)
        seen = roster_path.read_bytes()
        while True:
            await trio.sleep(RELOAD_EVERY)
            text = roster_path.read_bytes()
            if text == seen:
                continue
            seen = text
            try:
                gate.update(Roster.from_json(text, source=str(roster_path)))
            except Exception as exc:  # a refused roster leaves the one in force
                log.warning("new roster refused, keeping version %d: %s", gate.roster.version, exc)
                continue
            dropped = await transport.drop_refused_peers()
            log.info("roster version %d in force; dropped %s", gate.roster.version, dropped)
