"""A ``Libp2pTransport`` that falls back to the roster's relays and says how each peer is reached.

Theory of operation: a member behind NAT lists no address in the roster (nobody can dial it)
or one that cannot be dialled from outside. ``RelayedTransport`` keeps a reservation on every
relay given to it (``relay.RelayClient``), so members can reach it through a relay; when its
own direct dial to a peer fails or no address is known, it dials that peer through a relay,
in its own nursery: a caller whose deadline expires stops waiting, the dial goes on, and the
next caller waits for it (``_relay_dial``).
Noise and the roster gate run end to end over the circuit (``relay`` module doc). With relays
it also runs ``holepunch.HolePuncher``, which turns a circuit into a direct connection through
the NATs where they allow it. ``links`` says per connected peer whether the connection is
direct, hole-punched or relayed (py-libp2p marks a circuit's connection ``RELAYED``), and the
time the last stream took to open and be admitted (one to two round trips), so status and
logs can report it; ``unreachable`` names each peer that could be reached neither way, with
the reasons.

Two members that dial each other through a relay at the same moment get two circuits. Both
ends keep the same one, the circuit the smaller peer ID dialled, and close the other as soon as
both exist (``_keep_one_circuit``, on py-libp2p's ``connected`` event); the relay closes only
that circuit (``relay.GatedRelay._relay_data``). Safety net: a connection on which
``STALLS_BEFORE_REDIAL`` stream opens in a row time out (not opened, or not admitted, in time)
is closed with a log line naming the peer and the reason, and the next stream redials it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Self

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from p2pfed.errors import BrokenError, ClosedError
from p2pfed.transport.base import Stream
from p2pfed.transport.dialback import DialBack
from p2pfed.transport.holepunch import HolePuncher
from p2pfed.transport.libp2p import Libp2pTransport
from p2pfed.transport.libp2p_logging import roster_names
from p2pfed.transport.relay import RelayClient

log = logging.getLogger(__name__)

STALLS_BEFORE_REDIAL = 2
"""Stream opens in a row that time out on one connection before it is closed and redialled."""
LINK_PREFERENCE = ("direct", "hole-punched", "relayed")
"""How a peer with several connections is reported: by the best of them (new streams use it)."""
SIMULTANEOUS_DIAL_WAIT = 1.0
"""Seconds the member with the larger peer ID waits for an inbound circuit before dialling."""


class RelayedTransport(Libp2pTransport):
    """``Libp2pTransport`` plus reservations on ``relays`` (peer ID → addresses) and fallback.

    ``hole_punch``: True (with relays) starts hole punches towards relayed peers and answers
    theirs; None only answers; False does neither.
    """

    def __init__(
        self,
        *args: Any,
        relays: Mapping[str, Sequence[str]] | None = None,
        hole_punch: bool | None = True,
        own_addrs: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Serves every member's dial-backs; checks our own roster addresses if we have any.
        self._checking = trio.CancelScope()
        self.dialback = DialBack(
            self, own_addrs, last_resort=relays or {}, name_of=roster_names(self._gate)
        )
        self.relay_client: RelayClient | None = None
        self.hole_puncher: HolePuncher | None = None
        self._hole_punch = hole_punch
        self._relays = dict(relays or {})
        for relay, addrs in self._relays.items():
            self.set_peer_addrs(relay, addrs)
        self.open_times: dict[str, float] = {}
        self.unreachable: dict[str, str] = {}
        """Peer → why neither a direct dial nor any relay reached it (cleared on success)."""
        self.stalls: dict[str, int] = {}
        """Peer → stream opens in a row that timed out on its connection."""
        self._relay_dials: dict[str, _Dial] = {}

    @property
    def host(self) -> IHost:
        if self._host is None:
            raise ClosedError("transport is not running: enter it with 'async with' first")
        return self._host

    def is_connected(self, peer: str) -> bool:
        return self._host is not None and bool(self._conns_of(ID.from_base58(peer)))

    def _conns_of(self, peer: ID) -> list[Any]:
        # A circuit the relay or the other end closed may linger in the swarm's table for a
        # while; counted as a connection, it would stop us from dialling a fresh one.
        return [c for c in super()._conns_of(peer) if not c.muxed_conn.is_closed]

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.host.get_network().register_notifee(_OnConnected(self._circuit_arrived))
        if self._relays:
            assert self._exit_stack is not None
            self.relay_client = RelayClient(self, self._relays)
            await self._exit_stack.enter_async_context(self.relay_client.running())
            if self._hole_punch is not False:
                # None: answer the peers' punches but start none (tests pin a link's kind).
                self.hole_puncher = HolePuncher(self.host, drive=self._hole_punch is True)
                await self._exit_stack.enter_async_context(
                    background_trio_service(self.hole_puncher)
                )
        if self.dialback.own_addrs:
            assert self._nursery is not None
            self._nursery.start_soon(self._keep_checking)
        return self

    async def _keep_checking(self) -> None:
        with self._checking:  # cancelled by aclose, like the relay client and hole puncher
            await self.dialback.keep_checking()

    async def dial_and_authenticate(self, addr: Any, peer: str) -> None:
        """A fresh TCP connection to ``addr`` whose handshake must authenticate ``peer``.

        Closed right after the handshake (a dial-back: ``transport.dialback``); raises what
        the dial or the handshake raised.
        """
        swarm: Any = self.host.get_network()
        maddr = multiaddr.Multiaddr(str(addr))
        tcp = swarm.transport_manager.transport_for_dialing(maddr)
        if tcp is None:
            raise BrokenError(f"no transport dials {addr}")
        raw = await tcp.dial(maddr)
        try:
            secured = await swarm.upgrader.upgrade_security(raw, True, ID.from_base58(peer))
            await secured.close()
        finally:
            with contextlib.suppress(Exception):
                await raw.close()

    async def aclose(self) -> None:
        # What dials on its own stops first: a re-reservation or hole punch whose dial
        # finishes while the host closes adds a connection the closing host never sees
        # again (its socket then leaks until garbage collection).
        if self.relay_client is not None:
            self.relay_client.stop()
        if self.hole_puncher is not None:
            self.hole_puncher.manager.cancel()
        self._checking.cancel()
        await super().aclose()

    async def connect(self, peer: str) -> None:
        """Make sure a connection to ``peer`` is open (dialling it if needed)."""
        peer_id = ID.from_base58(peer)
        if not self.is_connected(peer):
            # py-libp2p's circuit dial stores a bare /p2p/<relay> address in the peerstore,
            # on which the swarm's next dial of the relay gives up: dial ours only.
            self.host.get_peerstore().clear_addrs(peer_id)
        await self._ensure_connected(peer, peer_id)

    async def open_raw_stream(self, peer: str, protocol: str) -> Any:
        """A py-libp2p stream to ``peer`` without our admission byte (relay protocols)."""
        peer_id = ID.from_base58(peer)
        await self._ensure_connected(peer, peer_id)
        return await self.host.new_stream(peer_id, [protocol])  # type: ignore[list-item]

    async def open_stream(self, peer: str, protocol: str) -> Stream:
        start = trio.current_time()
        try:
            stream = await super().open_stream(peer, protocol)
        except BrokenError as exc:
            await self._after_failed_open(peer, exc)
            raise
        self.stalls.pop(peer, None)
        self.open_times[peer] = trio.current_time() - start
        return stream

    async def _after_failed_open(self, peer: str, exc: BrokenError) -> None:
        """Drop dead connections to ``peer``; close a live one that keeps timing out."""
        for conn in super()._conns_of(ID.from_base58(peer)):
            if conn.muxed_conn.is_closed:  # lingering: removing it lets the next open redial
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await conn.close()
        if not isinstance(exc.__cause__, trio.TooSlowError):
            return
        stalls = self.stalls[peer] = self.stalls.get(peer, 0) + 1
        if stalls >= STALLS_BEFORE_REDIAL:
            log.warning(
                "closing the connection to %s: %d stream opens in a row timed out (last: %s); "
                "the next stream redials it",
                peer,
                stalls,
                exc,
            )
            del self.stalls[peer]
            await self.disconnect(peer)

    def _circuit_arrived(self, conn: INetConn) -> None:
        if _kind(conn) == "relayed" and self._nursery is not None and not self._closed:
            self._nursery.start_soon(self._keep_one_circuit, conn.muxed_conn.peer_id)

    async def _keep_one_circuit(self, peer_id: ID) -> None:
        """Of several circuits with ``peer_id``, keep the newest the smaller peer ID dialled.

        Both ends decide alike, so of two simultaneous circuits they close the same one (the
        larger ID's). Of two circuits one member dialled, the older is one it gave up on.
        """
        circuits = [c for c in self._conns_of(peer_id) if _kind(c) == "relayed"]
        if len(circuits) < 2:
            return
        smaller_is_us = self.local_peer < str(peer_id)
        keep = ([c for c in circuits if _dialled_by_us(c) is smaller_is_us] or circuits)[-1]
        for conn in circuits:
            if conn is not keep:
                log.info("closing a second circuit with %s (dialled at once, or stale)", peer_id)
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await conn.close()

    async def _ensure_connected(self, peer: str, peer_id: ID) -> None:
        try:
            await super()._ensure_connected(peer, peer_id)
            self.unreachable.pop(peer, None)
            return
        except BrokenError as exc:
            if peer in self._relays:  # the relay client names its own relays' problems
                raise
            if self.relay_client is None:
                self._unreachable(peer, f"direct: {exc}; no relay is listed in the roster")
                raise
            direct = str(exc)
        async with self._dial_locks.setdefault(peer, trio.Lock()):
            if self.local_peer > peer:
                # Both ends dialling each other through the relay at once make two circuits,
                # and each end may close a different one: the larger ID first gives the
                # smaller one's dial (if any) a moment to arrive.
                with trio.move_on_after(SIMULTANEOUS_DIAL_WAIT):
                    while not self._conns_of(peer_id):
                        await trio.sleep(0.05)
            if self._conns_of(peer_id):
                return
            try:
                relay = await self._relay_dial(peer)
            except BrokenError as exc:
                self._unreachable(peer, f"direct: {direct}; relayed: {exc}")
                raise BrokenError(
                    f"peer {peer} is unreachable directly and by relay: {exc}"
                ) from exc
        self.unreachable.pop(peer, None)
        log.info("connected to %s through relay %s", peer, relay)

    async def _relay_dial(self, peer: str) -> str:
        """Dial ``peer`` through a relay in our own nursery and wait for it; the relay's ID.

        A caller whose deadline expires (a 2 s probe, while a loaded member's dial takes 2 s)
        stops waiting, but the dial goes on: cut short it would only be reset and redialled
        by the next caller, which may then be cut short too. The next caller waits for the
        dial already under way instead of starting one.
        """
        assert self.relay_client is not None and self._nursery is not None
        dial = self._relay_dials.get(peer)
        if dial is None:
            dial = self._relay_dials[peer] = _Dial()
            self._nursery.start_soon(self._run_relay_dial, peer, dial)
        await dial.done.wait()
        if dial.relay is None:
            raise BrokenError(dial.error)
        return dial.relay

    async def _run_relay_dial(self, peer: str, dial: _Dial) -> None:
        assert self.relay_client is not None
        try:
            dial.relay = await self.relay_client.dial(peer)
        except BrokenError as exc:
            dial.error = str(exc)
        finally:
            del self._relay_dials[peer]
            dial.done.set()

    def _unreachable(self, peer: str, why: str) -> None:
        if self.unreachable.get(peer) is None:
            log.warning("cannot reach member %s: %s", peer, why)
        self.unreachable[peer] = why

    def links(self) -> dict[str, dict[str, Any]]:
        """Per connected peer: ``via``, ``open_s``, ``rtt_s`` and ``throughput_mbps``.

        ``via`` is "direct", "hole-punched" (a direct connection our hole punch made) or
        "relayed". The figures are None until measured: ``rtt_s`` is the Yamux session's
        smoothed ping round trip over that link (through the relay: end to end);
        ``throughput_mbps`` the rate we last received at from that peer during a transfer
        (``LinkMeter``: megabits per second, a lower bound on the link's capacity). A
        relayed link of a hole-punching transport also has ``hole_punch``: why the last punch
        failed, or None while none has.
        """
        out: dict[str, dict[str, Any]] = {}
        for peer in self.connected_peers():
            kinds = [
                (self._kind(peer, conn), conn) for conn in self._conns_of(ID.from_base58(peer))
            ]
            found = {kind for kind, _ in kinds}
            via = next(k for k in LINK_PREFERENCE if k in found)
            rtts = [_rtt(conn) for kind, conn in kinds if kind == via]
            rtt = min((r for r in rtts if r is not None), default=None)
            rate = self.link_meter.rate(peer)
            out[peer] = {
                "via": via,
                "open_s": self.open_times.get(peer),
                "rtt_s": rtt,
                "throughput_mbps": None if rate is None else round(rate * 8 / 1e6, 3),
            }
            if via == "relayed" and self.hole_puncher is not None:
                out[peer]["hole_punch"] = self.hole_puncher.failures.get(peer)
        return out

    def _kind(self, peer: str, conn: Any) -> str:
        kind = _kind(conn)
        punched = self.hole_puncher is not None and self.hole_puncher.is_punched(peer, conn)
        return "hole-punched" if kind == "direct" and punched else kind


class _Dial:
    """A relayed dial under way: its callers wait for ``done``, then read ``relay`` or ``error``."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.relay: str | None = None
        self.error = "the dial was cancelled (the transport closed)"


class _OnConnected(INotifee):
    """Calls ``on_connected`` with every connection the swarm adds (py-libp2p's notifee)."""

    def __init__(self, on_connected: Any) -> None:
        self._on_connected = on_connected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        pass


def _dialled_by_us(conn: Any) -> bool:
    """Whether we opened ``conn`` (its Yamux session's initiator; a circuit's is its dialler)."""
    return bool(getattr(conn.muxed_conn, "is_initiator_value", False))


def _kind(conn: Any) -> str:
    try:
        relayed = conn.get_connection_type() is ConnectionType.RELAYED
    except Exception:  # a connection without the accessor is a plain TCP one
        relayed = False
    if not relayed:
        relayed = any("p2p-circuit" in str(a) for a in _addrs(conn))
    return "relayed" if relayed else "direct"


def _rtt(conn: Any) -> float | None:
    """The connection's Yamux ping round trip in seconds; None until its first pong."""
    rtt = getattr(getattr(conn, "muxed_conn", None), "rtt", None)
    value = rtt() if callable(rtt) else 0.0
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _addrs(conn: Any) -> list[Any]:
    try:
        return list(conn.get_transport_addresses())
    except Exception:  # no addresses known: the type decides
        return []
