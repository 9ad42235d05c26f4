"""BufferedNoiseSession (libp2p_noise) keeps py-libp2p's Noise wire format: it interoperates
with the stock session in both directions, for sizes around the 65,519-byte message boundary."""

from __future__ import annotations

import hashlib

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.io.exceptions import ConnectionClosedError, DecryptionFailedException
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.security.tls.io import TLSReadWriter
from noise.constants import MAX_NONCE
from noise.exceptions import NoiseMaxNonceError

from p2pfed.errors import ConfigError
from p2pfed.transport.libp2p_noise import BufferedNoiseSession
from p2pfed.transport.libp2p_tls import BufferedTlsSession

SIZES = [1, 12, 0, 65_518, 65_519, 65_520, 3 * 65_519 + 7, 1_000_003]


def payload(size: int) -> bytes:
    block = hashlib.sha256(size.to_bytes(8, "big")).digest()
    return (block * (size // 32 + 1))[:size]


async def handshaken_pair() -> tuple[SecureSession, SecureSession]:
    server_keys, client_keys = create_new_key_pair(b"s" * 32), create_new_key_pair(b"c" * 32)
    server_noise = NoiseTransport(server_keys, create_x25519_key_pair().private_key)
    client_noise = NoiseTransport(client_keys, create_x25519_key_pair().private_key)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    sessions: dict[str, SecureSession] = {}

    async def accept() -> None:
        sock = await listeners[0].accept()
        raw = RawConnection(TrioTCPStream(sock), False)
        sessions["server"] = await server_noise.secure_inbound(raw)  # type: ignore[assignment]

    async def dial() -> None:
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        raw = RawConnection(TrioTCPStream(sock), True)
        sessions["client"] = await client_noise.secure_outbound(  # type: ignore[assignment]
            raw, ID.from_pubkey(server_keys.public_key)
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        nursery.start_soon(dial)
    await listeners[0].aclose()
    return sessions["client"], sessions["server"]


@pytest.mark.parametrize("buffered_side", ["writer", "reader", "both"])
async def test_buffered_session_interoperates_with_stock_session(buffered_side: str) -> None:
    with trio.fail_after(20):
        client, server = await handshaken_pair()
        writer: SecureSession = client
        reader: SecureSession = server
        if buffered_side in ("writer", "both"):
            writer = BufferedNoiseSession(client)
        if buffered_side in ("reader", "both"):
            reader = BufferedNoiseSession(server)
        expected = b"".join(payload(size) for size in SIZES)

        async def send() -> None:
            for size in SIZES:
                await writer.write(payload(size))

        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while len(received) < len(expected):
                # Odd read sizes cross message boundaries on purpose.
                received += await reader.read(min(70_001, len(expected) - len(received)))
        assert bytes(received) == expected
        await writer.close()
        await reader.close()


@settings(max_examples=25, deadline=None)
@given(
    writes=st.lists(
        st.one_of(st.integers(0, 200_000), st.sampled_from([65_518, 65_519, 65_520])),
        min_size=1,
        max_size=6,
    ),
    reads=st.lists(st.integers(1, 150_000), min_size=1, max_size=6),
    buffered_side=st.sampled_from(["writer", "reader", "both"]),
)
def test_any_writes_read_back_in_any_sizes_arrive_intact(
    writes: list[int], reads: list[int], buffered_side: str
) -> None:
    # Messages split across socket reads and reads cut across messages, in any mix: the
    # stock session on the other side sees exactly py-libp2p's wire, and the bytes arrive.
    async def scenario() -> None:
        with trio.fail_after(20):
            client, server = await handshaken_pair()
            writer = BufferedNoiseSession(client) if buffered_side != "reader" else client
            reader = BufferedNoiseSession(server) if buffered_side != "writer" else server
            expected = b"".join(payload(size) + bytes([i]) for i, size in enumerate(writes))
            received = bytearray()

            async def send() -> None:
                for i, size in enumerate(writes):
                    await writer.write(payload(size) + bytes([i]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                turn = 0
                while len(received) < len(expected):
                    want = min(reads[turn % len(reads)], len(expected) - len(received))
                    received += await reader.read(want)
                    turn += 1
            assert bytes(received) == expected
            await writer.close()
            await reader.close()

    trio.run(scenario)


async def test_a_depleted_nonce_is_never_reused() -> None:
    # The noise library's rule holds through the buffered session: the last nonce
    # (2**64 - 1) is never used, in either direction.
    with trio.fail_after(20):
        client, server = await handshaken_pair()
        writer, reader = BufferedNoiseSession(client), BufferedNoiseSession(server)
        client.conn.noise_state.noise_protocol.cipher_state_encrypt.n = MAX_NONCE  # type: ignore[attr-defined]
        with pytest.raises(NoiseMaxNonceError):
            await writer.write(b"x")
        server.conn.noise_state.noise_protocol.cipher_state_decrypt.n = MAX_NONCE  # type: ignore[attr-defined]
        await client.conn.read_writer.read_write_closer.write(b"\x00\x11" + bytes(17))  # type: ignore[attr-defined]
        with pytest.raises(NoiseMaxNonceError):
            await reader.read(1)
        await writer.close()
        await reader.close()


async def test_reading_after_the_peer_closed_raises() -> None:
    with trio.fail_after(20):
        client, server = await handshaken_pair()
        reader = BufferedNoiseSession(server)
        await client.write(b"last words")
        await client.close()
        assert await reader.read(100) == b"last words"  # what arrived, then the end
        with pytest.raises(ConnectionClosedError):
            await reader.read(1)
        await reader.close()


async def test_empty_write_sends_nothing() -> None:
    with trio.fail_after(20):
        client, server = await handshaken_pair()
        writer = BufferedNoiseSession(client)
        await writer.write(b"")
        await writer.write(b"x")
        assert await server.read(1) == b"x"  # the stock reader saw no empty message
        await writer.close()
        await server.close()


@pytest.mark.parametrize(
    "forged",
    [
        b"\x00\x20" + b"x" * 32,  # well framed, but not sealed with the session key
        b"\x00\x05hello",  # shorter than the 16-byte tag any sealed message carries
    ],
)
async def test_a_tampered_message_is_refused(forged: bytes) -> None:
    with trio.fail_after(20):
        client, server = await handshaken_pair()
        reader = BufferedNoiseSession(server)
        await client.conn.read_writer.read_write_closer.write(forged)  # type: ignore[attr-defined]
        with pytest.raises(DecryptionFailedException, match="failed authentication"):
            await reader.read(1)
        await client.close()
        await reader.close()


def test_only_noise_sessions_are_accepted() -> None:
    class NotNoise:
        conn = object()

    with pytest.raises(TypeError, match="expected a Noise transport session"):
        BufferedNoiseSession(NotNoise())  # type: ignore[arg-type]


def test_a_tls_session_missing_what_the_buffered_session_takes_over_is_refused() -> None:
    # Both buffered sessions start as a TakenOverSession: a TLS transport of another libp2p,
    # without the SSL object the buffered TLS session takes over, is refused in one sentence.
    keys = create_new_key_pair(b"t" * 32)
    handshaken = SecureSession(
        local_peer=ID.from_pubkey(keys.public_key),
        local_private_key=keys.private_key,
        remote_peer=ID.from_pubkey(keys.public_key),
        remote_permanent_pubkey=keys.public_key,
        is_initiator=True,
        conn=TLSReadWriter.__new__(TLSReadWriter),  # nothing set: no stream_writer
    )
    with pytest.raises(ConfigError, match="'buffered-tls-session' change to py-libp2p needs"):
        BufferedTlsSession(handshaken)
    handshaken.conn = object()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="expected a TLS session, got object"):
        BufferedTlsSession(handshaken)
