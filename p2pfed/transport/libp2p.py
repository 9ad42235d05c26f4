"""The libp2p transport: TCP, Noise (or TLS 1.3), Yamux only, every peer checked against the roster.

Theory of operation: a ``Libp2pTransport`` wraps one py-libp2p host built with the security
protocols of ``security`` only (``/noise`` by default; ``/tls/1.0.0`` on request, see
``libp2p_tls``) and one muxer (``/yamux/1.0.0``). py-libp2p's defaults also offer
``/plaintext/2.0.0``, and a plaintext dialer that merely *claims* a member's public key is
accepted as that member; plaintext is never offered here, because the Noise XX and TLS 1.3
handshakes prove possession of the identity key behind the peer ID.

Admission happens at two places, and the rate limit right after the second:

1. ``GatedNoise`` (``libp2p_gate``) subclasses py-libp2p's Noise transport (``GatedTLS`` its
   TLS transport) and asks the
   ``PeerGate`` about the authenticated remote peer right after the handshake, in both
   directions, before any muxer or stream exists. A refused peer's connection is closed there.
2. Every inbound stream is checked again before its handler runs (the roster may have changed
   since the connection formed). The server then writes one admission byte: ``ACCEPT`` and the
   handler runs, or ``REFUSE`` and the stream ends. ``open_stream`` waits for that byte, so a
   refusal surfaces to the dialer as ``RemoteProtocolError(UNKNOWN_PEER)`` instead of a later,
   unexplained reset — the same contract as ``MemoryTransport``.
3. Then the ``limiter`` (``ratelimit.StreamLimiter``) takes a token of the peer's bucket for
   that protocol; a stream over the rate gets ``THROTTLED`` and ends before anything of it is
   read, and the dialer sees ``BrokenError`` (``open_with_backoff`` retries later).

Concurrency: the transport is an async context manager that owns a nursery. Inbound stream
handlers run in that nursery (libp2p's per-stream task only waits for them, so libp2p's
bookkeeping stays right); leaving the context cancels them, closes the host and with it the
listener (leaving ``host.run()`` alone does not stop the listener in py-libp2p 0.8.1).

Streams (``libp2p_stream``) split large writes into Yamux-frame-sized pieces and map libp2p's
errors onto ``ClosedError`` (we closed it) and ``BrokenError`` (the peer or the network broke it).

Unauthenticated connections are bounded: an inbound connection that has not finished the
Noise handshake and muxer negotiation within ``handshake_timeout`` is closed, and at most
``pending_per_source`` may be mid-handshake per source address (a newer one evicts the
oldest), so idle sockets cannot hold py-libp2p's inbound slots and lock members out
(``libp2p_inbound``).

Every change to py-libp2p itself (256 KiB Yamux frames, a Noise session that batches socket
I/O, inbound tasks that end with their connection, no dial retries or negative cache, no
auto-connector) lives in ``libp2p_compat``, which refuses to import against a py-libp2p that
lacks what they need; this module only builds the host (one connection per peer) and drives it.

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
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.tls.transport import PROTOCOL_ID as TLS_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

from p2pfed.errors import BrokenError, ClosedError, ConfigError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Handler, PeerGate, Stream, Transport
from p2pfed.transport.libp2p_compat import allow_redial, tame_swarm, use_large_yamux_frames
from p2pfed.transport.libp2p_gate import Admission, GatedNoise, gate_allows
from p2pfed.transport.libp2p_inbound import PendingHandshakes
from p2pfed.transport.libp2p_logging import DialNotices, roster_names, route_libp2p_logging
from p2pfed.transport.libp2p_stream import Libp2pStream
from p2pfed.transport.libp2p_tls import GatedTLS
from p2pfed.transport.libp2p_yamux import BoundedYamux, use_bounded_yamux
from p2pfed.transport.linkrate import LinkMeter
from p2pfed.transport.ratelimit import StreamLimiter

log = logging.getLogger(__name__)

SEED_BYTES = 32
ACCEPT = b"\x01"
REFUSE = b"\x00"
THROTTLED = b"\x02"
"""The admission byte a server writes first on every inbound stream."""

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_ADMISSION_TIMEOUT = 10.0
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
"""Seconds an inbound connection may take to finish Noise and Yamux before it is closed."""
DEFAULT_PENDING_PER_SOURCE = 32
"""Inbound connections from one IP address that may be mid-handshake at once (many members
may dial from one address on loopback or behind a NAT); a newer one
closes the oldest, so idle sockets from one address cannot hold py-libp2p's inbound slots."""

