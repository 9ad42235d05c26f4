"""A Noise transport session that moves many Noise messages per socket call.

Theory of operation: after the Noise XX handshake, py-libp2p's ``SecureSession`` reads one
Noise message at a time — two socket reads for the 2-byte length, more for the body — and
copies each plaintext through a ``BytesIO``; it writes one socket call per Noise message. On a
bulk transfer that Python bookkeeping, not the cipher, is where the time goes.

``BufferedNoiseSession`` takes over the *same* cipher states once the handshake is done and
keeps the wire format byte for byte (``u16 length || ChaCha20-Poly1305 ciphertext``, at most
65,535 bytes per message, nonces in order), so the peer cannot tell the difference:

- reading: one socket read of up to ``READ_SIZE`` bytes, then every complete message in it is
  authenticated and decrypted into a plaintext buffer; ``read(n)`` serves from that buffer;
- writing: ``write(data)`` encrypts ``data`` as consecutive messages of at most 65,519
  plaintext bytes and sends them with one socket call.

Memory stays bounded: the session reads from the socket only when the plaintext buffer cannot
serve the caller, so it holds at most one socket read of ciphertext plus its plaintext.
A message that fails authentication raises, as py-libp2p's own session does; the muxer then
closes the connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

import trio
from cryptography.exceptions import InvalidTag
from libp2p.abc import IRawConnection
from libp2p.io.exceptions import ConnectionClosedError, DecryptionFailedException
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession

READ_SIZE = 256 * 1024
"""Most ciphertext bytes taken from the socket per read."""

_LENGTH_BYTES = 2


class BufferedNoiseSession(SecureSession):
    """Drop-in replacement for py-libp2p's Noise ``SecureSession`` after the handshake."""

    def __init__(self, handshaken: SecureSession) -> None:
        conn = handshaken.conn
        if not isinstance(conn, NoiseTransportReadWriter):
            raise TypeError(f"expected a Noise transport session, got {type(conn).__name__}")
        super().__init__(
            local_peer=handshaken.local_peer,
            local_private_key=handshaken.local_private_key,
            remote_peer=handshaken.remote_peer,
            remote_permanent_pubkey=handshaken.remote_permanent_pubkey,
            is_initiator=handshaken.is_initiator,
            conn=conn,
        )
        self._raw: IRawConnection = conn.read_writer.read_write_closer  # type: ignore[assignment]
        self._noise: Any = conn.noise_state
        # The cipher states take any buffer, sparing the copies NoiseConnection's
        # encrypt/decrypt need (they insist on bytes); nonces stay in the noise library.
        self._encrypt = self._noise.noise_protocol.cipher_state_encrypt.encrypt_with_ad
        self._decrypt = self._noise.noise_protocol.cipher_state_decrypt.decrypt_with_ad
        self._ciphertext = bytearray()
        self._plaintext: deque[bytes] = deque()  # decrypted messages, oldest first
        self._offset = 0  # bytes of the oldest message already handed out
        self._buffered = 0  # plaintext bytes not yet handed out

    async def _read_more(self) -> bool:
        """Read once from the socket and decrypt every complete message; False at EOF."""
        data = await self._raw.read(READ_SIZE)
        if not data:
            return False
        if self._ciphertext:
            self._ciphertext += data
            source: bytes | bytearray = self._ciphertext
        else:
            source = data  # the common case: parse the socket's bytes without copying them
        position = 0
        with memoryview(source) as view:
            end = len(view)
            while end - position >= _LENGTH_BYTES:
                length = (view[position] << 8) | view[position + 1]
                start = position + _LENGTH_BYTES
                if end - start < length:
                    break
                with view[start : start + length] as sealed:
                    opened = self._open(sealed)
                if opened:
                    self._plaintext.append(opened)
                    self._buffered += len(opened)
                position = start + length
            if source is data:
                self._ciphertext = bytearray(view[position:])
        if source is not data:
            del self._ciphertext[:position]
        return True

    def _open(self, sealed: memoryview) -> bytes:
        try:
            return bytes(self._decrypt(None, sealed))
        except InvalidTag as exc:
            raise DecryptionFailedException("a Noise message failed authentication") from exc

    def _take(self, n: int) -> bytes:
        """Remove and return the first ``n`` buffered plaintext bytes (at most one copy)."""
        chunks = self._plaintext
        first = chunks[0]
        if self._offset == 0 and len(first) == n:
            chunks.popleft()  # the caller wants exactly one decrypted message: no copy at all
            self._buffered -= n
            return first
        pieces: list[memoryview] = []
        left = n
        while left:
            view = memoryview(chunks[0])[self._offset :]
            if len(view) <= left:
                pieces.append(view)
                chunks.popleft()
                self._offset = 0
                left -= len(view)
            else:
                pieces.append(view[:left])
                self._offset += left
                left = 0
        self._buffered -= n
        return b"".join(pieces)

    async def read(self, n: int | None = None) -> bytes:
        """``n`` bytes (fewer only if the connection ends); all buffered bytes if ``n`` is None."""
        if n == 0:
            return b""
        while not self._buffered:
            if not await self._read_more():
                raise ConnectionClosedError("Connection closed")
        if n is None:
            n = self._buffered
        while self._buffered < n:
            if not await self._read_more():
                n = self._buffered  # the connection ended: hand over what there is, as
                break  # SecureSession does
        return self._take(n)

    async def write(self, data: bytes) -> None:
        """Encrypt ``data`` as one or more Noise messages and send them in one socket call.

        Nothing is sent for empty ``data``: py-libp2p's reader takes an empty message for the
        end of the connection.
        """
        view = memoryview(data)
        if not view:
            await trio.lowlevel.checkpoint()
            return
        out = bytearray()
        for start in range(0, len(view), MAX_PLAINTEXT_LENGTH):
            with view[start : start + MAX_PLAINTEXT_LENGTH] as piece:
                sealed = self._encrypt(None, piece)
            out += len(sealed).to_bytes(_LENGTH_BYTES, "big")
            out += sealed
        # trio sends any buffer; handing over the bytearray itself spares one more copy.
        await self._raw.write(cast(bytes, out))
