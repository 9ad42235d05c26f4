"""Admission right after the security handshake: the roster gate inside py-libp2p's Noise.

Theory of operation: py-libp2p has no peer-ID connection gater (its allow/deny lists are
IP/CIDR). ``GatedNoise`` subclasses its Noise transport through the public
``secure_inbound``/``secure_outbound`` hooks and asks the ``PeerGate`` about the authenticated
remote peer at the end of both, before any muxer or stream exists; a refused peer's connection
is closed there. The peer ID checked is the one the Noise XX handshake bound to the identity
key. ``Admission`` holds the check so ``libp2p_tls.GatedTLS`` runs the same one after the TLS
handshake. ``gate_allows`` fails closed: a gate that raises refuses. An admitted session is handed
on as ``libp2p_noise.buffered`` makes it (fewer socket calls, same wire format).
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.crypto.keys import KeyPair, PrivateKey
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2pfed.transport.base import PeerGate
from p2pfed.transport.libp2p_noise import buffered

log = logging.getLogger(__name__)


def gate_allows(gate: PeerGate, peer: str) -> bool:
    """Whether ``gate`` admits ``peer``; a gate that raises refuses (fails closed)."""
    try:
        return bool(gate(peer))
    except Exception:
        log.exception("peer gate raised for %s; refusing the peer", peer)
        return False


class Admission:
    """The roster check every security transport of a host runs right after its handshake.

    ``authenticated`` remembers the peers whose *outbound* handshake completed and passed our
    gate: if such a dial still fails, the remote dropped us after learning who we are, i.e. it
    refused us. ``refused_inbound`` counts inbound peers refused here.
    """

    def __init__(self, gate: PeerGate) -> None:
        self.gate = gate
        self.authenticated: set[str] = set()
        self.refused_inbound = 0

    async def admit(self, secured: ISecureConn, direction: str) -> None:
        """Return if the gate admits the authenticated peer; else close and raise."""
        peer = str(secured.get_remote_peer())
        if gate_allows(self.gate, peer):
            if direction == "outbound":
                self.authenticated.add(peer)
            return
        if direction == "inbound":
            self.refused_inbound += 1
        log.warning(
            "refused %s connection from peer %s: not admitted by the roster", direction, peer
        )
        with trio.CancelScope(shield=True):
            try:
                await secured.close()
            except Exception as exc:  # the socket may already be gone; refusing is what matters
                log.debug("closing refused connection to %s failed: %s", peer, exc)
        raise HandshakeFailure(f"peer {peer} is not admitted by the roster")


class GatedNoise(NoiseTransport):
    """Noise (XX) that refuses any authenticated peer ``admission`` does not admit.

    The check sits right after the handshake, so a refused peer never reaches muxer
    negotiation.
    """

    def __init__(self, key_pair: KeyPair, noise_key: PrivateKey, admission: Admission) -> None:
        super().__init__(key_pair, noise_privkey=noise_key)
        self.admission = admission

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        secured = await super().secure_inbound(conn)
        await self.admission.admit(secured, "inbound")
        return buffered(secured)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        secured = await super().secure_outbound(conn, peer_id)
        await self.admission.admit(secured, "outbound")
        return buffered(secured)