SECURITY_PROTOCOLS = ("tls", "noise")
"""The security protocols a transport may offer: libp2p TLS 1.3 and Noise XX."""
DEFAULT_SECURITY = ("noise",)
"""What a transport offers, in order of preference (multistream-select takes the first the
remote also speaks)."""

PeerAddrs = Mapping[str, str | Sequence[str]]
"""Where peers listen: peer ID → one multiaddr or several (``/ip4/10.0.0.2/tcp/4001``)."""


class Libp2pTransport(Transport):
    """A peer's libp2p endpoint: TCP + Noise + Yamux, admission by ``gate``.

    ``seed`` is the 32-byte Ed25519 seed of the peer's identity (the peer ID derives from it).
    ``peer_addrs`` says where other peers listen; update it with ``set_peer_addrs``.
    ``limiter`` rates inbound streams per peer and protocol (default: ``DEFAULT_LIMITS`` on
    trio's clock); it stays reachable as ``limiter`` for its counters and ``on_refuse`` hook.
    ``security`` names the security protocols offered, most preferred first: ``("noise",)``
    (default) or any of ``SECURITY_PROTOCOLS`` (``("tls", "noise")``: TLS 1.3, Noise fallback).
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
        limiter: StreamLimiter | None = None,
        security: Sequence[str] = DEFAULT_SECURITY,
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
        security = tuple(security)
        unknown = [name for name in security if name not in SECURITY_PROTOCOLS]
        if unknown or not security or len(set(security)) != len(security):
            raise ConfigError(
                f"security must list some of {', '.join(SECURITY_PROTOCOLS)} once each, "
                f"got {', '.join(map(repr, security)) or 'nothing'}"
            )
        self.security = security
        self.pending = PendingHandshakes(handshake_timeout, pending_per_source)
        self.limiter = StreamLimiter(clock=trio.current_time) if limiter is None else limiter
        self.link_meter = LinkMeter()  # each peer's receive throughput, from our reads
        self._key_pair = create_new_key_pair(bytes(seed))
        self._peer_id = ID.from_pubkey(self._key_pair.public_key)
        self._gate = gate
        self.dial_notices = DialNotices(roster_names(gate))
        family = "ip4" if ip.version == 4 else "ip6"
        self._listen = multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{port}")
        self._peer_addrs: dict[str, tuple[multiaddr.Multiaddr, ...]] = {}
        for peer, addrs in (peer_addrs or {}).items():
            self.set_peer_addrs(peer, addrs)
        self._connect_timeout = connect_timeout
        self._admission_timeout = admission_timeout
        self._handlers: dict[str, Handler] = {}
        self._dial_locks: dict[str, trio.Lock] = {}
        self._admission = Admission(gate)
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
        return self._admission.refused_inbound

    def peer_addrs(self, peer: str) -> tuple[multiaddr.Multiaddr, ...]:
        """Where ``peer`` listens, as far as we know (its roster addresses)."""
        return self._peer_addrs.get(peer, ())

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
        use_large_yamux_frames()
        use_bounded_yamux()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            host = new_host(
                key_pair=self._key_pair,
                sec_opt=self._security_options(),
                muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): cast(Any, BoundedYamux)},
                listen_addrs=[self._listen],
                # One connection per peer skips the ~250 ms happy-eyeballs wait on connect.
                connection_config=ConnectionConfig(max_connections_per_peer=1),
            )
            self._host = host
            await stack.enter_async_context(host.run([self._listen]))
            # No dial retries, no auto-connector, inbound tasks scoped to their connection.
            await tame_swarm(cast(Swarm, host.get_network()), self.pending)
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

    def _security_options(self) -> dict[TProtocol, Any]:
        """One gated transport per offered protocol, in the order of ``security``."""
        options: dict[TProtocol, Any] = {}
        for name in self.security:
            if name == "tls":
                options[TLS_PROTOCOL_ID] = GatedTLS(self._key_pair, self._admission)
            else:
                noise_key = create_x25519_key_pair().private_key
                options[NOISE_PROTOCOL_ID] = GatedNoise(self._key_pair, noise_key, self._admission)
        return options

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
        stream = Libp2pStream(net_stream, remote, self.link_meter)
        handler = self._handlers.get(protocol)
        if self._closed or self._nursery is None or handler is None:
            await stream.aclose()
            return
        if not gate_allows(self._gate, remote):
            log.warning("refused a %s stream from peer %s: no longer admitted", protocol, remote)
            await _answer_and_close(net_stream, stream, REFUSE)
            return
        if not self.limiter.admit(remote, protocol):
            await _answer_and_close(net_stream, stream, THROTTLED)
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
        if self._host is None:
            raise ClosedError("transport is not running: enter it with 'async with' first")
        if not gate_allows(self._gate, peer):
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
        stream = Libp2pStream(net_stream, peer, self.link_meter)
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
        if verdict == THROTTLED:
            raise BrokenError(f"peer {peer} refused our {protocol} stream: over its rate")
        raise BrokenError(f"peer {peer} closed our {protocol} stream before admitting it")

    async def _ensure_connected(self, peer: str, peer_id: ID) -> None:
        assert self._host is not None
        lock = self._dial_locks.setdefault(peer, trio.Lock())
        async with lock:
            if self._conns_of(peer_id):
                return
            addrs = self._peer_addrs.get(peer)
            if not addrs:
                raise BrokenError(f"peer {peer} is unreachable: no address is known for it")
            self._admission.authenticated.discard(peer)
            # libp2p blocks a peer for 60 s after a failed dial ("negative cache"); a member
            # that restarts must be reachable at once, and our own timeouts bound each dial.
            allow_redial(cast(Swarm, self._host.get_network()), peer_id)
            try:
                with trio.fail_after(self._connect_timeout):
                    await self._host.connect(PeerInfo(peer_id, list(addrs)))
            except trio.TooSlowError as exc:
                self.dial_notices.failed(peer, addrs, TimeoutError("timed out"))
                raise BrokenError(f"connecting to peer {peer} timed out") from exc
            except Exception as exc:
                if peer in self._admission.authenticated:
                    raise RemoteProtocolError(
                        ReasonCode.UNKNOWN_PEER,
                        f"peer {peer} closed the connection after the security handshake: "
                        "it does not admit us",
                        peer,
                    ) from exc
                self.dial_notices.failed(peer, addrs, exc)  # libp2p's own lines are dropped
                raise BrokenError(f"peer {peer} is unreachable: {exc!r}") from exc
            self.dial_notices.connected(peer)

    async def disconnect(self, peer: str) -> None:
        """Close every connection to ``peer`` (for example after it left the roster)."""
        if self._host is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._host.disconnect(ID.from_base58(peer))

    async def drop_refused_peers(self) -> list[str]:
        """Close connections to every connected peer the gate no longer admits; returns them."""
        dropped = [p for p in self.connected_peers() if not gate_allows(self._gate, p)]
        for peer in dropped:
            await self.disconnect(peer)
        await trio.lowlevel.checkpoint()
        return dropped


async def _answer_and_close(net_stream: INetStream, stream: Libp2pStream, verdict: bytes) -> None:
    """Tell the dialer why its stream ends here, then end it (nothing of it was read)."""
    try:
        await net_stream.write(verdict)
    except Exception as exc:
        log.debug("telling %s its stream was refused failed: %s", stream.remote_peer, exc)
    await stream.aclose()


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
