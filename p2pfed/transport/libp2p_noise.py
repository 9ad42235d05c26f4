"""py-libp2p's Noise session after the handshake, with fewer, larger socket calls.

Theory of operation: change ``buffered-noise-session`` of ``libp2p_compat`` (whose
``REQUIREMENTS`` list, checked at import, names what it reaches). ``BufferedNoiseSession``
takes over the Noise cipher states the handshake left behind and moves many Noise messages
per socket call, byte-identical on the wire; ``libp2p_gate.GatedNoise`` hands every admitted
session to ``buffered``. Its TLS twin is ``libp2p_tls.BufferedTlsSession``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, cast

import trio
from cryptography.exceptions import InvalidTag
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.io.exceptions import ConnectionClosedError, DecryptionFailedException
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession

from p2pfed.transport.libp2p_compat import TakenOverSession, unsupported

READ_SIZE = 256 * 1024
"""Most ciphertext bytes ``BufferedNoiseSession`` takes from the socket per read."""

_LENGTH_BYTES = 2


def buffered(secured: ISecureConn) -> ISecureConn:
    """``secured`` with the buffered session if it is a Noise session, else unchanged."""
    if isinstance(secured, SecureSession) and isinstance(secured.conn, NoiseTransportReadWriter):
        return BufferedNoiseSession(secured)
    return secured


def _cipher(noise_state: Any, which: str) -> Callable[[Any, Any], bytes]:
    """The ``encrypt``/``decrypt`` of the cipher state the Noise handshake left behind."""
    try:
        state = getattr(noise_state.noise_protocol, f"cipher_state_{which}")
        return cast(Callable[[Any, Any], bytes], getattr(state, f"{which}_with_ad"))
    except AttributeError:
        raise unsupported(
            "buffered-noise-session",
            "noiseprotocol",
            f"has no noise_protocol.cipher_state_{which}.{which}_with_ad after the handshake",
        ) from None


class BufferedNoiseSession(TakenOverSession[NoiseTransportReadWriter]):
    """Drop-in replacement for py-libp2p's Noise ``SecureSession`` after the handshake.

    py-libp2p's session reads one Noise message at a time (two socket reads for the length,
    more for the body) and writes one socket call per message. This one keeps the same cipher
    states and the wire format byte for byte (``u16 length || ChaCha20-Poly1305 ciphertext``,
    nonces in order), but reads up to ``READ_SIZE`` bytes per socket call and decrypts every
    complete message in them, and sends all messages of one ``write`` in one socket call. It
    reads only when its plaintext buffer cannot serve the caller, so memory stays bounded.
    A message that fails authentication raises, as py-libp2p's own session does.
    """

    def __init__(self, handshaken: SecureSession) -> None:
        super().__init__(handshaken, NoiseTransportReadWriter, "Noise transport")
        conn = self.conn
        self._raw: IRawConnection = conn.read_writer.read_write_closer  # type: ignore[assignment]
        # The cipher states take any buffer, sparing the copies NoiseConnection's
        # encrypt/decrypt need (they insist on bytes); nonces stay in the noise library.
        self._encrypt = _cipher(conn.noise_state, "encrypt")
        self._decrypt = _cipher(conn.noise_state, "decrypt")
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
