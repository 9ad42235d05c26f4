"""libp2p TLS 1.3 in the transport: data intact, Noise fallback, and the attacks it must refuse.

Every attack runs over real sockets on 127.0.0.1 against a member whose transport offers TLS:
an outsider with a valid TLS identity (the roster gate), a certificate that names a member's
identity key without that key's signature (the extension binding), a certificate whose key
was swapped under a valid extension, and a member's address answered by someone else's key
(the dialer's check). In each the victim's handler never runs and no connection stays.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import multiaddr
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.tls.certificate import (
    LIBP2P_CERT_PREFIX,
    add_libp2p_extension,
    create_cert_template,
)
from libp2p.security.tls.transport import PROTOCOL_ID as TLS_PROTOCOL_ID
from libp2p.security.tls.transport import TLSTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from transport_harness import seed_for

from p2pfed.errors import ConfigError, P2PFedError
from p2pfed.transport import Stream, libp2p_tls
from p2pfed.transport.libp2p import Libp2pTransport

pytestmark = pytest.mark.network

ECHO = "/echo/1"


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some(1 << 20):
        await stream.send_all(data)


def session_of(transport: Libp2pTransport, peer: str) -> object:
    assert transport._host is not None
    (conn,) = transport._host.get_network().connections[ID.from_base58(peer)]
    return conn.muxed_conn.secured_conn


@asynccontextmanager
async def members(*security: tuple[str, ...]) -> AsyncIterator[list[Libp2pTransport]]:
    """Transports offering ``security[i]``, every one admitting all the others."""
    ids: set[str] = set()
    built = [
        Libp2pTransport(seed_for(f"tls{i}"), lambda p: p in ids, security=offer)
        for i, offer in enumerate(security)
    ]
    ids.update(t.local_peer for t in built)
    async with AsyncExitStack() as stack:
        for t in built:
            await stack.enter_async_context(t)
            t.serve(ECHO, echo)
        for t in built:
            for other in built:
                if other is not t:
                    t.set_peer_addrs(other.local_peer, other.listen_addrs)
        yield built


async def round_trip(client: Libp2pTransport, server: Libp2pTransport, size: int) -> None:
    payload = os.urandom(size)
    stream = await client.open_stream(server.local_peer, ECHO)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)
        assert await stream.receive_exactly(size) == payload


async def test_members_offering_tls_talk_over_the_buffered_tls_session() -> None:
    with trio.fail_after(30):
        async with members(("tls", "noise"), ("tls", "noise")) as (a, b):
            await round_trip(a, b, 3 << 20)
            assert isinstance(session_of(a, b.local_peer), libp2p_tls.BufferedTlsSession)
            assert isinstance(session_of(b, a.local_peer), libp2p_tls.BufferedTlsSession)


async def test_a_noise_only_peer_still_connects_to_one_offering_tls_first() -> None:
    with trio.fail_after(30):
        async with members(("tls", "noise"), ("noise",)) as (both, noise_only):
            await round_trip(both, noise_only, 1 << 20)  # we dial: TLS refused, Noise taken
            await both.disconnect(noise_only.local_peer)
            await round_trip(noise_only, both, 1 << 20)  # it dials: Noise is all it offers
            kind = type(session_of(both, noise_only.local_peer)).__name__
            assert kind == "BufferedNoiseSession"


async def test_buffered_tls_session_reads_many_records_per_socket_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.network.connection.raw_connection import RawConnection

    reads: list[int] = []
    read = RawConnection.read

    async def spy(self: RawConnection, n: int | None = None) -> bytes:
        data = await read(self, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(RawConnection, "read", spy)
    with trio.fail_after(30):
        async with members(("tls",), ("tls",)) as (a, b):
            await round_trip(a, b, 4 << 20)
    # py-libp2p's own TLS session asks the socket for 4 KiB at a time.
    assert max(reads) > 4096
    assert len(reads) < 2 * (4 << 20) // 4096 // 4


def test_a_security_list_naming_an_unknown_protocol_is_refused() -> None:
    for bad in ((), ("plaintext",), ("tls", "tls")):
        with pytest.raises(ConfigError, match="security must list some of tls, noise"):
            Libp2pTransport(seed_for("x"), lambda _: True, security=bad)


# -- attacks -----------------------------------------------------------------------------


def forged_certificate(claimed: KeyPair, signer: KeyPair, *, swap_key: bool) -> tuple[str, str]:
    """A certificate whose extension names ``claimed``'s identity key, signed by ``signer``.

    With ``swap_key`` the extension is honestly signed (``claimed`` is ``signer``) over one
    certificate key, but the certificate carries another key (whose private half we hold).
    """
    signed_key = ec.generate_private_key(ec.SECP256R1())
    tls_key = ec.generate_private_key(ec.SECP256R1()) if swap_key else signed_key
    spki = signed_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = signer.private_key.sign(LIBP2P_CERT_PREFIX + spki)
    builder = create_cert_template().public_key(tls_key.public_key())
    builder = add_libp2p_extension(builder, claimed.public_key, signature)
    cert = builder.sign(private_key=tls_key, algorithm=SHA256())
    key_pem = tls_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def tls_attacker(own: KeyPair, certificate: tuple[str, str] | None = None) -> IHost:
    """A stock py-libp2p host speaking only TLS, presenting ``certificate`` if given."""
    transport = TLSTransport(own)
    if certificate is not None:
        transport._cert_pem, transport._key_pem = certificate
    return new_host(
        key_pair=own,
        sec_opt={TLS_PROTOCOL_ID: transport},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


async def dial_victim(attacker: IHost, victim: Libp2pTransport, ran: list[str]) -> None:
    """The attacker dials the victim and asks for a stream; the victim must not let it in."""
    victim.serve("/rec/1", lambda stream: _record(stream, ran))
    async with attacker.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            addrs = [multiaddr.Multiaddr(a) for a in victim.listen_addrs]
            with pytest.raises(Exception):  # noqa: B017 (refused in whatever words)
                await attacker.connect(PeerInfo(ID.from_base58(victim.local_peer), addrs))
                stream = await attacker.new_stream(ID.from_base58(victim.local_peer), ["/rec/1"])
                await stream.write(b"hello")
                await stream.read(1)
                await stream.read(1)  # a refused peer gets no second byte
        finally:
            await attacker.close()


async def _record(stream: Stream, ran: list[str]) -> None:
    ran.append(stream.remote_peer)


@pytest.mark.parametrize("forgery", ["outsider", "claims-a-member", "swapped-key"])
async def test_a_tls_dialer_is_refused_unless_it_proves_a_members_key(forgery: str) -> None:
    member = create_new_key_pair(seed_for("tls-member"))
    attacker = create_new_key_pair(seed_for("tls-attacker"))
    member_id = str(ID.from_pubkey(member.public_key))
    ran: list[str] = []
    certificate = {
        "outsider": None,  # its own valid identity, not on the roster
        "claims-a-member": forged_certificate(member, attacker, swap_key=False),
        "swapped-key": forged_certificate(member, member, swap_key=True),
    }[forgery]
    roster = {member_id}
    with trio.fail_after(30):
        async with Libp2pTransport(
            seed_for("tls-victim"), roster.__contains__, security=("tls", "noise")
        ) as victim:
            await dial_victim(tls_attacker(attacker, certificate), victim, ran)
            assert victim.connected_peers() == []
            # An outsider is refused by the roster gate; a forged certificate earlier, by
            # the certificate check, so the gate never sees a peer ID.
            assert (victim.refused_inbound > 0) == (forgery == "outsider")
    assert ran == []


async def test_a_members_address_answered_by_another_key_is_refused() -> None:
    ran: list[str] = []
    # An impostor with a valid TLS identity of its own listens where the member's address
    # points; the victim expects the member's ID.
    impostor = Libp2pTransport(seed_for("tls-impostor"), lambda _: True, security=("tls",))
    with trio.fail_after(30):
        async with members(("tls",), ("tls",)) as (victim, member), impostor:
            impostor.serve(ECHO, lambda stream: _record(stream, ran))
            victim.set_peer_addrs(member.local_peer, impostor.listen_addrs)
            with pytest.raises(P2PFedError):
                await victim.open_stream(member.local_peer, ECHO)
            assert impostor.local_peer not in victim.connected_peers()
    assert ran == []


def test_bound_host_key_refuses_a_certificate_its_claimed_key_did_not_sign() -> None:
    from cryptography import x509

    member = create_new_key_pair(seed_for("tls-member"))
    attacker = create_new_key_pair(seed_for("tls-attacker"))
    honest, _ = forged_certificate(member, member, swap_key=False)
    assert libp2p_tls.bound_host_key(x509.load_pem_x509_certificate(honest.encode())) == (
        member.public_key
    )
    for forged in (
        forged_certificate(member, attacker, swap_key=False)[0],
        forged_certificate(member, member, swap_key=True)[0],
    ):
        with pytest.raises(HandshakeFailure, match="does not bind a libp2p identity"):
            libp2p_tls.bound_host_key(x509.load_pem_x509_certificate(forged.encode()))
