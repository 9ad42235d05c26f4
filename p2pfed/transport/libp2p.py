"""The libp2p transport: TCP, Noise only, Yamux only, every peer checked against the roster.

Theory of operation: a ``Libp2pTransport`` wraps one py-libp2p host built with exactly one
security protocol (``/noise``) and one muxer (``/yamux/1.0.0``). py-libp2p's defaults also offer
``/plaintext/2.0.0``, secio and TLS, and a plaintext dialer that merely *claims* a member's
public key is accepted as that member; offering Noise alone closes that door, because the
Noise XX handshake proves possession of the identity key behind the peer ID.

Admission happens at two places:

1. ``_GatedNoise`` subclasses py-libp2p's Noise transport and asks the ``PeerGate`` about the
   authenticated remote peer right after the handshake, in both directions, before any muxer
   or stream exists. A refused peer's connection is closed there.
2. Every inbound stream is checked again before its handler runs (the roster may have changed
   since the connection formed). The server then writes one admission byte: ``ACCEPT`` and the
   handler runs, or ``REFUSE`` and the stream ends. ``open_stream`` waits for that byte, so a
   refusal surfaces to the dialer as ``RemoteProtocolError(UNKNOWN_PEER)`` instead of a later,
   unexplained reset — the same contract as ``MemoryTransport``.

Concurrency: the transport is an async context manager that owns a nursery. Inbound stream
handlers run in that nursery (libp2p's per-stream task only waits for them, so libp2p's
bookkeeping stays right); leaving the context cancels them, closes the host and with it the
listener (leaving ``host.run()`` alone does not stop the listener in py-libp2p 0.8.1).

Streams split large writes into Yamux-frame-sized pieces and map libp2p's errors onto
``ClosedError`` (we closed it) and ``BrokenError`` (the peer or the network broke it).

Unauthenticated connections are bounded: an inbound connection that has not finished the
Noise handshake and muxer negotiation within ``handshake_timeout`` is closed, and at most
``pending_per_source`` may be mid-handshake per source address (a newer one evicts the
oldest), so idle sockets cannot hold py-libp2p's inbound slots and lock members out.

Adjustments to py-libp2p 0.8.1, each covered by a test (docs/transport.md says why): Yamux
frames of up to 256 KiB and a Noise session that batches socket I/O (same wire format, about
half the CPU per byte); the listener's per-connection task ends with its connection (py-libp2p
leaks it, and its inbound slot); no auto-connector, no dial retries, one connection per peer.

Raises (construction): ``ConfigError`` for a seed that is not 32 bytes or a bad address.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream, IRawConnection, ISecureConn
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, PrivateKey
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError
from libp2p.network.stream.net_stream import NetStream
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pfed.errors import BrokenError, ClosedError, ConfigError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Handler, PeerGate, Stream, Transport
from p2pfed.transport.libp2p_inbound import PendingHandshakes, hold_inbound_only_while_open
from p2pfed.transport.libp2p_logging import route_libp2p_logging
from p2pfed.transport.noise_session import BufferedNoiseSession

log = logging.getLogger(__name__)

SEED_BYTES = 32
YAMUX_INITIAL_WINDOW = 256 * 1024
YAMUX_HEADER_BYTES = 12
YAMUX_MAX_FRAME_PAYLOAD = YAMUX_INITIAL_WINDOW - YAMUX_HEADER_BYTES
"""The most payload our Yamux frames carry (py-libp2p's own sender stops at 65,524 B)."""

ACCEPT = b"\x01"
REFUSE = b"\x00"
"""The admission byte a server writes first on every inbound stream."""

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_ADMISSION_TIMEOUT = 10.0
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
"""Seconds an inbound connection may take to finish Noise and Yamux before it is closed."""
DEFAULT_PENDING_PER_SOURCE = 32
"""Inbound connections from one IP address that may be mid-handshake at once (many members
may dial from one address on loopback or behind a NAT); a newer one
closes the oldest, so idle sockets from one address cannot hold py-libp2p's inbound slots."""

PeerAddrs = Mapping[str, str | Sequence[str]]
"""Where peers listen: peer ID → one multiaddr or several (``/ip4/10.0.0.2/tcp/4001``)."""


def _use_large_yamux_frames() -> None:
    """Let py-libp2p's Yamux sender put up to 256 KiB in one DATA frame instead of 64 KiB.

    py-libp2p spends most of a bulk transfer in per-frame Python work on both ends (locks,
    header parsing, buffer bookkeeping, a window update per read); four times fewer frames
    roughly doubled measured throughput. Yamux bounds a frame only by the receiver's window, and
    256 KiB is the window every stream starts with, so any Yamux receiver must accept it (the
    sender still never exceeds the window it was granted). Noise still splits each frame into
    messages of at most 65,519 B. This sets a module constant of py-libp2p, so it applies to
    every py-libp2p Yamux connection of this process.
    """
    yamux_module.MAX_MESSAGE_SIZE = YAMUX_INITIAL_WINDOW


def _gate_allows(gate: PeerGate, peer: str) -> bool:
    # A gate that fails must fail closed: an exception is a refusal, never an admission.
    try:
        return bool(gate(peer))
    except Exception:
        log.exception("peer gate raised for %s; refusing the peer", peer)
        return False


def _buffered(secured: ISecureConn) -> ISecureConn:
    # Same cipher states and wire format, fewer socket calls (see noise_session).
    if isinstance(secured, SecureSession) and isinstance(secured.conn, NoiseTransportReadWriter):
        return BufferedNoiseSession(secured)
    return secured


class _GatedNoise(NoiseTransport):
    """Noise (XX) that refuses any authenticated peer the gate does not admit.

    The check sits right after the handshake, so a refused peer never reaches muxer
    negotiation. ``authenticated`` remembers the peers whose *outbound* handshake completed
    and passed our gate: if such a dial still fails, the remote dropped us after learning who
    we are, i.e. it refused us.
    """

    def __init__(self, key_pair: KeyPair, noise_key: PrivateKey, gate: PeerGate) -> None:
        super().__init__(key_pair, noise_privkey=noise_key)
        self._gate = gate
        self.authenticated: set[str] = set()
        self.refused_inbound = 0

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        secured = await super().secure_inbound(conn)
        await self._admit(secured, "inbound")
        return _buffered(secured)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        secured = await super().secure_outbound(conn, peer_id)
        await self._admit(secured, "outbound")
        self.authenticated.add(str(secured.get_remote_peer()))
        return _buffered(secured)

    async def _admit(self, secured: ISecureConn, direction: str) -> None:
        peer = str(secured.get_remote_peer())
        if _gate_allows(self._gate, peer):
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


class Libp2pStream(Stream):
    """One Yamux stream over a Noise-secured connection to an admitted peer."""

    def __init__(self, stream: INetStream, remote: str) -> None:
        # The host hands out NetStreams; the interface lacks close_write, which send_eof needs.
        self._stream = cast(NetStream, stream)
        self._remote = remote
        self._closed = False
        self._eof_sent = False

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof_sent:
            raise ClosedError("stream was closed for sending by us")
        view = memoryview(data).cast("B")
        try:
            for start in range(0, len(view), YAMUX_MAX_FRAME_PAYLOAD):
                # Yamux copies each frame into header + payload anyway, so a view suffices.
                piece = view[start : start + YAMUX_MAX_FRAME_PAYLOAD]
                await self._stream.write(cast(bytes, piece))
        except StreamClosed as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream to {self._remote} was closed by the peer") from exc
        except (StreamError, OSError) as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream to {self._remote} was broken: {exc!r}") from exc

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise ClosedError("stream was closed by us")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        try:
            data = await self._stream.read(max_bytes)
        except StreamEOF:
            return b""
        except (StreamError, OSError) as exc:
            if self._closed:
                raise ClosedError("stream was closed by us") from exc
            raise BrokenError(f"stream from {self._remote} was broken: {exc!r}") from exc
        # A zero-length read from py-libp2p also means the stream has ended.
        return bytes(data)

    async def send_eof(self) -> None:
        if self._closed or self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        self._eof_sent = True
        try:
            await self._stream.close_write()
        except (StreamError, OSError) as exc:
            raise BrokenError(f"stream to {self._remote} was broken: {exc!r}") from exc

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        # Closing politely (FIN) keeps data the peer already buffered readable there; a reset
        # would discard it. Errors here mean the peer is gone, which closing accepts.
        with trio.CancelScope(shield=True):
            try:
                await self._stream.close()
            except Exception as exc:
                log.debug("closing stream to %s: %s", self._remote, exc)


class Libp2pTransport(Transport):
    """A peer's libp2p endpoint: TCP + Noise + Yamux, admission by ``gate``.

    ``seed`` is the 32-byte Ed25519 seed of the peer's identity (the peer ID derives from it).
    ``peer_addrs`` says where other peers listen; update it with ``set_peer_addrs``.
    Use as ``async with Libp2pTransport(...) as transport:``; ``listen_addrs`` then holds the
    bound addresses (port 0 picks a free port).
    """

    def __init__(
        self,
        seed: bytes,
        gate: PeerGate,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        peer_addrs: PeerAddrs | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        admission_timeout: float = DEFAULT_ADMISSION_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        pending_per_source: int = DEFAULT_PENDING_PER_SOURCE,
    ) -> None:
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise ConfigError(f"identity seed must be {SEED_BYTES} bytes, got {_describe(seed)}")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError as exc:
            raise ConfigError(f"listen host must be an IP address, got {host!r}") from exc
        if not 0 <= port <= 65535:
            raise ConfigError(f"listen port must be in 0..65535, got {port}")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("admission_timeout", admission_timeout),
            ("handshake_timeout", handshake_timeout),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
        if pending_per_source < 1:
            raise ConfigError(f"pending_per_source must be at least 1, got {pending_per_source}")
        self.pending = PendingHandshakes(handshake_timeout, pending_per_source)
        self._key_pair = create_new_key_pair(bytes(seed))
        self._peer_id = ID.from_pubkey(self._key_pair.public_key)
        self._gate = gate
        family = "ip4" if ip.version == 4 else "ip6"
        self._listen = multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{port}")
        self._peer_addrs: dict[str, tuple[multiaddr.Multiaddr, ...]] = {}
        for peer, addrs in (peer_addrs or {}).items():
            self.set_peer_addrs(peer, addrs)
        self._connect_timeout = connect_timeout
        self._admission_timeout = admission_timeout
        self._handlers: dict[str, Handler] = {}
        self._dial_locks: dict[str, trio.Lock] = {}
        self._noise: _GatedNoise | None = None
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._handler_scopes: set[trio.CancelScope] = set()
        self._listen_addrs: tuple[str, ...] = ()
        self._closed = False

    # -- properties ---------------------------------------------------------------------

    @property
    def local_peer(self) -> str:
        return str(self._peer_id)

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        """The addresses actually bound (with the real port), without the ``/p2p`` suffix."""
        return self._listen_addrs

    @property
    def refused_inbound(self) -> int:
        """How many inbound connections the gate refused after the Noise handshake."""
        return 0 if self._noise is None else self._noise.refused_inbound

    def set_peer_addrs(self, peer: str, addrs: str | Iterable[str]) -> None:
        """Record where ``peer`` listens (replacing what was known).

        Addresses may end in ``/p2p/<peer>`` as roster entries do; that part must name
        ``peer``. Raises ``ConfigError`` naming a malformed address or peer ID.
        """
        _parse_peer_id(peer)
        raw = [addrs] if isinstance(addrs, str) else list(addrs)
        parsed = []
        for text in raw:
            transport_part, _, named = str(text).partition("/p2p/")
            if named and named != peer:
                raise ConfigError(f"address {text!r} names another peer than {peer}")
            try:
                parsed.append(multiaddr.Multiaddr(transport_part))
            except Exception as exc:
                raise ConfigError(f"address {text!r} of peer {peer} is not a multiaddr") from exc
        self._peer_addrs[peer] = tuple(parsed)

    def connected_peers(self) -> list[str]:
        """Peers with an open connection right now."""
        if self._host is None:
            return []
        return [str(p) for p in self._host.get_network().connections if self._conns_of(p)]

    def _conns_of(self, peer: ID) -> list[Any]:
        assert self._host is not None
        return list(self._host.get_network().connections.get(peer, []))

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._exit_stack is not None or self._closed:
            raise ClosedError("a Libp2pTransport can be entered only once")
        route_libp2p_logging()
        _use_large_yamux_frames()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            noise = _GatedNoise(self._key_pair, create_x25519_key_pair().private_key, self._gate)
            host = new_host(
                key_pair=self._key_pair,
                sec_opt={NOISE_PROTOCOL_ID: noise},
                muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): cast(Any, Yamux)},
                listen_addrs=[self._listen],
                # One connection per peer skips the ~250 ms happy-eyeballs wait on connect.
                connection_config=ConnectionConfig(max_connections_per_peer=1),
            )
            # A refused dial should fail at once, not after libp2p's 4 tries with back-off.
            swarm = cast(Swarm, host.get_network())
            swarm.retry_config = RetryConfig(max_retries=0)
            self._noise, self._host = noise, host
            await stack.enter_async_context(host.run([self._listen]))
            hold_inbound_only_while_open(swarm, self.pending)
            # libp2p's auto-connector dials peers from the peerstore on its own to reach a
            # connection quota; we connect to roster members when a protocol asks, not before.
            await swarm.auto_connector.stop()
            # Unwound first: leaving host.run() alone leaves the listener open.
            stack.push_async_callback(self._close_host)
            self._listen_addrs = tuple(str(a).split("/p2p/")[0] for a in host.get_addrs())
            if not self._listen_addrs:
                # py-libp2p logs the failure and runs on without a listener; a peer nobody can
                # reach must not look healthy.
                raise ConfigError(f"cannot listen on {self._listen} (port in use or not ours)")
            for protocol in self._handlers:
                self._register(protocol)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        # The nursery and host.run() were entered by __aenter__ in this task; they must be
        # left here, in the same task and nesting, never from an earlier explicit aclose().
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the host (listener and every connection) and cancel running handlers.

        Safe to call early and more than once; leaving ``async with`` finishes the cleanup.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        for scope in list(self._handler_scopes):
            scope.cancel()
        await self._close_host()

    async def _close_host(self) -> None:
        if self._host is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._host.close()

    # -- serving ------------------------------------------------------------------------

    def serve(self, protocol: str, handler: Handler) -> None:
        if self._closed:
            raise ClosedError("transport was closed by us")
        self._handlers[protocol] = handler
        if self._host is not None:
            self._register(protocol)

    def _register(self, protocol: str) -> None:
        assert self._host is not None

        async def on_stream(net_stream: INetStream) -> None:
            await self._on_stream(protocol, net_stream)

        self._host.set_stream_handler(protocol, on_stream)  # type: ignore[arg-type]

    async def _on_stream(self, protocol: str, net_stream: INetStream) -> None:
        """libp2p's task for one inbound stream: admit, then wait for our handler task."""
        remote = str(net_stream.muxed_conn.peer_id)
        stream = Libp2pStream(net_stream, remote)
        handler = self._handlers.get(protocol)
        if self._closed or self._nursery is None or handler is None:
            await stream.aclose()
            return
        if not _gate_allows(self._gate, remote):
            log.warning("refused a %s stream from peer %s: no longer admitted", protocol, remote)
            try:
                await net_stream.write(REFUSE)
            except Exception as exc:
                log.debug("telling %s it was refused failed: %s", remote, exc)
            await stream.aclose()
            return
        done = trio.Event()
        self._nursery.start_soon(self._run_handler, handler, stream, done)
        await done.wait()

    async def _run_handler(self, handler: Handler, stream: Libp2pStream, done: trio.Event) -> None:
        # Each handler gets its own scope so aclose can cancel handlers without cancelling the
        # body of the caller's ``async with`` (which runs inside the nursery's own scope).
        with trio.CancelScope() as scope:
            self._handler_scopes.add(scope)
            if self._closed:
                scope.cancel()
            try:
                await stream.send_all(ACCEPT)
                await handler(stream)
            except (BrokenError, ClosedError, RemoteProtocolError) as exc:
                # One broken or misbehaving stream must not take the peer down.
                log.info("handler for stream from %s ended: %s", stream.remote_peer, exc)
            finally:
                self._handler_scopes.discard(scope)
                await stream.aclose()
                done.set()

    # -- dialing ------------------------------------------------------------------------

    async def open_stream(self, peer: str, protocol: str) -> Stream:
        if self._closed:
            raise ClosedError("transport was closed by us")
        if self._host is None or self._noise is None:
            raise ClosedError("transport is not running: enter it with 'async with' first")
        if not _gate_allows(self._gate, peer):
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_PEER, f"peer {peer} is not admitted by the roster", peer
            )
        try:
            peer_id = ID.from_base58(peer)
        except Exception as exc:
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_PEER, f"peer ID {peer!r} is not a base58 libp2p peer ID", peer
            ) from exc
        await self._ensure_connected(peer, peer_id)
        try:
            with trio.fail_after(self._connect_timeout):
                net_stream = await self._host.new_stream(peer_id, [protocol])  # type: ignore[list-item]
        except trio.TooSlowError as exc:
            raise BrokenError(f"opening a {protocol} stream to {peer} timed out") from exc
        except Exception as exc:
            raise BrokenError(f"peer {peer} did not accept a {protocol} stream: {exc!r}") from exc
        stream = Libp2pStream(net_stream, peer)
        try:
            with trio.fail_after(self._admission_timeout):
                verdict = await stream.receive_some(1)
        except trio.TooSlowError as exc:
            await stream.aclose()
            raise BrokenError(f"peer {peer} did not admit our {protocol} stream in time") from exc
        except BrokenError:
            await stream.aclose()
            raise
        if verdict == ACCEPT:
            return stream
        await stream.aclose()
        if verdict == REFUSE:
            raise RemoteProtocolError(
                ReasonCode.UNKNOWN_PEER,
                f"peer {peer} refused our stream: we are not admitted",
                peer,
            )
        raise BrokenError(f"peer {peer} closed our {protocol} stream before admitting it")

    async def _ensure_connected(self, peer: str, peer_id: ID) -> None:
        assert self._host is not None and self._noise is not None
        lock = self._dial_locks.setdefault(peer, trio.Lock())
        async with lock:
            if self._conns_of(peer_id):
                return
            addrs = self._peer_addrs.get(peer)
            if not addrs:
                raise BrokenError(f"peer {peer} is unreachable: no address is known for it")
            self._noise.authenticated.discard(peer)
            # libp2p blocks a peer for 60 s after a failed dial ("negative cache"); a member
            # that restarts must be reachable at once, and our own timeouts bound each dial.
            unblock = getattr(self._host.get_network(), "unblock_peer", None)
            if unblock is not None:
                unblock(peer_id)
            try:
                with trio.fail_after(self._connect_timeout):
                    await self._host.connect(PeerInfo(peer_id, list(addrs)))
            except trio.TooSlowError as exc:
                raise BrokenError(f"connecting to peer {peer} timed out") from exc
            except Exception as exc:
                if peer in self._noise.authenticated:
                    raise RemoteProtocolError(
                        ReasonCode.UNKNOWN_PEER,
                        f"peer {peer} closed the connection after the Noise handshake: "
                        "it does not admit us",
                        peer,
                    ) from exc
                raise BrokenError(f"peer {peer} is unreachable: {exc!r}") from exc

    async def disconnect(self, peer: str) -> None:
        """Close every connection to ``peer`` (for example after it left the roster)."""
        if self._host is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._host.disconnect(ID.from_base58(peer))

    async def drop_refused_peers(self) -> list[str]:
        """Close connections to every connected peer the gate no longer admits; returns them."""
        dropped = [p for p in self.connected_peers() if not _gate_allows(self._gate, p)]
        for peer in dropped:
            await self.disconnect(peer)
        await trio.lowlevel.checkpoint()
        return dropped


def _parse_peer_id(peer: str) -> ID:
    """The ID of a peer-ID string that embeds its public key, as Ed25519 IDs do.

    Raises ``ConfigError`` otherwise: plain base58 decoding accepts almost any word.
    """
    try:
        peer_id = ID.from_base58(peer)
        key = peer_id.extract_public_key()
    except Exception:
        key = None
    if key is None or ID.from_pubkey(key) != peer_id or peer_id.to_base58() != peer:
        raise ConfigError(f"peer ID {peer!r} is not a base58 libp2p peer ID embedding its key")
    return peer_id


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return type(value).__name__
