"""Hole punching: two members behind NAT trade their relayed circuit for a direct connection.

Theory of operation: py-libp2p 0.8.1 ships DCUtR, libp2p's "direct connection upgrade through
relay" (``libp2p.relay.circuit_v2.dcutr``); ``HolePuncher`` runs it on every member that has
relays in its roster. Every 2 s it looks for peers reached only through a relay and, at most
three times per peer and connection, exchanges addresses with the peer over the circuit
(CONNECT, CONNECT, SYNC; 4 KiB per message); of two members, the one with the smaller peer ID
starts, the other answers. Each side advertises its NAT's public IP, as
the relay observed it through identify, with its own listen port: a NAT that keeps a
connection's source port (most home and many enterprise NATs; Linux masquerade) maps that
port to itself. Both then dial the other's address at once *from their listen port*
(py-libp2p listens with ``SO_REUSEPORT`` for this), so the two SYNs cross in the two NATs and
each NAT takes the other's SYN for the answer to its own (TCP simultaneous open). The
connection that results is upgraded like any other, by our ``GatedNoise`` (roster gate) and
``BoundedYamux``, with the roles DCUtR fixes: it is end to end authenticated and encrypted,
and a non-member cannot end up on it. New streams prefer it (py-libp2p's connection choice
puts direct before relayed) and DCUtR closes the circuit after a grace minute. Where the NATs
do not allow it (one that picks a fresh port per destination, or drops the crossing SYN),
the attempts fail and the circuit stays: ``failures`` says why per peer, for status.

``HolePuncher`` remembers which connection each punch produced, so ``links`` can report it as
"hole-punched" rather than merely "direct".
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

log = logging.getLogger(__name__)


class HolePuncher(DCUtRProtocol):
    """py-libp2p's DCUtR plus a record of what each punch gave (``punched``, ``failures``)."""

    def __init__(self, host: IHost, drive: bool = True) -> None:
        super().__init__(host)
        self.drive = drive
        """Whether to start punches towards relayed peers (off: only answer theirs; tests)."""
        self.punched: dict[str, Any] = {}
        """Peer → the direct connection its last successful hole punch produced."""
        self.failures: dict[str, str] = {}
        """Peer → why its last hole punch gave no direct connection (cleared on success)."""
        # py-libp2p's host tells the service it finds here when a peer disconnects.
        host._dcutr_protocol = self  # type: ignore[attr-defined]

    async def _auto_drive_loop(self) -> None:
        if self.drive:
            await super()._auto_drive_loop()
        else:
            await trio.sleep_forever()

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        # Of two members, the one with the smaller peer ID starts and the other answers: two
        # punches started from both ends at once dial the same address pairs twice over,
        # and in the namespace runs such a pair could miss each other for a whole attempt.
        if str(self.host.get_id()) > str(peer_id):
            return False
        return await super().initiate_hole_punch(peer_id)

    async def _perform_hole_punch(
        self, peer_id: ID, addrs: list[Any], as_responder: bool = False
    ) -> bool:
        peer = str(peer_id)
        tried = ", ".join(str(a) for a in addrs) or "none"
        ok = await super()._perform_hole_punch(peer_id, addrs, as_responder)
        conn = self._direct_conn(peer_id) if ok else None
        if conn is not None:
            self.punched[peer] = conn
            self.failures.pop(peer, None)
            log.info("hole punch to %s succeeded: the link is direct now", peer)
        else:
            why = f"no direct connection after dialling its addresses ({tried}) at once"
            if self.failures.get(peer) != why:
                log.info("hole punch to %s failed (%s); it stays relayed", peer, why)
            self.failures[peer] = why
        return ok

    def _decode_observed_addrs(self, addr_bytes: list[bytes]) -> list[Any]:
        # A peer's loopback or wildcard address is never a way to reach it: dialled from our
        # listen port, 127.0.0.1 at that port would even connect us to ourselves.
        return [a for a in super()._decode_observed_addrs(addr_bytes) if not _local_only(str(a))]

    def _direct_conn(self, peer_id: ID) -> Any:
        conns = self.host.get_network().connections.get(peer_id, [])
        for conn in conns if isinstance(conns, list) else [conns]:
            if not any("p2p-circuit" in str(a) for a in conn.get_transport_addresses()):
                return conn
        return None

    def is_punched(self, peer: str, conn: Any) -> bool:
        """Whether ``conn`` to ``peer`` is the connection a hole punch produced."""
        return self.punched.get(peer) is conn


def _local_only(addr: str) -> bool:
    """Whether multiaddr ``addr`` names a loopback or unspecified IP (nobody else's)."""
    parts = addr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return False
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified
