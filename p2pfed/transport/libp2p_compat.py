"""Every change p2pfed makes to py-libp2p, in one place, checked against what is installed.

Theory of operation: py-libp2p 0.8.1 (with noiseprotocol 0.3.1 under its Noise) needs the changes
below for a long-lived, fast, roster-gated member. Each is named here, applies only through
the functions below (the Noise session's in ``libp2p_noise``), and reaches into py-libp2p only
as far as ``REQUIREMENTS`` lists:

- ``yamux-256k-frames``: Yamux DATA frames of up to 256 KiB instead of 64 KiB, by setting the
  module constant ``MAX_MESSAGE_SIZE`` (so for every py-libp2p Yamux connection of the
  process). Four times fewer frames roughly doubled throughput; every Yamux receiver accepts
  them, as 256 KiB is the window every stream starts with.
- ``buffered-noise-session``: ``libp2p_noise.BufferedNoiseSession`` takes over the Noise
  cipher states after the handshake and moves many Noise messages per socket call,
  byte-identical on the wire (its TLS twin, ``libp2p_tls.BufferedTlsSession``, checks its own
  requirements; both start as a ``TakenOverSession``).
- ``connection-scoped-inbound``: the swarm's per-inbound-connection task (a private method)
  is replaced so it ends, and frees its inbound slot, when its connection closes (py-libp2p
  keeps it until the swarm stops), and the Noise handshake runs under ``PendingHandshakes``.
  py-libp2p's IP allow/deny gate and its failure metric are kept.
- ``redial-at-once``: a failed dial puts the peer in a 60 s negative cache; a member that
  restarts must be reachable at once, so it is taken out before each dial.
- ``no-dial-retries``: no dial retries with back-off inside py-libp2p; the protocol decides.
- ``no-auto-connector``: the auto-connector dials peerstore peers on its own; it is stopped.
- ``bounded-yamux``: the Yamux class py-libp2p builds by name is rebound to ``libp2p_yamux``'s,
  whose stream buffers a sender ignoring flow control cannot grow past the windows granted.
- ``recorded-hole-punch``: ``holepunch.HolePuncher`` subclasses py-libp2p's DCUtR and
  overrides four of its methods (to record each punch's connection or failure, to never
  dial a peer's loopback address, to start punches only when asked and only towards larger
  peer IDs); py-libp2p's host tells it of disconnections through ``_dcutr_protocol``.

Importing this module runs ``check_libp2p``: every name a change needs (and the Noise hooks
``libp2p_gate.GatedNoise`` overrides, which if renamed would admit everyone) must exist with
the signature it was written for, or the import raises ``ConfigError`` with one sentence naming
the missing name and the version found. Nothing is skipped silently.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import multiaddr
import trio
from libp2p.abc import IMuxedConn
from libp2p.io.abc import EncryptedMsgReadWriter
from libp2p.network.config import RetryConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux as yamux_module

from p2pfed.errors import ConfigError
from p2pfed.transport.libp2p_inbound import PendingHandshakes

log = logging.getLogger(__name__)

WRITTEN_FOR = {"libp2p": "0.8.1", "noiseprotocol": "0.3.1"}
"""The versions of the distributions whose internals these changes were written against."""

YAMUX_FRAME_BYTES = 256 * 1024
YAMUX_HEADER_BYTES = 12
YAMUX_MAX_FRAME_PAYLOAD = YAMUX_FRAME_BYTES - YAMUX_HEADER_BYTES
"""The most payload our Yamux frames carry (py-libp2p's own sender stops at 65,524 B)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One name a change reaches: ``module.name`` and, if callable, its parameters.

    ``match`` says how the parameters must agree: ``exact``; ``prefix`` (the first ones, in
    order, as we pass them by position); ``includes`` (among them, as keywords).
    """

    change: str
    module: str
    name: str
    params: tuple[str, ...] | None = None
    match: str = "exact"

    @property
    def distribution(self) -> str:
        """The installed distribution that provides ``module``."""
        return "noiseprotocol" if self.module.split(".")[0] == "noise" else "libp2p"


def _require(
    change: str, where: str, params: str | None = None, match: str = "exact"
) -> Requirement:
    module, _, name = where.partition(":")
    names = None if params is None else tuple(p.strip() for p in params.split(","))
    return Requirement(change, module, name, names, match)


_NOISE = "libp2p.security.noise"
_SWARM = "libp2p.network.swarm:Swarm"
_DCUTR = "libp2p.relay.circuit_v2.dcutr:DCUtRProtocol"
REQUIREMENTS = (
    _require("yamux-256k-frames", "libp2p.stream_muxer.yamux.yamux:MAX_MESSAGE_SIZE"),
    _require("bounded-yamux", "libp2p.stream_muxer.yamux.yamux:MAX_WINDOW_SIZE"),
    _require("bounded-yamux", "libp2p.stream_muxer.muxer_multistream:Yamux"),
    _require(
        "yamux-frame-reads-uncopied",
        "libp2p.stream_muxer.yamux.yamux:read_exactly",
        "reader, n, retry_count",
    ),
    _require(
        "patient-yamux-writer", "libp2p.stream_muxer.yamux.yamux:YamuxStream.write", "self, data"
    ),
    _require(
        "bounded-yamux",
        "libp2p.stream_muxer.yamux.yamux:Yamux.__init__",
        "self, secured_conn, peer_id, is_initiator, on_close",
    ),
    _require(
        "buffered-noise-session",
        "libp2p.security.secure_session:SecureSession.__init__",
        "self, local_peer, local_private_key, remote_peer, remote_permanent_pubkey, "
        "is_initiator, conn",
    ),
    _require(
        "buffered-noise-session",
        f"{_NOISE}.io:NoiseTransportReadWriter.__init__",
        "self, conn, noise_state",
    ),
    _require("buffered-noise-session", f"{_NOISE}.io:MAX_PLAINTEXT_LENGTH"),
    _require(
        "buffered-noise-session", "noise.state:CipherState.encrypt_with_ad", "self, ad, plaintext"
    ),
    _require(
        "buffered-noise-session", "noise.state:CipherState.decrypt_with_ad", "self, ad, ciphertext"
    ),
    # The roster gate overrides these hooks: renamed, they would silently admit everyone.
    _require("gated-noise", f"{_NOISE}.transport:Transport.secure_inbound", "self, conn"),
    _require("gated-noise", f"{_NOISE}.transport:Transport.secure_outbound", "self, conn, peer_id"),
    _require(
        "gated-noise",
        f"{_NOISE}.transport:Transport.__init__",
        "self, libp2p_keypair, noise_privkey",
        "prefix",
    ),
    _require(
        "connection-scoped-inbound",
        f"{_SWARM}._do_handle_inbound_connection",
        "self, read_write_closer, maddr, failure_event",
    ),
    _require(
        "connection-scoped-inbound", f"{_SWARM}.upgrade_inbound_raw_conn", "self, raw_conn, maddr"
    ),
    _require("connection-scoped-inbound", f"{_SWARM}.__init__", "metric_send_channel", "includes"),
    _require(
        "connection-scoped-inbound",
        "libp2p.network.connection_gate:ConnectionGate.is_allowed",
        "self, remote_addr",
    ),
    _require(
        "connection-scoped-inbound",
        "libp2p.network.connection.raw_connection:RawConnection.__init__",
        "self, stream, initiator",
        "prefix",
    ),
    _require("redial-at-once", f"{_SWARM}.unblock_peer", "self, peer_id"),
    _require("no-dial-retries", f"{_SWARM}.__init__", "retry_config", "includes"),
    _require(
        "no-dial-retries", "libp2p.network.config:RetryConfig.__init__", "max_retries", "includes"
    ),
    _require("no-auto-connector", "libp2p.network.auto_connector:AutoConnector.stop", "self"),
    # ``holepunch.HolePuncher`` extends py-libp2p's DCUtR through these hooks.
    _require(
        "recorded-hole-punch",
        f"{_DCUTR}._perform_hole_punch",
        "self, peer_id, addrs, as_responder",
    ),
    _require("recorded-hole-punch", f"{_DCUTR}._decode_observed_addrs", "self, addr_bytes"),
    _require("recorded-hole-punch", f"{_DCUTR}._auto_drive_loop", "self"),
    _require("recorded-hole-punch", f"{_DCUTR}.initiate_hole_punch", "self, peer_id"),
    _require("recorded-hole-punch", "libp2p.host.basic_host:BasicHost._on_notifee_disconnected"),
)


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` (``"unknown"`` if it has no metadata)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _problem(requirement: Requirement) -> str | None:
    """What is wrong with ``requirement`` in the installed packages, or None."""
    try:
        target: Any = importlib.import_module(requirement.module)
        for part in requirement.name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return "has no"
    if requirement.params is None:
        return None
    try:
        found = tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return "has a non-callable"
    wanted = requirement.params
    agrees = {
        "exact": found == wanted,
        "prefix": found[: len(wanted)] == wanted,
        "includes": set(wanted) <= set(found),
    }
    if agrees[requirement.match]:
        return None
    return f"has a different signature ({', '.join(found)}) for"


def unsupported(change: str, dist: str, lacks: str) -> ConfigError:
    """The one sentence for an installed ``dist`` that ``lacks`` what ``change`` needs."""
    return ConfigError(
        f"the installed {dist} {installed_version(dist)} {lacks}, which p2pfed's '{change}' "
        f"change to py-libp2p needs (written for {dist} {WRITTEN_FOR[dist]}); install that version"
    )


def check_libp2p(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> None:
    """Raise ``ConfigError`` unless every name the changes need is there, as written for."""
    for requirement in requirements:
        problem = _problem(requirement)
        if problem is None:
            continue
        expected = "" if requirement.params is None else f"({', '.join(requirement.params)})"
        raise unsupported(
            requirement.change,
            requirement.distribution,
            f"{problem} {requirement.module}.{requirement.name}{expected}",
        )


check_libp2p()


# -- yamux-256k-frames -------------------------------------------------------------------


def use_large_yamux_frames() -> None:
    """Let py-libp2p's Yamux put up to 256 KiB in one DATA frame (process-wide)."""
    yamux_module.MAX_MESSAGE_SIZE = YAMUX_FRAME_BYTES


# -- buffered sessions (Noise: libp2p_noise, TLS: libp2p_tls) ----------------------------


Conn = TypeVar("Conn", bound=EncryptedMsgReadWriter)


class TakenOverSession(SecureSession, Generic[Conn]):
    """A ``SecureSession`` taking over a finished handshake's, for the buffered sessions.

    Same peers, keys, role and transport (of the ``kind`` the subclass buffers): only how
    bytes move changes after the handshake.
    """

    conn: Conn

    def __init__(self, handshaken: SecureSession, kind: type[Conn], what: str) -> None:
        conn = handshaken.conn
        if not isinstance(conn, kind):
            raise TypeError(f"expected a {what} session, got {type(conn).__name__}")
        super().__init__(
            local_peer=handshaken.local_peer,
            local_private_key=handshaken.local_private_key,
            remote_peer=handshaken.remote_peer,
            remote_permanent_pubkey=handshaken.remote_permanent_pubkey,
            is_initiator=handshaken.is_initiator,
            conn=conn,
        )


# -- connection-scoped-inbound, redial-at-once, no-dial-retries, no-auto-connector --------


async def tame_swarm(swarm: Swarm, pending: PendingHandshakes) -> None:
    """Apply the per-swarm changes; call once ``host.run()`` has started the swarm."""
    swarm.retry_config = RetryConfig(max_retries=0)
    hold_inbound_only_while_open(swarm, pending)
    await swarm.auto_connector.stop()


def allow_redial(swarm: Swarm, peer_id: ID) -> None:
    """Take ``peer_id`` out of the swarm's 60 s negative cache of failed dials."""
    swarm.unblock_peer(peer_id)


def _remote_multiaddr(read_write_closer: Any) -> multiaddr.Multiaddr | None:
    try:
        address = read_write_closer.get_remote_address()
    except Exception:  # no address: py-libp2p's own step skips the gate then too
        return None
    if not address:
        return None
    host, port = address[0], address[1]
    family = "ip6" if ":" in str(host) else "ip4"
    return multiaddr.Multiaddr(f"/{family}/{host}/tcp/{port}")


async def _source_allowed(swarm: Swarm, read_write_closer: Any, failure_event: Any) -> bool:
    """py-libp2p's IP allow/deny gate, as its own inbound step applies it (with its metric)."""
    remote = _remote_multiaddr(read_write_closer)
    if remote is None or await swarm.connection_gate.is_allowed(remote):
        return True
    log.info("refused an inbound connection from %s: denied by the IP gate", remote)
    with trio.CancelScope(shield=True):
        try:
            await read_write_closer.close()
        except Exception as exc:  # already gone: refused either way
            log.debug("closing a denied inbound connection: %r", exc)
    failure_event.conn_incoming_error = True
    if swarm.metric_send_channel is not None:
        await swarm.metric_send_channel.send(failure_event)
    return False


def _source_of(read_write_closer: Any) -> str:
    try:
        address = read_write_closer.get_remote_address()
    except Exception:
        address = None
    return str(address[0]) if address else "unknown"


async def _upgrade(
    swarm: Swarm, raw_conn: RawConnection, maddr: multiaddr.Multiaddr, pending: PendingHandshakes
) -> IMuxedConn | None:
    """Noise and Yamux under the handshake deadline and per-address cap; None if not done."""
    source = _source_of(raw_conn)
    scope = pending.open(source)
    try:
        with scope:
            return await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
    except Exception as exc:  # refused or failed upgrades are already logged by libp2p
        log.debug("inbound connection on %s not upgraded: %r", maddr, exc)
    finally:
        pending.close(source, scope)
    if scope.cancelled_caught:
        log.info("closed an inbound connection from %s: no handshake in time", source)
    with trio.CancelScope(shield=True):
        try:
            await raw_conn.close()
        except Exception as exc:
            log.debug("closing a failed inbound connection: %r", exc)
    return None


def hold_inbound_only_while_open(swarm: Swarm, pending: PendingHandshakes) -> None:
    """Make the swarm's per-inbound-connection task end when that connection closes.

    py-libp2p 0.8.1 keeps the listener's task for each inbound TCP connection until the whole
    swarm stops, so a long-lived peer leaks one task, and one of its 250 inbound slots, per
    connection it ever accepted, and refuses every connection after the 250th. This replaces
    that step on this swarm instance only: IP gate, upgrade under ``pending``, then wait for
    *that* connection to close. Already-multiplexed transports (QUIC) keep py-libp2p's step.
    """
    stock = swarm._do_handle_inbound_connection

    async def handle_inbound(
        read_write_closer: Any, maddr: multiaddr.Multiaddr, failure_event: Any
    ) -> None:
        if isinstance(read_write_closer, IMuxedConn):  # QUIC and the like: nothing to upgrade
            await stock(cast(Any, read_write_closer), maddr, failure_event)
            return
        if not await _source_allowed(swarm, read_write_closer, failure_event):
            return
        muxed = await _upgrade(swarm, RawConnection(read_write_closer, False), maddr, pending)
        if muxed is None:
            return
        closed = getattr(muxed, "event_closed", None)
        if not isinstance(closed, trio.Event):
            # Waiting for the swarm instead would bring the leak back: refuse loudly.
            log.error(
                "closing an inbound %s: libp2p %s gives it no event_closed to wait for",
                type(muxed).__name__,
                installed_version("libp2p"),
            )
            await muxed.close()
            return
        await closed.wait()

    swarm._do_handle_inbound_connection = handle_inbound  # type: ignore[method-assign]
