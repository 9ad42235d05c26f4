"""Circuit relay v2 for members behind NAT: a roster-gated relay, reservations, relayed dials.

Theory of operation: py-libp2p 0.8.1's circuit relay v2 (``libp2p.relay.circuit_v2``) works
with this transport unchanged in what matters: the relay pipes a hop stream of its own Yamux
connection with each side, and each side runs its own security and muxer upgrade over that
pipe (``upgrade_outbound_connection`` / ``upgrade_inbound_connection``), i.e. *our*
``GatedNoise`` and ``BoundedYamux``. Noise and the roster gate are therefore end to end; the
relay sees ciphertext only (tests/test_relay.py asserts it). The relay itself runs on a
``Libp2pTransport`` whose gate refuses non-members at its Noise handshake; ``GatedRelay``
asks the gate again on every hop stream (a member removed while connected) and refuses a
CONNECT towards a peer the gate does not admit; it also pumps each circuit itself, so that a
circuit that ends closes its own two streams and no other (py-libp2p's pump looks them up by
peer ID and, with two circuits through one member, closed the other circuit and left its own
half open: ``GatedRelay._relay_data``). A circuit whose upgrade does not finish (its
caller's deadline expired mid-way) is reset, so the other end is not left holding a connection
nobody reads (``RelayClient._dial_circuit``). A member with relays in its roster keeps a
connection and a reservation on each (``RelayClient.keep_reserved``, re-reserving when the
relay comes back) and, when a direct dial fails or no address is known, dials through them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2 import PROTOCOL_ID, CircuitV2Protocol, CircuitV2Transport
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from p2pfed.errors import BrokenError
from p2pfed.transport.base import PeerGate
from p2pfed.transport.libp2p_gate import gate_allows

log = logging.getLogger(__name__)


class RelayedTransport(Protocol):
    """What relaying needs of a running transport (``libp2p_relayed.RelayedTransport``)."""

    @property
    def host(self) -> IHost: ...

    def is_connected(self, peer: str) -> bool: ...

    async def connect(self, peer: str) -> None: ...

    async def open_raw_stream(self, peer: str, protocol: str) -> Any: ...


#: A consortium has few members; circuits last as long as training does.
LIMITS = RelayLimits(
    duration=7 * 24 * 3600, data=1 << 50, max_circuit_conns=256, max_reservations=256
)
RESERVE_EVERY = 2.0
"""Seconds between checks that each relay still holds our reservation (and redials it)."""
ABANDON_WAIT = 5.0
"""Seconds a circuit whose upgrade did not finish may take to be reset."""


class GatedRelay(CircuitV2Protocol):
    """The hop side of circuit relay v2, serving roster members only (see module doc)."""

    def __init__(self, host: Any, gate: PeerGate) -> None:
        super().__init__(host, LIMITS, allow_hop=True)
        self._gate = gate
        self.refused: list[str] = []

    async def _handle_hop_stream(self, stream: INetStream) -> None:
        remote = str(stream.muxed_conn.peer_id)
        if not gate_allows(self._gate, remote):
            await self._refuse(stream, remote, "it is not admitted by the roster")
            return
        await super()._handle_hop_stream(stream)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        target = str(ID(msg.peer.id))
        if not gate_allows(self._gate, target):
            await self._refuse(stream, target, "its target is not admitted by the roster")
            return
        await super()._handle_connect(stream, msg)

    async def _relay_data(
        self,
        src: INetStream,
        dst: INetStream,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        """Pump ``src`` into ``dst`` (one direction of one circuit), then close both.

        Replaces py-libp2p's pump, whose cleanup closes the streams stored under
        ``_active_relays[peer_id]``: that table is keyed by peer, so two circuits through one
        member (two members dialling each other at once; one member's circuits to two others)
        overwrite each other's entry, and a circuit that ends closed another one and left its
        own other half open, i.e. established at one end and dead. ``LIMITS`` sets no data cap
        worth counting (2^50 bytes), so ``circuit_data_limit`` is not enforced; the duration is.
        """
        try:
            while deadline is None or time.monotonic() < deadline:
                data = await self._read_stream_with_retry(src)
                if not data:
                    break
                with trio.fail_after(self.write_timeout):
                    await dst.write(data)
        except Exception as exc:  # py-libp2p raises many kinds; the circuit ends either way
            log.info("a circuit of %s ended: %r", peer_id, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._close_stream(src)
                await self._close_stream(dst)
            for key, pair in list(self._active_relays.items()):
                if src in pair or dst in pair:
                    del self._active_relays[key]

    async def _refuse(self, stream: INetStream, peer: str, why: str) -> None:
        self.refused.append(peer)
        log.warning("relay refused a circuit request involving %s: %s", peer, why)
        status = HopMessage(
            type=HopMessage.STATUS, status=to_proto_status(StatusCode.PERMISSION_DENIED)
        )
        try:
            await write_delimited_msg(stream, status)
        finally:
            await stream.close()


@asynccontextmanager
async def serve_relay(transport: RelayedTransport, gate: PeerGate) -> AsyncIterator[GatedRelay]:
    """Serve reservations and circuits on a running ``transport`` to peers ``gate`` admits."""
    relay = GatedRelay(transport.host, gate)
    async with background_trio_service(relay):
        yield relay


class RelayClient:
    """Reservations on the roster's relays and dials through them, for one transport."""

    def __init__(self, transport: RelayedTransport, relays: Mapping[str, Sequence[str]]) -> None:
        self._transport = transport
        self.relays = dict(relays)
        self._protocol = CircuitV2Protocol(transport.host, LIMITS, allow_hop=False)
        self._circuits = CircuitV2Transport(
            transport.host, self._protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT)
        )
        self.reserved: set[str] = set()
        self._keeping = trio.CancelScope()
        self.problems: dict[str, str] = {}
        """Relay peer ID → why it holds no reservation for us (unreachable, refused…)."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RelayClient]:
        """Accept relayed connections (the STOP side) and keep reservations while inside."""
        async with background_trio_service(self._protocol), trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_reserved_until_stopped)
            yield self
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Reserve no more: called before the host closes, so no redial races its closing."""
        self._keeping.cancel()

    async def _keep_reserved_until_stopped(self) -> None:
        with self._keeping:
            await self.keep_reserved()

    async def keep_reserved(self) -> None:
        """Reserve on every relay, and again whenever the connection to it was lost."""
        while True:
            for relay in self.relays:
                if relay not in self.reserved or not self._transport.is_connected(relay):
                    await self._reserve(relay)
            await trio.sleep(RESERVE_EVERY)

    async def _reserve(self, relay: str) -> None:
        self.reserved.discard(relay)
        try:
            stream = await self._transport.open_raw_stream(relay, PROTOCOL_ID)
            with trio.fail_after(10):
                ok = await self._circuits._make_reservation(stream, ID.from_base58(relay))
        except Exception as exc:  # py-libp2p raises many kinds; each is named below
            self._problem(relay, f"cannot reach it: {exc}")
            return
        if not ok:
            self._problem(relay, "it refused our reservation (are we in its roster?)")
            return
        if relay in self.problems:
            log.warning("reservation on relay %s restored", relay)
        self.problems.pop(relay, None)
        self.reserved.add(relay)

    def _problem(self, relay: str, why: str) -> None:
        if self.problems.get(relay) != why:
            log.warning("no reservation on relay %s: %s", relay, why)
        self.problems[relay] = why

    async def dial(self, peer: str) -> str:
        """Connect to ``peer`` through the first relay that carries the circuit; its ID.

        Raises ``BrokenError`` naming each relay and why it failed.
        """
        why = []
        for relay in sorted(self.relays, key=lambda r: r not in self.reserved):
            try:
                with trio.fail_after(15):
                    await self._transport.connect(relay)  # the relay may have restarted
                    await self._dial_circuit(relay, peer)
                return relay
            except Exception as exc:  # py-libp2p raises many kinds; each is named
                why.append(f"via relay {relay}: {self.problems.get(relay) or exc}")
        raise BrokenError(f"peer {peer} is unreachable: {'; '.join(why) or 'no relay listed'}")

    async def _dial_circuit(self, relay: str, peer: str) -> None:
        """Open a circuit to ``peer`` through ``relay`` and upgrade it; end it if that fails.

        py-libp2p cleans up a failed outbound upgrade with awaits that are not shielded, so
        when the caller's deadline cancels us mid-upgrade (a 2 s probe while a loaded
        member's dial takes 2 s) nothing reaches the wire: the relay keeps piping the
        circuit, and ``peer``, whose half of the upgrade had finished, keeps a connection
        whose other end nobody reads. Its streams to us then hang, and it never redials (it
        counts as connected). So a circuit whose upgrade did not finish is reset here, in a
        shielded scope; the relay then ends both halves (``GatedRelay._relay_data``).
        """
        circuit = multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{peer}")
        relay_addr, peer_id = self._circuits.parse_circuit_ma(circuit)
        raw = await self._circuits.dial_peer_info(
            PeerInfo(peer_id, [circuit]), relay_info=PeerInfo(ID.from_base58(relay), [relay_addr])
        )
        try:
            await self._transport.host.upgrade_outbound_connection(raw, peer_id)
        except BaseException as exc:
            with trio.CancelScope(shield=True), trio.move_on_after(ABANDON_WAIT):
                await _end_circuit(raw)
            log.info("circuit to %s through %s given up half-way (%r): reset", peer, relay, exc)
            raise


async def _end_circuit(raw: Any) -> None:
    """Reset the relay stream under a circuit (a reset reaches the relay at once)."""
    try:
        await raw.stream.reset()
    except Exception as exc:  # already gone: nothing left to end
        log.debug("ending an abandoned circuit: %r", exc)
