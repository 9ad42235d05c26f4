"""The consortium relay's process: a roster-gated circuit relay that follows roster updates.

Theory of operation: ``check_relay`` loads the key and the roster (accepted against the
relay's own state file, so it never moves backwards) and refuses, in one sentence, a relay
the roster does not list with role ``relay``. ``serve`` runs a ``RelayedTransport`` with the
roster gate and ``transport.relay.serve_relay`` on it, re-reads the roster file every
``RELOAD_EVERY`` seconds, applies a newer valid version and closes connections of peers it
removed. The relay holds no data and takes no part in rounds. It knows the members' roster
addresses, so it can dial a member back (``transport.dialback``): being outside every
hospital's network, it is the helper whose answer says most about a port forward.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from p2pfed.daemon.prepare import parse_listen
from p2pfed.errors import ConfigError
from p2pfed.identity import Identity, Role, Roster, RosterGate

if TYPE_CHECKING:
    from p2pfed.transport.libp2p_relayed import RelayedTransport

RELOAD_EVERY = 5.0
log = logging.getLogger(__name__)


def check_relay(key: str, roster: str, state: str) -> tuple[Identity, RosterGate]:
    """The relay's identity and roster gate; ``ConfigError`` if the roster does not list it."""
    identity = Identity.load(key)
    Path(state).mkdir(parents=True, exist_ok=True)
    gate = RosterGate.open(
        roster, state=Path(state) / "roster-state.json", clock=lambda: datetime.now(UTC)
    )
    entry = gate.roster.member(identity.peer_id)
    if entry is None or entry.role is not Role.RELAY:
        raise ConfigError(
            f"this relay ({identity.peer_id}) is not listed with role relay in roster version "
            f"{gate.roster.version}; ask the admins: p2pfed roster add --role relay"
        )
    return identity, gate


async def serve(identity: Identity, gate: RosterGate, listen: str, roster_path: Path) -> None:
    """Relay for the roster's members until cancelled."""
    from p2pfed.transport.libp2p_relayed import RelayedTransport
    from p2pfed.transport.relay import serve_relay

    host, port = parse_listen(listen)
    transport = RelayedTransport(identity.seed, gate, host=host, port=port)
    _learn_addresses(transport, gate.roster)
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
                _learn_addresses(transport, gate.roster)
            except ConfigError as exc:  # a refused roster leaves the one in force
                log.warning("new roster refused, keeping version %d: %s", gate.roster.version, exc)
                continue
            dropped = await transport.drop_refused_peers()
            log.info("roster version %d in force; dropped %s", gate.roster.version, dropped)


def _learn_addresses(transport: RelayedTransport, roster: Roster) -> None:
    """Record every other member's roster addresses (the ones a dial-back may dial)."""
    for member in roster.members:
        if member.peer_id != transport.local_peer:
            transport.set_peer_addrs(member.peer_id, member.addresses)
